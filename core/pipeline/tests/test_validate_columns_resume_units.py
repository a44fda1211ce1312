"""Columns checked before running, resume after a changed sink, the rank column, and units.

Fast: the built-in ``dcdft`` dataset and registered metrics, no model.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from crystal import ConfigError
from crystal.registries import metrics
from crystal_pipeline import Pipeline, run_pipeline


def _data(**changes) -> dict:
    data = {
        "pipeline": {"name": "cols", "device": "cpu", "chunk_size": 2},
        "source": {"type": "dataset", "name": "dcdft", "limit": 5},
        "steps": [
            {"id": "m", "type": "metrics", "names": ["density", "volume_per_atom"]},
            {"id": "best", "type": "rank", "by": "density", "descending": True},
        ],
        "sinks": [{"type": "csv", "path": "summary.csv"}],
    }
    data.update(changes)
    return data


def _rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _toml(path: Path, sink_columns: list[str]) -> Path:
    path.write_text(
        f"""
[pipeline]
device = "cpu"

[source]
type = "dataset"
name = "dcdft"
limit = 3

[[steps]]
id = "m"
type = "metrics"
names = ["density", "volume_per_atom"]

[[sinks]]
type = "csv"
path = "table.csv"
columns = {json.dumps(sink_columns)}
""",
        encoding="utf-8",
    )
    return path


# ----------------------------------------------------------------------------- validation
def test_validate_refuses_a_sink_column_no_step_adds(tmp_path, capsys):
    from crystal_cli.main import main

    bad = _toml(tmp_path / "bad.toml", ["density", "volume"])
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "sinks[0] (csv 'table.csv')" in err and "field 'columns'" in err
    assert "unknown column 'volume'" in err and "did you mean 'volume_per_atom'" in err
    assert "density (m)" in err  # the available columns, with the step adding them
    good = _toml(tmp_path / "good.toml", ["density", "volume_per_atom"])
    assert main(["validate", str(good)]) == 0


def test_filter_and_rank_columns_are_checked_where_they_run(tmp_path):
    data = _data()
    # 'density' exists only after step m: a filter before it cannot use it
    data["steps"] = [
        {"id": "early", "type": "filter", "where": [{"column": "density", "op": ">", "value": 0}]},
        *data["steps"],
        {"id": "again", "type": "rank", "by": "energy_per_atom"},
    ]
    with pytest.raises(ConfigError) as err:
        Pipeline.from_dict(data).check()
    msg = str(err.value)
    assert "step 'early': field 'where[0].column': unknown column 'density'" in msg
    assert "available at this point, with the step that adds them: none" in msg
    assert "step 'again': field 'by': unknown column 'energy_per_atom'" in msg
    # a run refuses it before anything runs, and leaves no run directory behind
    with pytest.raises(ConfigError):
        run_pipeline(data, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_relax_md_and_encoder_columns_are_known_statically():
    from crystal.plugins import load_class
    from crystal_pipeline.columns import column_plan, static_encoder_columns
    from crystal_pipeline.config import parse_pipeline_config

    cls = load_class("encoder", "cgcnn")
    cfg = cls.make_config(
        {
            "targets": [
                {"name": "gap", "unit": "eV"},
                {"name": "v", "dim": 3, "unit": "Å"},
                {"name": "q", "level": "atom"},
            ]
        }
    )
    assert static_encoder_columns(cls, cfg) == {"gap": "eV", "v_0": "Å", "v_1": "Å", "v_2": "Å"}
    assert static_encoder_columns(cls, cls.make_config({"weights": "cgcnn-perov5-heat-ref"})) is None  # from weights
    config = parse_pipeline_config(
        {
            "source": {"type": "dataset", "name": "dcdft"},
            "steps": [
                {"id": "r", "type": "relax", "potential": "x"},
                {"id": "d", "type": "md", "potential": "x", "ensemble": "nve", "steps": 10, "log_every": 1},
            ],
        }
    )
    after = column_plan(config.steps).after
    assert after == {
        "energy": "eV",
        "energy_per_atom": "eV/atom",
        "converged": "bool",
        "relax_steps": "",
        "md_temperature_mean": "K",
        "md_energy_drift_per_atom": "eV/atom",
    }


# ----------------------------------------------------------------------------- resume
def test_resume_accepts_new_sinks_and_later_steps_but_not_a_changed_finished_stage(tmp_path):
    run_dir = tmp_path / "run"
    first = run_pipeline(_data(), run_dir)
    assert first.manifest["stage_sha256"]["stage00"]["steps"] == "m"
    # the sinks changed (a fixed sink): resume reuses every checkpoint and writes the new sink
    fixed = _data(sinks=[{"type": "csv", "path": "fixed.csv", "columns": ["density"], "units": "header"}])
    res = run_pipeline(fixed, run_dir, resume=True)
    assert res.manifest["status"] == "complete" and res.manifest["resumed"] is True
    assert next(csv.reader((run_dir / "fixed.csv").open()))[-1] == "density (g/cm^3)"

    # a step after the last checkpointed stage may change: drop the rank stage's checkpoint
    # (as if the run had been interrupted before it) and resume with another rank
    for p in (run_dir / ".state").glob("stage01*"):
        p.unlink()
    ascending = _data()
    ascending["steps"][1]["descending"] = False
    res = run_pipeline(ascending, run_dir, resume=True)
    densities = [float(r["density"]) for r in _rows(run_dir / "summary.csv")]
    assert densities == sorted(densities) and len(densities) == 5

    # a checkpointed stage may not change: the error names the stage, the step and the field
    changed = _data()
    changed["steps"][0]["names"] = ["density"]
    with pytest.raises(ConfigError) as err:
        run_pipeline(changed, run_dir, resume=True)
    msg = str(err.value)
    assert "stage stage00 (steps m)" in msg and "step 'm'" in msg and "names" in msg
    with pytest.raises(ConfigError, match="the source"):
        run_pipeline(_data(source={"type": "dataset", "name": "dcdft", "limit": 4}), run_dir, resume=True)


# ----------------------------------------------------------------------------- rank and units
def test_no_rank_column_without_a_rank_step(tmp_path):
    data = _data()
    data["steps"] = data["steps"][:1]
    run_pipeline(data, tmp_path / "run")
    header = next(csv.reader((tmp_path / "run" / "summary.csv").open()))
    assert "rank" not in header and header[0] == "id"


def test_rank_column_is_the_rank_by_the_ranked_column(tmp_path):
    run_pipeline(_data(), tmp_path / "run")
    results = {r["id"]: float(r["density"]) for r in _rows(tmp_path / "run" / "results.csv")}
    expected = sorted(results, key=lambda i: -results[i])  # densest first, from results.csv (input order)
    summary = _rows(tmp_path / "run" / "summary.csv")
    assert next(iter(summary[0])) == "rank"
    assert {r["id"]: int(r["rank"]) for r in summary} == {i: k + 1 for k, i in enumerate(expected)}
    assert "rank" not in _rows(tmp_path / "run" / "results.csv")[0]


def test_units_sidecar_header_and_manifest_agree_with_the_metric_registry(tmp_path):
    registered = {n: m.unit for n, m in metrics().items()}
    data = _data(
        sinks=[
            {"type": "csv", "path": "summary.csv"},
            {"type": "csv", "path": "h.csv", "units": "header"},
            {"type": "csv", "path": "plain.csv", "units": "none"},
        ]
    )
    res = run_pipeline(data, tmp_path / "run")
    run = tmp_path / "run"
    side = dict(csv.reader((run / "summary.units.csv").open(encoding="utf-8")))
    assert side.pop("column") == "unit"
    assert list(side) == next(csv.reader((run / "summary.csv").open()))  # one row per column, same order
    assert side["density"] == registered["density"] == "g/cm^3"
    assert side["volume_per_atom"] == registered["volume_per_atom"]
    assert side["num_atoms"] == "atoms" and side["id"] == ""
    results_units = dict(csv.reader((run / "results.units.csv").open(encoding="utf-8")))
    assert results_units["density"] == "g/cm^3" and results_units["status"] == ""
    header = next(csv.reader((run / "h.csv").open(encoding="utf-8")))
    assert header == ["rank", "id", "formula", "num_atoms (atoms)", "density (g/cm^3)", "volume_per_atom (Å^3/atom)"]
    assert next(csv.reader((run / "plain.csv").open()))[-1] == "volume_per_atom"
    assert not (run / "h.units.csv").exists() and not (run / "plain.units.csv").exists()
    assert res.manifest["units"]["density"] == "g/cm^3"
    assert "summary.units.csv" in res.manifest["outputs"] and "results.units.csv" in res.manifest["outputs"]


def test_print_summary_shows_rank_units_and_hull_references(tmp_path, capsys, monkeypatch):
    from crystal_cli._common import print_summary

    monkeypatch.setenv("COLUMNS", "200")
    res = run_pipeline(_data(), tmp_path / "run")
    refs = [("Li", "dcdft"), ("O2", "dcdft"), ("Li2O", "refs/Li2O.cif")]
    res.manifest["hull"] = {
        "step": "hull",
        "potential": "chgnet",
        "references": [{"formula": f, "source": s, "energy_per_atom": -1.0} for f, s in refs],
    }
    print_summary(res)
    out = capsys.readouterr().out
    assert "density (g/cm^3)" in out and "volume_per_atom (Å^3/atom)" in out
    assert "ranked by density (descending)" in out and "rank" in out
    assert "hull references (step 'hull', potential 'chgnet'), 3 phase(s): dcdft: Li, O2; refs/Li2O.cif: Li2O" in out
    print_summary(SimpleNamespace(**{**vars(res), "manifest": {**res.manifest, "hull": None}}))
    assert "hull references" not in capsys.readouterr().out
