"""The `crystal` command line, end to end in fresh interpreters (error paths in-process: no start-up cost)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from ase.build import bulk
from pymatgen.core import Composition
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.io.cif import CifWriter
from support import crystal_cli


def _inprocess(capsys, *args):
    """``crystal ARGS`` in this interpreter (for error paths: no start-up cost), as a CompletedProcess."""
    from types import SimpleNamespace

    from crystal_cli.main import main

    code = main(list(args))
    out = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)


def test_help_and_version():
    r = crystal_cli("--help")
    assert r.returncode == 0
    for command in ("run", "validate", "relax", "predict", "plugins"):
        assert command in r.stdout
    r = crystal_cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("crystal ")


def test_plugins_list_info_check():
    r = crystal_cli("plugins", "list")
    assert r.returncode == 0, r.stderr
    assert "chgnet" in r.stdout and "pyxtal" in r.stdout
    r = crystal_cli("plugins", "list", "--json", "--kind", "potential")
    rows = json.loads(r.stdout)
    assert {row["name"] for row in rows} >= {"chgnet"}
    assert all(row["kind"] == "potential" for row in rows)
    r = crystal_cli("plugins", "info", "chgnet")
    assert r.returncode == 0 and "sha256" in r.stdout and "crystal-chgnet" in r.stdout
    r = crystal_cli("plugins", "info", "chgnett")
    assert r.returncode == 2 and "did you mean 'chgnet'" in r.stderr
    r = crystal_cli("plugins", "check")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 problem(s)" in r.stdout


def test_env_blocklist_hides_plugins():
    r = crystal_cli("plugins", "list", env={"CRYSTAL_DISABLE_PLUGINS": "chgnet"})
    assert "chgnet" not in r.stdout and "pyxtal" in r.stdout
    r = crystal_cli("plugins", "list", env={"CRYSTAL_PLUGINS": "pyxtal"})
    assert r.stdout.strip().startswith("generator") and "chgnet" not in r.stdout


def _pipeline(tmp_path, body: str):
    p = tmp_path / "p.toml"
    p.write_text(body)
    return p


def test_validate_errors_exit_2_with_file_step_and_field(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # in-process; nothing may be written in the cwd either
    p = _pipeline(
        tmp_path,
        """
[source]
type = "dataset"
name = "dcdft"

[[steps]]
id = "relax"
type = "relax"
potential = "chgnet"
fmax = "tight"
""",
    )
    r = _inprocess(capsys, "validate", str(p))
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and str(p) in r.stderr
    assert "step 'relax'" in r.stderr and "'fmax'" in r.stderr
    assert "Traceback" not in r.stderr
    p.write_text(p.read_text().replace('"tight"', "0.1").replace('"chgnet"', '"chgnett"'))
    r = _inprocess(capsys, "validate", str(p))
    assert r.returncode == 2 and "did you mean 'chgnet'" in r.stderr
    r = _inprocess(capsys, "validate", str(p), "--set", "relax.potential='chgnet'")
    assert r.returncode == 0, r.stderr
    assert "valid" in r.stdout


def test_malformed_and_missing_files_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # in-process; nothing may be written in the cwd either
    bad = _pipeline(tmp_path, "[source\n")
    r = _inprocess(capsys, "run", str(bad))
    assert r.returncode == 2 and "malformed TOML" in r.stderr
    r = _inprocess(capsys, "run", str(tmp_path / "nope.toml"))
    assert r.returncode == 2 and "cannot read pipeline file" in r.stderr
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    r = _inprocess(capsys, "validate", str(empty))
    assert r.returncode == 2 and "empty" in r.stderr


def test_default_pipeline_validates():
    r = crystal_cli("validate")
    assert r.returncode == 0, r.stderr
    assert "default" in r.stdout


def test_run_metrics_pipeline_quiet_and_resume_guard(tmp_path):
    p = _pipeline(
        tmp_path,
        """
[pipeline]
name = "dens"

[source]
type = "dataset"
name = "dcdft"
limit = 5

[[steps]]
id = "m"
type = "metrics"
names = ["density"]

[[sinks]]
type = "csv"
path = "summary.csv"
""",
    )
    out = tmp_path / "run"
    r = crystal_cli("run", str(p), "--run-dir", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out)
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert len(rows) == 5 and all(float(row["density"]) > 0 for row in rows)
    r = crystal_cli("run", str(p), "--run-dir", str(out))
    assert r.returncode == 2 and "not empty" in r.stderr
    r = crystal_cli("run", str(p), "--resume")
    assert r.returncode == 2 and "--run-dir" in r.stderr


def test_relax_shortcut_with_chgnet(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for k, (el, kind, a) in enumerate([("Si", "diamond", 5.5), ("Cu", "fcc", 3.7)]):
        atoms = bulk(el, kind, a=a)
        atoms.rattle(0.05, seed=k)
        (inputs / f"{el}.cif").write_text(str(CifWriter(AseAtomsAdaptor.get_structure(atoms))))
    (inputs / "bad.cif").write_text("not a cif")
    out = tmp_path / "run"
    r = crystal_cli("relax", str(inputs), "--fmax", "0.1", "--max-steps", "60", "--run-dir", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    rows = {row["id"]: row for row in csv.DictReader((out / "results.csv").open())}
    assert rows["bad"]["status"] == "failed"
    assert rows["Si"]["status"] == "ok" and float(rows["Si"]["energy_per_atom"]) < -4.0
    assert (out / "relaxed" / "Si.cif").is_file() and (out / "relaxed.extxyz").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    (plugin,) = manifest["plugins"]
    assert plugin["name"] == "chgnet" and plugin["weights"][0]["sha256"]


@pytest.mark.parametrize("args", [["relax"], ["predict", "x.cif"]])
def test_usage_errors(args):
    r = crystal_cli(*args)
    assert r.returncode == 2


def _check_default_run(out, n):
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["counts"]["inputs"] == n
    names = {p["name"] for p in manifest["plugins"]}
    assert names == {"pyxtal", "chgnet"}
    summary = list(csv.DictReader((out / "summary.csv").open()))
    # ranked by energy above the convex hull of Li, Mn and O relaxed with CHGNet (the hull step)
    hull = [float(r["e_above_hull"]) for r in summary]
    assert hull == sorted(hull) and len(summary) >= 1
    assert all(float(r["formation_energy_per_atom"]) - h < 1e-6 for r, h in zip(summary, hull))  # elements on the hull
    assert all(r["stable"] == ("1.0" if h <= 0.1 else "0.0") for r, h in zip(summary, hull))
    refs = {r["formula"]: r["source"] for r in manifest["hull"]["references"]}
    elements = {str(el) for r in summary for el in Composition(r["formula"]).elements}
    assert {Composition(f).reduced_formula for f in refs} >= {Composition(e).reduced_formula for e in elements}
    shipped = {s for s in refs.values() if s not in ("ase.collections.dcdft", "dataset pymatgen-test")}
    assert all(Path(s).parent.name == "li-mn-o" and Path(s).suffix == ".cif" for s in shipped), shipped
    assert {p.stem for p in (out / "structures").glob("*.cif")} == {r["id"] for r in summary}


def test_default_pipeline_small(tmp_path):
    out = tmp_path / "run"
    r = crystal_cli(
        "run", "--set", "source.num_samples=3", "--set", "relax.max_steps=10", "--set", "hull.max_steps=20",
        "--run-dir", str(out), "--quiet",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    _check_default_run(out, 3)


@pytest.mark.slow
def test_default_pipeline_full(tmp_path):
    out = tmp_path / "run"
    r = crystal_cli("run", "--run-dir", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    _check_default_run(out, 24)


def test_plugins_hooks_lists_datasets_and_metrics():
    r = crystal_cli("plugins", "hooks")
    assert r.returncode == 0, r.stderr
    assert "crystal-core: register_datasets, register_metrics" in r.stdout
    assert "dcdft:" in r.stdout and "density [g/cm^3]" in r.stdout


@pytest.mark.slow  # ~45 s; the same path (run_interruptible) runs by default in test_bad_inputs' SIGTERM test
def test_ctrl_c_then_resume(tmp_path):
    """SIGINT during a run leaves an 'interrupted' manifest; --resume finishes the rest."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    out = tmp_path / "run"
    args = [
        "run",
        "--set",
        "source.num_samples=6",
        "--set",
        "pipeline.chunk_size=2",
        "--set",
        "relax.max_steps=60",
        "--set",
        "hull.max_steps=20",  # as test_default_pipeline_small: the reference energies are cached once
        "--run-dir",
        str(out),
        "--quiet",
    ]
    exe = str(Path(sys.executable).with_name("crystal"))
    # a child inherits an *ignored* SIGINT from a background/nohup parent (as under CI), and
    # Python then never raises KeyboardInterrupt: restore the default disposition for the child
    proc = subprocess.Popen(
        [exe, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 240
    while not (out / ".state" / "stage00-chunk00000.pt").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "first chunk never finished"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err
    assert "--resume" in err
    assert json.loads((out / "manifest.json").read_text())["status"] == "interrupted"
    r = crystal_cli(*args, "--resume")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["resumed"] is True
    assert manifest["counts"]["inputs"] == 6


def test_predict_shortcut_with_published_cgcnn_checkpoint(tmp_path, shared_data):
    """`crystal predict` with an original CGCNN checkpoint reproduces the original code's output."""
    cg = shared_data / "cgcnn"
    ckpt = cg / "pre-trained" / "formation-energy-per-atom.pth.tar"
    import hashlib

    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    out = tmp_path / "run"
    r = crystal_cli(
        "predict",
        str(cg / "sample-regression" / "*.cif"),
        "-e",
        "cgcnn",
        "-c",
        f"checkpoint='{ckpt}'",
        "-c",
        f"sha256='{sha}'",
        "-c",
        f"atom_init='{cg / 'sample-regression' / 'atom_init.json'}'",
        "-c",
        "target='formation_energy_per_atom'",
        "--run-dir",
        str(out),
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    got = {
        row["id"]: float(row["formation_energy_per_atom"]) for row in csv.DictReader((out / "predictions.csv").open())
    }
    golden = {
        row["cif_id"]: float(row["prediction"])
        for row in csv.DictReader((cg / "golden" / "formation-energy-per-atom.csv").open())
    }
    assert got.keys() == golden.keys()
    assert max(abs(got[k] - golden[k]) for k in golden) < 1e-4
    r = crystal_cli(
        "predict",
        str(cg / "sample-regression" / "*.cif"),
        "-e",
        "cgcnn",
        "-c",
        "bogus=1",
        "--run-dir",
        str(tmp_path / "bad"),
    )
    assert r.returncode == 2 and "bogus" in r.stderr


def test_plugins_info_config_lists_fields_with_units():
    r = crystal_cli("plugins", "info", "schnet", "--config")
    assert r.returncode == 0, r.stderr
    assert "config:" in r.stdout and "cutoff = 5.0" in r.stdout and "Å" in r.stdout
    assert "schnet-perov5-heat-ref" in r.stdout


def test_md_command_writes_trajectory_and_energies(tmp_path):
    from ase.build import bulk
    from ase.io import read, write

    write(tmp_path / "in.extxyz", [bulk("Si", "diamond", a=5.43), bulk("Cu", "fcc", a=3.6) * (2, 1, 1)])
    out = tmp_path / "md"
    r = crystal_cli(
        "md",
        str(tmp_path / "in.extxyz"),
        "-p",
        "chgnet",
        "--steps",
        "10",
        "--timestep",
        "1",
        "--temperature",
        "300",
        "--log-every",
        "5",
        "--device",
        "cpu",
        "-o",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    assert "NVE energy drift" in r.stdout
    rows = list(csv.DictReader((out / "energies.csv").open()))
    assert [row["step"] for row in rows] == ["5", "5", "10", "10"]
    e = [float(row["total_energy_eV"]) for row in rows]
    assert abs(e[2] - e[0]) < 1e-2 and abs(e[3] - e[1]) < 1e-2  # NVE: total energy conserved
    frames = read(out / "trajectory.extxyz", index=":")
    assert len(frames) == 4 and frames[0].info["step"] == 5
    r = crystal_cli("md", str(tmp_path / "in.extxyz"), "--friction", "0.1", "-o", str(tmp_path / "bad"))
    assert r.returncode == 2 and "friction" in r.stderr
