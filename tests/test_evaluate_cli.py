"""`crystal evaluate`, end to end in fresh interpreters."""

from __future__ import annotations

import csv
import json
import sys

import pytest
from support import crystal_cli


def _perov_subset(shared_data, tmp_path, n: int) -> tuple[list[dict], object]:
    csv.field_size_limit(sys.maxsize)
    with (shared_data / "perov_5" / "test.csv").open() as fh:
        rows = [r for _, r in zip(range(n), csv.DictReader(fh), strict=False)]
    ref = tmp_path / "test.csv"
    with ref.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows, ref


@pytest.mark.shared_data
def test_csp_on_perov5_structures(shared_data, tmp_path):
    from pymatgen.core import Structure

    from crystal.io import write_structures
    from crystal_metrics import csp_metrics

    rows, ref = _perov_subset(shared_data, tmp_path, 3)
    tests = [Structure.from_str(r["cif"], fmt="cif") for r in rows]
    # two samples per test structure: a copy with one site moved by 0.15 Å, and an exact copy
    ids, samples = [], []
    for r, t in zip(rows, tests, strict=True):
        moved = t.copy()
        moved.translate_sites([0], [0.15, 0.0, 0.0], frac_coords=False)
        ids += [f"{r['material_id']}:0", f"{r['material_id']}:1"]
        samples += [moved, t.copy()]
    gen = tmp_path / "generated.extxyz"
    write_structures(samples, gen, "extxyz", ids=ids)

    out = tmp_path / "csp.json"
    r = crystal_cli(
        "evaluate",
        str(gen),
        "--task",
        "csp",
        "--reference",
        str(ref),
        "--k",
        "1",
        "--k",
        "2",
        "-o",
        str(out),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "match rate (k=1)" in r.stdout and "RMSE (k=2)" in r.stdout
    report = json.loads(out.read_text())
    assert report["group_by"] == "id" and report["num_reference"] == 3
    expected = csp_metrics([samples[2 * i : 2 * i + 2] for i in range(3)], tests, ks=[1, 2])
    assert report["csp"]["k"]["1"]["match_rate"] == 1.0
    assert report["csp"]["k"]["1"]["rmse"] == pytest.approx(expected["k"]["1"]["rmse"], rel=1e-6)
    assert report["csp"]["k"]["1"]["rmse"] > 0.0
    assert report["csp"]["k"]["2"]["rmse"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
@pytest.mark.shared_data
def test_generation_on_perov5_structures(shared_data, tmp_path):
    _, ref = _perov_subset(shared_data, tmp_path, 4)
    out = tmp_path / "gen.json"
    r = crystal_cli(
        "evaluate",
        str(ref),
        "--task",
        "generation",
        "--reference",
        str(ref),
        "--dataset",
        "perov_5",
        "--train",
        str(ref),
        "-o",
        str(out),
        "-q",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out)
    g = json.loads(out.read_text())["generation"]
    assert g["cov_recall"] == 1.0 and g["cov_precision"] == 1.0 and g["struct_valid"] == 1.0
    assert g["coverage_cutoffs"] == {"struc": 0.2, "comp": 4.0, "dataset": "perov_5"}
    assert g["novel_fraction"] == 0.0 and g["unique_fraction"] == 1.0


def test_bad_inputs_exit_2_with_a_clear_message(tmp_path, monkeypatch, capsys):
    from crystal_cli.main import main

    monkeypatch.chdir(tmp_path)  # in-process: the default output directory would be under the cwd
    good = tmp_path / "g.json"
    good.write_text("[]")
    cases = [
        (["evaluate", str(tmp_path / "missing.cif"), "--task", "csp", "--reference", str(good)], "does not exist"),
        (["evaluate", str(good), "--task", "recon", "--reference", str(good)], "unknown task 'recon'"),
        (["evaluate", str(good), "--task", "csp", "--reference", str(good), "--k", "0"], "--k must be >= 1"),
        (["evaluate", str(good), "--task", "csp"], "--reference is required"),
        (["evaluate", str(good), "--reference", str(good), "--sun"], "--sun needs --potential"),
        (["evaluate", str(good), "--reference", str(good), "--k", "20"], "--k cannot be used with --task generation"),
        (
            ["evaluate", str(good), "--task", "csp", "--reference", str(good), "--dataset", "perov_5"],
            "--dataset cannot be used with --task csp",
        ),
        (["evaluate", str(good), "--reference", str(good), "--fmax", "0.05"], "--fmax: only used with --sun"),
        (["evaluate", str(good), "--task", "csp", "--reference", str(good)], "no readable structure"),
    ]
    for args, message in cases:
        code = main(args)
        out = capsys.readouterr()
        assert code == 2, (args, out.out, out.err)
        assert message in out.err, (args, out.err)
    assert not list(tmp_path.glob("*.metrics.json")) and not (tmp_path / "runs").exists()  # nothing written
