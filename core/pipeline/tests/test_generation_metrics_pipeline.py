"""The ``evaluate`` pipeline step and the file-level evaluation (crystal_metrics.evaluate)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

from crystal import ConfigError
from crystal_metrics.evaluate import evaluate, group_samples, summary_rows, write_report
from crystal_pipeline import load_pipeline, run_pipeline


def _cscl(a: float = 4.0) -> Structure:
    return Structure(Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _write(folder: Path, structures: dict[str, Structure]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, s in structures.items():
        (folder / f"{name}.cif").write_text(str(CifWriter(s)))


def test_group_samples_by_id_suffix_and_by_composition():
    ref = [_cscl(), Structure(Lattice.cubic(3.0), ["Fe"], [[0, 0, 0]])]
    gen = [_cscl(4.1), _cscl(4.2), Structure(Lattice.cubic(2.9), ["Fe"], [[0, 0, 0]])]
    groups, unassigned, used = group_samples(["a:0", "a#1", "b"], gen, ["a", "b"], ref)
    assert used == "id" and [len(g) for g in groups] == [2, 1] and unassigned == []
    groups, unassigned, used = group_samples(["x", "y", "z"], gen, ["a", "b"], ref)
    assert used == "composition" and [len(g) for g in groups] == [2, 1]
    groups, unassigned, used = group_samples(["a", "zz", "b"], gen, ["a", "b"], ref, group_by="id")
    assert unassigned == ["zz"] and [len(g) for g in groups] == [1, 1]


def test_evaluate_csp_from_files_and_atomic_report(tmp_path):
    _write(tmp_path / "ref", {"a": _cscl()})
    moved = _cscl()
    moved.translate_sites([1], [0.1, 0, 0], frac_coords=False)
    report = evaluate("csp", ["a:0", "a:1"], [moved, _cscl()], reference=str(tmp_path / "ref"))
    assert report["group_by"] == "id"
    assert report["csp"]["k"]["1"]["rmse"] == pytest.approx(0.05 / 32 ** (1 / 3), rel=1e-6)
    assert report["csp"]["k"]["2"]["rmse"] == pytest.approx(0.0, abs=1e-8)
    path = write_report(tmp_path / "out" / "r.json", report)
    assert json.loads(path.read_text())["csp"]["k"]["2"]["match_rate"] == 1.0
    assert not list((tmp_path / "out").glob(".*tmp"))  # the temporary file was renamed
    assert ("match rate (k=2)", "100.00 %") in summary_rows(report)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "recon"}, "unknown evaluation task 'recon'; allowed: csp, generation"),
        ({"task": "csp", "k": [0]}, "k must be >= 1"),
        ({"task": "csp", "sun": True}, "S.U.N. metrics apply to the generation task"),
        ({"task": "generation", "sun": True}, "need a potential and a hull reference"),
    ],
)
def test_evaluate_bad_arguments(tmp_path, kwargs, message):
    _write(tmp_path / "ref", {"a": _cscl()})
    task = kwargs.pop("task")
    with pytest.raises(ConfigError, match=message):
        evaluate(task, ["a"], [_cscl()], reference=str(tmp_path / "ref"), **kwargs)


def test_missing_reference_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="matches no file"):
        evaluate("csp", ["a"], [_cscl()], reference=str(tmp_path / "nope.csv"))


def test_evaluate_step_in_a_pipeline(tmp_path):
    moved = _cscl()
    moved.translate_sites([1], [0.1, 0, 0], frac_coords=False)
    _write(tmp_path / "gen", {"a_0": moved, "a_1": _cscl(), "b_0": _cscl(3.6)})
    _write(tmp_path / "ref", {"a": _cscl(), "b": Structure(Lattice.cubic(3.0), ["Fe"], [[0, 0, 0]])})
    data = {
        "pipeline": {"name": "ev", "device": "cpu"},
        "source": {"type": "files", "paths": [str(tmp_path / "gen")]},
        "steps": [{"id": "score", "type": "evaluate", "task": "csp", "reference": ["ref"], "k": [1, 2]}],
    }
    res = load_pipeline(data)
    res.base_dir = tmp_path  # relative reference paths start at the pipeline file's folder
    out = res.run(tmp_path / "run")
    assert len(out.batch) == 3  # every crystal passes on
    report = json.loads((tmp_path / "run" / "score.json").read_text())
    assert report["step"] == "score" and report["group_by"] == "id"
    # 'a' is matched (k=1 by the displaced copy, k=2 exactly), 'b' (Fe) has a NaCl sample only
    assert report["csp"]["k"]["1"]["match_rate"] == 0.5
    assert report["csp"]["k"]["2"]["rmse"] == pytest.approx(0.0, abs=1e-8)


def test_evaluate_step_config_errors_name_step_and_field(tmp_path):
    base = {"source": {"type": "files", "paths": [str(tmp_path)]}}
    bad = [
        ({"task": "csp", "reference": ["r"], "sun": True}, "task 'csp' does not use sun"),
        ({"task": "generation", "reference": ["r"], "k": [20]}, "k applies to task 'csp' only"),
        ({"task": "csp", "reference": ["r"], "k": [0]}, "field 'k.0'"),
        ({"task": "generation", "reference": ["r"], "sun": True}, "needs potential and hull_reference"),
        ({"task": "recon", "reference": ["r"]}, "field 'task'"),
    ]
    for step, message in bad:
        data = {**base, "steps": [{"id": "ev", "type": "evaluate", **step}]}
        with pytest.raises(ConfigError, match=message) as info:
            load_pipeline(data)
        assert "step 'ev'" in str(info.value)
    data = {**base, "steps": [{"id": "ev", "type": "evaluate", "task": "csp", "reference": ["missing.csv"]}]}
    with pytest.raises(ConfigError, match="step 'ev': field 'reference'"):
        run_pipeline(data, tmp_path / "run")


POTENTIALS = """
from crystal.testing.potentials import LennardJones
"""


@pytest.fixture
def lj_plugin(fake_distribution):
    fake_distribution(
        "fake-lj-eval",
        {"crystal.potentials": {"lennard-jones": "crystal.testing.potentials:LennardJones"}},
        {"fake_lj_eval/__init__.py": "", "fake_lj_eval/pot.py": POTENTIALS},
    )


def test_evaluate_step_with_sun_loads_the_potential_by_name(tmp_path, lj_plugin):
    argon = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.3), ["Ar"], [[0, 0, 0]])
    strained = argon.copy()
    strained.scale_lattice(argon.volume * 1.04)
    _write(tmp_path / "gen", {"g0": strained, "g1": argon})
    _write(tmp_path / "hull", {"ar": argon})
    data = {
        "pipeline": {"name": "sun", "device": "cpu"},
        "source": {"type": "files", "paths": [str(tmp_path / "gen")]},
        "steps": [
            {
                "id": "score",
                "type": "evaluate",
                "task": "generation",
                "reference": [str(tmp_path / "hull")],
                "sun": True,
                "potential": "lennard-jones",
                "config": {"cutoff": 6.0},
                "hull_reference": [str(tmp_path / "hull")],
                "fmax": 0.01,
                "max_steps": 300,
                "output": "metrics/sun.json",
            }
        ],
    }
    out = run_pipeline(data, tmp_path / "run")
    report = json.loads((tmp_path / "run" / "metrics" / "sun.json").read_text())
    assert report["sun"]["potential"] == "lennard-jones"
    assert report["sun"]["stable_fraction"] == 1.0  # both relax onto the reference minimum
    assert report["sun"]["unique_fraction"] == 0.5  # ... and become the same crystal
    assert report["sun"]["sun_fraction"] is None  # no training set given: novelty unknown
    assert any(p["step"] == "score" and p["kind"] == "potential" for p in out.manifest["plugins"])
