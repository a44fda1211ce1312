"""The report builder without a browser: what the page says, escaping, units, top
candidates, XRD against Bragg's law, missing files, the hooks and the command."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from crystal import ConfigError
from crystal.events import PipelineEvent
from crystal_report import build_report, write_report
from crystal_report.rundir import read_run, read_table
from crystal_report.xrd import simulate_patterns

CU_KA = 1.5406  # Å, Cu Kα1 (pymatgen's "CuKa" is the Kα1/Kα2 mean, 1.5418: 0.03° apart at 2θ = 32°)


def _header_units(html: str) -> dict[str, str]:
    """column -> unit shown under it in the ranked table."""
    table = html.split('id="ranked-table"', 1)[1].split("</thead>", 1)[0]
    return dict(re.findall(r'<th>([^<]*)<span class="unit"[^>]*>([^<]*)</span></th>', table))


def _bragg(a: float, hkl: tuple[int, int, int], wavelength: float = CU_KA) -> float:
    d = a / math.sqrt(sum(i * i for i in hkl))
    return math.degrees(2 * math.asin(wavelength / (2 * d)))


def test_table_ranked_with_units_and_counts(handmade_run: Path) -> None:
    html = build_report(handmade_run, top=0)
    units = _header_units(html)
    assert units["density"] == "g/cm^3" and units["volume_per_atom"] == "Å^3/atom"  # the step's known units
    assert units["band_gap"] == "eV"  # from the pipeline's summary.units.csv sidecar
    assert units["num_atoms"] == "atoms" and units["id"] == "–"
    # rows in rank order (the file is shuffled), the rank step's column and direction named
    body = html.split('id="ranked-table"', 1)[1].split("</tbody>", 1)[0]
    assert [m for m in re.findall(r"<td>(cscl|nacl|si)</td>", body)] == ["cscl", "nacl", "si"]
    assert "ranked by <b>density</b> (g/cm^3), descending" in html
    # counts from the manifest, failures grouped with their reason
    assert re.search(r'class="card failed"><b>1</b>', html) and re.search(r'class="card inputs"><b>4</b>', html)
    assert "file is empty" in html


def test_units_from_json_sidecars_and_the_manifest(handmade_run: Path) -> None:
    (handmade_run / "summary.units.csv").unlink()
    (handmade_run / "extra.units.json").write_text(json.dumps({"columns": {"gap2": {"unit": "Ry"}}}))
    manifest = json.loads((handmade_run / "manifest.json").read_text())
    manifest["units"] = {"band_gap": "eV/cell", "density": "kg/m^3"}
    (handmade_run / "manifest.json").write_text(json.dumps(manifest))
    run = read_run(handmade_run)
    assert run.unit("band_gap") == "meV" and run.unit_sources["band_gap"] == "results.units.json"  # sidecars first
    assert run.unit("gap2") == "Ry" and run.unit("density") == "kg/m^3"  # the manifest before the built-in table
    assert run.unit("nothing") is None


def test_units_from_headers_and_units_rows(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,heat (eV/atom),gap [eV],n\n#units,,,atoms\nx,1,2,3\n")
    t = read_table(tmp_path / "a.csv")
    assert t.columns == ["id", "heat", "gap", "n"]
    assert t.units == {"heat": "eV/atom", "gap": "eV", "n": "atoms"}
    assert len(t.rows) == 1 and t.rows[0]["heat"] == "1"  # the units row is not data


def test_text_from_files_is_escaped(handmade_run: Path) -> None:
    evil = '<script>alert("x")</script>'
    summary = (handmade_run / "summary.csv").read_text().replace("Na4Cl4", evil.replace('"', "'"))
    (handmade_run / "summary.csv").write_text(summary)
    (handmade_run / "failures.csv").write_text(
        f"id,status,step,reason,source\n<img src=x onerror=alert(1)>,failed,read,{evil!r},x\n"
    )
    manifest = json.loads((handmade_run / "manifest.json").read_text())
    manifest["pipeline"] = "</title><script>alert(2)</script>"
    (handmade_run / "manifest.json").write_text(json.dumps(manifest))
    html = build_report(handmade_run, top=0)
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "&lt;/title&gt;&lt;script&gt;alert(2)" in html
    # the only scripts are the page's own: error capture, viewer, layout
    assert len(re.findall(r"<script>", html)) == 3


def test_self_contained_no_network(handmade_run: Path) -> None:
    html = build_report(handmade_run)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "@import" not in html and "url(http" not in html
    assert "default-src 'none'" in html  # the page may not fetch anything


def test_top_candidates_viewer_and_xrd_follow_the_ranking(handmade_run: Path) -> None:
    html = build_report(handmade_run, top=2)
    views = re.findall(r"<h3>(\d)\. ([a-z]+)</h3>", html)
    assert views == [("1", "cscl"), ("2", "nacl")]  # the best two by rank, not si
    data = [json.loads(m) for m in re.findall(r'<script type="application/json" id="xtal-\d">(.*?)</script>', html)]
    assert [len(d["atoms"]) for d in data] == [2, 8]
    assert data[1]["elements"] == ["Na", "Cl"]
    assert data[1]["colors"] == ["#ab5cf2", "#1ff01f"]  # Jmol colours of Na and Cl
    assert data[0]["cell"][0][0] == pytest.approx(4.12)
    assert "XRD simulated with crystal-xrd" in html  # the page says which simulator drew the patterns
    assert html.count("<polyline") >= 2


@pytest.mark.parametrize("simulator", ["crystal-xrd", "pymatgen"])
def test_xrd_strongest_peak_is_braggs(crystals: dict, simulator: str) -> None:
    """NaCl's strongest reflection is (200), Si's (111): at 2θ from Bragg's law."""
    patterns, desc, notes = simulate_patterns({"nacl": crystals["nacl"], "si": crystals["si"]}, simulator)  # type: ignore[arg-type]
    assert not notes and desc.startswith(simulator)
    peaks = {p.id: p.two_theta[max(range(len(p.intensity)), key=p.intensity.__getitem__)] for p in patterns}
    assert peaks["nacl"] == pytest.approx(_bragg(crystals["nacl"].lattice.a, (2, 0, 0)), abs=0.1)
    assert peaks["si"] == pytest.approx(_bragg(crystals["si"].lattice.a, (1, 1, 1)), abs=0.1)


def test_missing_and_broken_files_are_notes(tmp_path: Path, handmade_run: Path) -> None:
    with pytest.raises(ConfigError, match="not a run directory"):
        build_report(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no results table" in build_report(empty)
    (handmade_run / "manifest.json").write_text("{not json")
    (handmade_run / "structures" / "cscl.cif").unlink()
    html = build_report(handmade_run)
    assert "manifest.json: not readable" in html
    assert "no structure file in the run directory holds cscl" in html
    assert re.findall(r"<h3>\d\. ([a-z]+)</h3>", html) == ["nacl", "si"]


def test_structures_from_an_extxyz_sink(handmade_run: Path, crystals: dict) -> None:
    """A relax run's sink: one extxyz file whose frames carry id=; only the wanted frames are parsed."""
    from crystal.io import write_structures

    manifest = json.loads((handmade_run / "manifest.json").read_text())
    manifest["config"]["sinks"] = [{"type": "extxyz", "path": "relaxed.extxyz"}, {"type": "csv", "path": "summary.csv"}]
    (handmade_run / "manifest.json").write_text(json.dumps(manifest))
    for f in (handmade_run / "structures").iterdir():
        f.unlink()
    (handmade_run / "structures").rmdir()
    ids = ["si", "nacl", "cscl"]
    write_structures([crystals[i] for i in ids], handmade_run / "relaxed.extxyz", "extxyz", ids=ids)
    html = build_report(handmade_run, top=2)
    assert re.findall(r"<h3>\d\. ([a-z]+)</h3>", html) == ["cscl", "nacl"]
    data = [json.loads(m) for m in re.findall(r'<script type="application/json" id="xtal-\d">(.*?)</script>', html)]
    assert [sorted(d["elements"]) for d in data] == [["Cl", "Cs"], ["Cl", "Na"]]
    # no volume column: the cell volumes come from the frames' Lattice=, per atom with num_atoms
    from crystal_report.volumes import cell_volumes

    vols = cell_volumes(read_run(handmade_run))
    assert vols["nacl"] == pytest.approx(crystals["nacl"].volume) and set(vols) == set(ids)


def test_volume_distribution_from_structure_files(handmade_run: Path) -> None:
    """Without a volume column the cell volumes come from the CIFs, per atom with num_atoms."""
    for name in ("summary.csv", "results.csv"):
        p = handmade_run / name
        lines = [line.split(",") for line in p.read_text().splitlines()]
        k = lines[0].index("volume_per_atom")
        p.write_text("\n".join(",".join(c for j, c in enumerate(row) if j != k) for row in lines) + "\n")
    run = read_run(handmade_run)
    assert "volume_per_atom" not in run.ranked.columns  # type: ignore[union-attr]
    html = build_report(handmade_run, top=0)
    assert "volume_per_atom (n=3)" in html and "Å^3/atom (from the structure files)" in html


def _training_run(root: Path) -> Path:
    root.mkdir()
    summary = {
        "encoder": "schnet",
        "targets": [{"name": "heat_ref", "unit": "eV", "task": "regression", "level": "structure"}],
        "sizes": {"train": 3, "val": 1, "test": 3},
        "epochs": 3,
        "metrics": {"test": {"heat_ref_mae": 0.1, "heat_ref_rmse": 0.2}},
    }
    (root / "summary.json").write_text(json.dumps(summary))
    (root / "train-config.json").write_text(json.dumps({"encoder": "schnet"}))
    (root / "metrics.csv").write_text(
        "epoch,train_loss,val_heat_ref_mae,val_loss,lr\n1,1.0,0.9,1.2,0.001\n2,0.5,0.5,0.7,0.0005\n3,0.2,0.3,0.4,0.0001\n"
    )
    (root / "predictions.csv").write_text(
        "split,id,heat_ref_true,heat_ref_pred\ntrain,t,5.0,9.0\ntest,a,1.0,1.1\ntest,b,2.0,1.8\ntest,c,3.0,3.2\n"
    )
    (root / "failures.csv").write_text("id,step,reason,source\n")
    return root


def test_training_run_parity_curves_and_metric_units(tmp_path: Path) -> None:
    html = build_report(_training_run(tmp_path / "train"))
    assert "crystal training report: schnet" in html
    parity = re.search(r'<svg class="plot parity".*?</svg>', html, re.S)
    assert parity and "true heat_ref (eV)" in parity.group(0) and parity.group(0).count("<circle") == 3
    assert "MAE 0.1667 eV (n=3)" in parity.group(0)  # (0.1 + 0.2 + 0.2) / 3: the test rows of predictions.csv
    assert re.search(r'heat_ref_mae<span class="unit">eV</span>', html)
    assert '<svg class="plot curves"' in html and "train_loss" in html


def test_write_report_targets(handmade_run: Path, tmp_path: Path) -> None:
    assert write_report(handmade_run, top=0) == handmade_run / "report.html"
    assert write_report(handmade_run, tmp_path / "out", top=0) == tmp_path / "out" / "report.html"
    assert write_report(handmade_run, tmp_path / "r.html", top=0).is_file()
    assert (tmp_path / "out" / "report.html").read_text().startswith("<!DOCTYPE html>")


def test_hook_pipeline_event_writes_the_report_on_run_end(handmade_run: Path, capsys, monkeypatch) -> None:
    from crystal_report import hooks

    hooks.pipeline_event(PipelineEvent("step_end", str(handmade_run), "m"))
    assert not (handmade_run / "report.html").exists()
    hooks.pipeline_event(PipelineEvent("run_end", str(handmade_run)))
    assert "Ranked candidates (3)" in (handmade_run / "report.html").read_text()
    # a report that cannot be built is a warning, never an exception
    (handmade_run / "report.html").unlink()

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("crystal_report.page.write_report", boom)
    hooks.pipeline_event(PipelineEvent("run_end", str(handmade_run)))
    err = capsys.readouterr().err
    assert "could not write" in err and "disk on fire" in err and f"crystal report {handmade_run}" in err


def test_hook_is_registered_through_entry_points(handmade_run: Path) -> None:
    from crystal.hooks import call_isolated, plugin_manager

    assert "crystal-report" in {name for name, _ in plugin_manager().list_name_plugin()}
    assert call_isolated("pipeline_event", event=PipelineEvent("run_end", str(handmade_run))) == []
    assert (handmade_run / "report.html").is_file()


def test_pipeline_run_writes_report_html(pipeline_run: Path) -> None:
    html = (pipeline_run / "report.html").read_text()
    assert "crystal run report: report-test" in html
    assert "Ranked candidates (3)" in html and "empty" in html  # the failed input is listed
    assert re.findall(r"<h3>\d\. ([a-z]+)</h3>", html) == ["cscl", "si", "nacl"]  # by density, descending


def test_training_writer_announces_the_run(tmp_path: Path) -> None:
    from crystal_train.writers import ParityPanel, RunReport, write_run

    report = RunReport(
        "toy model card",
        ["fact"],
        {"test": {"y_mae": 0.5}},
        {"encoder": "toy", "targets": [{"name": "y", "unit": "eV"}], "metrics": {"test": {"y_mae": 0.5}}},
        prediction_header=["split", "id", "y_true", "y_pred"],
        prediction_rows=[["test", "a", 1.0, 1.5], ["test", "b", 2.0, 2.5]],
        panels=[ParityPanel("y", [1.0, 2.0], [1.5, 2.5], "eV")],
    )
    write_run(tmp_path, report)
    html = (tmp_path / "report.html").read_text()
    assert "crystal training report: toy" in html and '<svg class="plot parity"' in html


def test_hook_register_commands_crystal_report(handmade_run: Path, tmp_path: Path, capsys) -> None:
    from crystal_cli.main import main

    assert (
        main(["report", str(handmade_run), "-o", str(tmp_path / "x.html"), "--top", "1", "--xrd", "crystal-xrd"]) == 0
    )
    assert "report →" in capsys.readouterr().out
    html = (tmp_path / "x.html").read_text()
    assert re.findall(r"<h3>\d\. ([a-z]+)</h3>", html) == ["cscl"]
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_report_threads_option_applies_first(tmp_path: Path, monkeypatch, capsys) -> None:
    import torch

    from crystal_cli.main import main

    before = torch.get_num_threads()
    monkeypatch.delenv("CRYSTAL_NUM_THREADS", raising=False)
    try:
        torch.set_num_threads(2)
        assert main(["report", str(tmp_path / "missing"), "--threads", "1"]) == 2  # nothing to report: exit 2
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        assert main(["report", str(tmp_path / "missing"), "--threads", "0"]) == 2  # a usage error
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
