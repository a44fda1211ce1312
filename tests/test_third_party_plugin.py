"""A third-party plugin works end to end, found only through its entry points.

``docs/plugin-template`` (the ``crystal-example`` distribution users copy) is copied to a
temporary folder, built and installed NON-editable into this interpreter's environment
with pip, and exercised in fresh interpreters (entry points are read at start-up):
``crystal plugins list``/``check``, ``crystal run`` with its encoder and its metric hook,
and the template's own test-suite. The distribution is uninstalled afterwards, whatever
happens. Takes ~15 s.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "docs" / "plugin-template"
DIST = "crystal-example"


def _run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _pip(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return _run([sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "--no-input"], cwd)


def _crystal(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``crystal ARGS`` in a fresh interpreter of this environment."""
    environ = {k: v for k, v in os.environ.items() if k not in ("CRYSTAL_PLUGINS", "CRYSTAL_DISABLE_PLUGINS")}
    environ.update(env)
    script = Path(sys.executable).with_name("crystal")  # the console script of this environment
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "crystal_cli"]
    return _run([*command, *args], cwd, environ)


def _show(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


@pytest.fixture(scope="module")
def example_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The template, copied and installed (non-editable); uninstalled on teardown."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed here, so pip cannot build the template without build isolation")
    work = tmp_path_factory.mktemp("third-party")
    project = work / DIST
    shutil.copytree(TEMPLATE, project, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist"))
    try:
        proc = _pip("install", "--no-deps", "--no-build-isolation", str(project), cwd=work)
        assert proc.returncode == 0, f"pip could not build/install the plugin template:\n{_show(proc)}"
        yield project
    finally:
        _pip("uninstall", "-y", DIST, cwd=work)


def test_template_is_listed_checked_and_runs_in_a_pipeline(example_plugin: Path, tmp_path: Path):
    # discovered through entry points only: nothing on sys.path points at the copy
    proc = _crystal("plugins", "list", "--json", cwd=tmp_path)
    assert proc.returncode == 0, _show(proc)
    mine = [p for p in json.loads(proc.stdout) if p["distribution"] == DIST]
    assert [(p["kind"], p["name"], p["entry_point"], p["problem"]) for p in mine] == [
        ("encoder", "example-density", "crystal_example.encoder:DensityEncoder", None)
    ]
    assert mine[0]["description"].startswith("Mass density")  # from the static manifest
    proc = _crystal("plugins", "list", cwd=tmp_path)
    assert "example-density" in proc.stdout and DIST in proc.stdout, _show(proc)
    located = _run([sys.executable, "-c", "import crystal_example; print(crystal_example.__file__)"], tmp_path)
    assert example_plugin not in Path(located.stdout.strip()).parents, "the plugin was imported from the source copy"

    # check imports the component and compares it with the manifest; the allowlist keeps
    # other installed plugins (and their possible problems) out of this test
    proc = _crystal("plugins", "check", cwd=tmp_path, CRYSTAL_PLUGINS=DIST)
    assert proc.returncode == 0, _show(proc)
    assert "ok   encoder example-density (crystal-example 0.1.0)" in proc.stdout
    assert "1 components checked, 0 problem(s)" in proc.stdout

    # a pipeline using the encoder (entry point) and the metric (hook) on CIF files
    from ase.build import bulk
    from pymatgen.io.ase import AseAtomsAdaptor

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for ident, atoms in {"Cu": bulk("Cu", "fcc", a=3.61), "Al": bulk("Al", "fcc", a=4.05)}.items():
        AseAtomsAdaptor.get_structure(atoms).to(filename=str(inputs / f"{ident}.cif"))
    (tmp_path / "pipeline.toml").write_text(
        """
[pipeline]
name = "third-party"
device = "cpu"

[source]
type = "files"
paths = ["inputs/*.cif"]

[[steps]]
id = "rho"
type = "predict"
encoder = "example-density"

[[steps]]
id = "mass"
type = "metrics"
names = ["mean_atomic_mass"]

[[sinks]]
type = "csv"
path = "summary.csv"
columns = ["density", "mean_atomic_mass"]
""",
        encoding="utf-8",
    )
    proc = _crystal("run", "pipeline.toml", "--run-dir", "run", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, _show(proc)
    with open(tmp_path / "run" / "results.csv", newline="", encoding="utf-8") as fh:
        rows = {r["id"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"Cu", "Al"} and {r["status"] for r in rows.values()} == {"ok"}
    assert float(rows["Cu"]["density"]) == pytest.approx(8.96, rel=0.02)
    assert float(rows["Al"]["density"]) == pytest.approx(2.70, rel=0.02)
    assert float(rows["Cu"]["mean_atomic_mass"]) == pytest.approx(63.546, rel=1e-4)
    assert "density" in (tmp_path / "run" / "summary.csv").read_text(encoding="utf-8").splitlines()[0]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["status"] == "complete"
    assert [(p["name"], p["distribution"], p["distribution_version"]) for p in manifest["plugins"]] == [
        ("example-density", DIST, "0.1.0")
    ]

    # a typo in the encoder name: invalid configuration, exit 2, with a suggestion
    proc = _crystal("run", "pipeline.toml", "--run-dir", "run2", "--set", "rho.encoder='example-densty'", cwd=tmp_path)
    assert proc.returncode == 2, _show(proc)
    assert "did you mean 'example-density'" in proc.stderr


def test_template_manifest_is_generated_from_its_classes(example_plugin: Path):
    # run in the project folder without a name: the source copy's crystal_plugin.toml must
    # equal what `crystal plugins manifest --write` compiles from the installed classes
    proc = _crystal("plugins", "manifest", "--check", cwd=example_plugin)
    assert proc.returncode == 0, _show(proc)
    assert proc.stdout.startswith(f"ok    {DIST}: {example_plugin}"), _show(proc)


def test_template_own_tests_pass(example_plugin: Path):
    proc = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], example_plugin)
    assert proc.returncode == 0, _show(proc)
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout
