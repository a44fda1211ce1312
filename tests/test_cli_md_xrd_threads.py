"""`crystal md` run directories, `crystal xrd simulate`, `-o` as a directory and `--threads`
(issue 15, "Consistency and conventions"). In-process through ``crystal_cli.main.main``: fast."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from pymatgen.core import Lattice, Structure


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch):
    """Commands set torch's threads and export CRYSTAL_NUM_THREADS: undo both after each test."""
    before = torch.get_num_threads()
    monkeypatch.delenv("CRYSTAL_NUM_THREADS", raising=False)
    yield
    torch.set_num_threads(before)


_AR_ONLY = """
from crystal.testing.potentials import LennardJones


class ArgonLJ(LennardJones):
    name = "lj-argon"
    elements = frozenset({18})
"""


@pytest.fixture
def lj(fake_distribution):
    """``lennard-jones`` (any element) and ``lj-argon`` (covers argon only)."""
    fake_distribution(
        "fake-lj-md",
        {
            "crystal.potentials": {
                "lennard-jones": "crystal.testing.potentials:LennardJones",
                "lj-argon": "fake_lj_md:ArgonLJ",
            }
        },
        {"fake_lj_md/__init__.py": _AR_ONLY},
    )


def _main(*argv: str) -> int:
    from crystal_cli.main import main

    return main([str(a) for a in argv])


def _argon(tmp_path, copper: bool = False):
    """Two fcc argon cells (LJ's own element), optionally a copper cell, and one unreadable file."""
    from ase.build import bulk
    from ase.io import write

    cells = [bulk("Ar", "fcc", a=5.26), bulk("Ar", "fcc", a=5.30, cubic=True)]
    write(tmp_path / "in.extxyz", cells + ([bulk("Cu", "fcc", a=3.6)] if copper else []))
    (tmp_path / "bad.cif").write_text("this is not a CIF\n")
    return [tmp_path / "in.extxyz", tmp_path / "bad.cif"]


# ------------------------------------------------------------------------------------ md
def test_md_writes_a_manifest_and_failures_and_refuses_an_existing_run_dir(tmp_path, lj, capsys):
    from ase.io import read

    inputs = _argon(tmp_path, copper=True)
    out = tmp_path / "md"
    args = ["md", *inputs, "-p", "lj-argon", "--steps", "6", "--log-every", "3", "--device", "cpu"]
    assert _main(*args, "-o", out, "--threads", "1") == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["command"] == "crystal md"
    assert manifest["counts"] == {"inputs": 4, "ok": 2, "failed": 2}
    assert manifest["torch_threads"] == 1 and torch.get_num_threads() == 1
    assert manifest["config"]["md"]["steps"] == 6 and manifest["config"]["potential"] == "lj-argon"
    assert manifest["plugins"][0]["name"] == "lj-argon" and manifest["plugins"][0]["distribution"] == "fake-lj-md"
    assert {"md", "total"} <= set(manifest["timings_s"])
    # an unreadable file and a crystal the potential does not cover are rows, not a failed run
    failures = {r["id"]: r for r in csv.DictReader((out / "failures.csv").open())}
    assert failures["bad"]["step"] == "read" and failures["bad"]["source"].endswith("bad.cif")
    (copper,) = (r for i, r in failures.items() if i != "bad")
    assert copper["step"] == "md" and "Cu" in copper["reason"]
    # the outputs users had before are still there
    frames = read(out / "trajectory.extxyz", index=":")
    assert [f.info["step"] for f in frames] == [3, 3, 6, 6]
    rows = list(csv.DictReader((out / "energies.csv").open()))
    assert [r["step"] for r in rows] == ["3", "3", "6", "6"]
    summary = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["id"] for r in summary] == [r["id"] for r in rows[:2]]
    # NVE drift is measured from step 0: E_total(6) - (E_pot(0) + E_kin(0)), and small for LJ argon
    assert all(abs(float(r["md_energy_drift_per_atom_eV"])) < 1e-3 for r in summary)
    assert len(read(out / "final.extxyz", index=":")) == 2
    # a second run into the same directory refuses (exit 2) and leaves it untouched
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert _main(*args, "-o", out) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "exists" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_md_bad_options_exit_2_before_a_run_dir_exists(tmp_path, lj, capsys):
    inputs = _argon(tmp_path)
    out = tmp_path / "md"
    assert _main("md", *inputs, "-p", "lennard-jones", "--friction", "0.1", "-o", out) == 2
    assert "friction" in capsys.readouterr().err
    assert _main("md", *inputs, "-p", "lennard-jones", "--steps", "2", "--log-every", "5", "-o", out) == 2
    assert "--log-every" in capsys.readouterr().err
    assert not out.exists()


# ----------------------------------------------------------------------------------- xrd
def _xrd_inputs(tmp_path):
    si = Structure(Lattice.cubic(5.431), ["Si"] * 8, [
        [0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5],
        [0.25, 0.25, 0.25], [0.75, 0.75, 0.25], [0.75, 0.25, 0.75], [0.25, 0.75, 0.75],
    ])  # fmt: skip
    nacl = Structure(Lattice.cubic(5.64), ["Na"] * 4 + ["Cl"] * 4, [
        [0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5],
        [0.5, 0.5, 0.5], [0, 0, 0.5], [0, 0.5, 0], [0.5, 0, 0],
    ])  # fmt: skip
    huge = Structure(Lattice.cubic(400.0), ["H"], [[0, 0, 0]])  # readable, but too many reflections
    d = tmp_path / "in"
    d.mkdir()
    si.to(filename=str(d / "Si.cif"))
    nacl.to(filename=str(d / "NaCl.cif"))
    huge.to(filename=str(d / "huge.cif"))
    (d / "broken.cif").write_text("data_x\n_cell_length_a oops\n")
    return d, {"Si": si, "NaCl": nacl}


def test_xrd_simulate_writes_xy_patterns_equal_to_the_simulator(tmp_path, capsys):
    from crystal import CrystalBatch
    from crystal_xrd import read_pattern, simulate

    d, structures = _xrd_inputs(tmp_path)
    out = tmp_path / "xrd"
    grid = ["--two-theta-min", "10", "--two-theta-max", "80", "--step", "0.05", "--wavelength", "MoKa"]
    assert _main("xrd", "simulate", d, "-o", out, *grid, "--threads", "1", "-q") == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert torch.get_num_threads() == 1
    for ident, s in structures.items():
        text = (out / f"{ident}.xy").read_text()
        header = [line for line in text.splitlines() if line.startswith("#")]
        assert f"# id: {ident}" in header and any(h.endswith(f"{ident}.cif") for h in header)
        assert any("MoKa (0.71073 Å)" in h for h in header) and any("two_theta_deg intensity" in h for h in header)
        measured = read_pattern(out / f"{ident}.xy")
        ref = simulate(
            CrystalBatch.from_structures([s]), wavelength="MoKa", two_theta_min=10, two_theta_max=80, step=0.05
        )
        assert measured.two_theta.tolist() == pytest.approx(ref.two_theta.tolist(), abs=1e-6)
        assert measured.intensity.tolist() == pytest.approx(ref.patterns[0].tolist(), abs=1e-7)
    failures = {r["id"]: r for r in csv.DictReader((out / "failures.csv").open())}
    assert set(failures) == {"broken", "huge"}
    assert failures["broken"]["step"] == "read" and failures["huge"]["step"] == "simulate"
    assert "too large" in failures["huge"]["reason"]
    assert not list(out.glob("huge*")) and not list(out.glob(".*tmp"))  # nothing half-written
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["counts"] == {"inputs": 4, "ok": 2, "failed": 2}
    assert manifest["config"]["wavelength_angstrom"] == 0.71073 and manifest["torch_threads"] == 1
    summary = {r["id"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert set(summary) == {"Si", "NaCl"} and int(summary["Si"]["num_peaks"]) > 5
    # an existing output directory is refused, and left as it was
    before = sorted(p.name for p in out.iterdir())
    assert _main("xrd", "simulate", d, "-o", out) == 2
    assert "exists" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before


def test_xrd_bad_options_exit_2_and_write_nothing(tmp_path, capsys):
    d, _ = _xrd_inputs(tmp_path)
    out = tmp_path / "xrd"
    for extra, message in [
        (["--wavelength", "CuKz"], "unknown wavelength"),
        (["--two-theta-min", "50", "--two-theta-max", "40"], "two_theta_max"),
        (["-c", "bogus=1"], "bogus"),
        (["--dtype", "float16"], "float16"),
    ]:
        assert _main("xrd", "simulate", d, "-o", out, *extra) == 2, extra
        assert message in capsys.readouterr().err, extra
        assert not out.exists()


def test_the_xrd_group_comes_from_the_plugin_hook():
    """The core CLI names no plugin: `crystal xrd` is registered by crystal-xrd's hook module."""
    from importlib import metadata

    from crystal_cli.app import app

    hooks = {ep.value for ep in metadata.entry_points(group="crystal.hooks")}
    assert "crystal_xrd.hooks" in hooks
    _main("--help")  # main() registers the plugins' commands (idempotently)
    _main("--help")
    assert [g.name for g in app.registered_groups].count("xrd") == 1


# ------------------------------------------------------------------------------ threads
def test_crystal_num_threads_is_the_default_and_bad_values_exit_2(tmp_path, monkeypatch, capsys):
    d, _ = _xrd_inputs(tmp_path)
    torch.set_num_threads(2)
    monkeypatch.setenv("CRYSTAL_NUM_THREADS", "1")
    assert _main("xrd", "simulate", d / "Si.cif", "-o", tmp_path / "a", "-q") == 0
    assert torch.get_num_threads() == 1
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["torch_threads"] == 1
    monkeypatch.setenv("CRYSTAL_NUM_THREADS", "many")
    assert _main("xrd", "simulate", d / "Si.cif", "-o", tmp_path / "b") == 2
    assert "CRYSTAL_NUM_THREADS" in capsys.readouterr().err and not (tmp_path / "b").exists()
    monkeypatch.delenv("CRYSTAL_NUM_THREADS")
    assert _main("xrd", "simulate", d / "Si.cif", "-o", tmp_path / "c", "--threads", "0") == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["relax", "{missing}"],
        ["md", "{missing}"],
        ["run", "{missing}"],
        ["evaluate", "{missing}", "--task", "csp", "--reference", "{missing}"],
        ["xrd", "simulate", "{missing}"],
    ],
    ids=lambda a: a[0],
)
def test_threads_option_sets_torch_threads_first(tmp_path, argv, capsys):
    """--threads applies before anything else (here the input is missing: exit 2, nothing ran)."""
    missing = str(tmp_path / "missing.cif")
    args = [a.replace("{missing}", missing) for a in argv]
    torch.set_num_threads(2)
    assert _main(*args, "--threads", "1") == 2
    assert torch.get_num_threads() == 1
    torch.set_num_threads(2)
    assert _main(*args, "--threads", "0") == 2  # bad value: a usage error
    assert torch.get_num_threads() == 2


# ------------------------------------------------------------------------ -o everywhere
def test_evaluate_output_is_a_directory(tmp_path, capsys):
    si = Structure(Lattice.cubic(5.431), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    si.to(filename=str(tmp_path / "ref.cif"))
    si.to(filename=str(tmp_path / "gen.cif"))
    out = tmp_path / "ev"
    args = ["evaluate", tmp_path / "gen.cif", "--task", "csp", "--reference", tmp_path / "ref.cif", "--group-by"]
    assert _main(*args, "composition", "-o", out, "-q") == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip() == str(out)
    report = json.loads((out / "metrics.json").read_text())
    assert report["csp"]["k"]["1"]["match_rate"] == 1.0
    assert list(csv.reader((out / "failures.csv").open())) == [["id", "status", "step", "reason", "source"]]
    assert _main(*args, "composition", "-o", out) == 2
    assert "exists" in capsys.readouterr().err


def test_run_exports_threads_only_when_asked_and_ray_workers_use_them(tmp_path, monkeypatch):
    """`crystal run --threads N` reaches the Ray workers (CRYSTAL_NUM_THREADS, inherited by a local
    Ray); without it the workers keep Ray's per-actor default instead of this process's idle cores."""
    import os
    import sys

    from crystal_pipeline._ray_worker import StageWorker

    monkeypatch.setitem(sys.modules, "ray", None)  # the worker outside Ray (no cluster is started)

    missing = tmp_path / "missing.toml"
    assert _main("run", missing) == 2
    assert "CRYSTAL_NUM_THREADS" not in os.environ
    assert _main("run", missing, "--threads", "1") == 2
    assert os.environ["CRYSTAL_NUM_THREADS"] == "1"
    payload = {
        "config": {"source": {"type": "files", "paths": [str(tmp_path)]}, "steps": []},
        "origin": "test",
        "base_dir": str(tmp_path),
        "run_dir": str(tmp_path / "run"),
        "device": "cpu",
        "stage": "stage00",
        "steps": [],
        "first": False,
    }
    torch.set_num_threads(2)
    StageWorker(payload)  # a worker process of a Ray started by that `crystal run`
    assert torch.get_num_threads() == 1
    monkeypatch.delenv("CRYSTAL_NUM_THREADS")
    torch.set_num_threads(2)
    StageWorker(payload)
    assert torch.get_num_threads() == 2
