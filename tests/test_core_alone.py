"""``pip install crystal-core`` alone lets a third party write, test and list a plugin.

Two checks of the same promise:

* ``test_template_tests_pass_without_the_batteries`` (always on, ~20 s): the plugin
  template is installed with ``pip install --target`` into a temporary folder (this
  environment is shared, nothing is installed into it) and its test-suite runs in a
  subprocess of this interpreter in which a ``sys.meta_path`` blocker makes every battery
  (crystal_sim, crystal_train, crystal_metrics, crystal_pipeline, crystal_xrd), the CLI
  and the optional heavy dependencies unimportable.
* ``test_core_alone_in_a_fresh_venv`` (``-m slow``, ~4 min on 2 shared cores, mostly pip
  resolving and unpacking torch and pymatgen): a new ``python -m venv`` gets crystal-core
  (non-editable) and pytest, then the template; its tests pass there, ``import crystal``
  imports no torch and none of the batteries' dependencies is installed.

matplotlib and scipy are not dependencies of crystal-core but of ASE (and pymatgen), two of
its seven; they are installed with it, so the fresh venv test checks that crystal-core does
not *require* them and that ``import crystal`` does not import them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "docs" / "plugin-template"
CORE = ROOT / "core" / "crystal"
CONSTRAINTS = ROOT / "constraints.txt"

CORE_DEPENDENCIES = {"numpy", "torch", "pydantic", "pluggy", "stevedore", "pymatgen", "ase", "vesin-torch"}
BATTERIES = ("crystal_sim", "crystal_train", "crystal_metrics", "crystal_pipeline", "crystal_xrd", "crystal_cli")
HEAVY = ("lightning", "pytorch_lightning", "matplotlib", "scipy", "smact", "typer", "rich")
NOT_INSTALLED_WITH_CORE = ("lightning", "pytorch-lightning", "smact", "typer", "rich")
PIPELINE_SKIP = "pipelines need crystal-pipeline"  # the reason in the template's importorskip

_IGNORE = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", ".pytest_cache")


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    return proc.stdout + proc.stderr


def _copy(src: Path, dest: Path) -> Path:
    """A clean copy, so that building writes nothing into the checkout."""
    shutil.copytree(src, dest, ignore=_IGNORE)
    return dest


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CRYSTAL_PLUGINS", "CRYSTAL_DISABLE_PLUGINS")}
    env.update(extra)
    return env


def _assert_template_suite_passed(output: str) -> None:
    """Everything passed; only the pipeline test skipped, for the reason it gives."""
    summary = output.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, output
    assert "1 skipped" in summary, output
    assert PIPELINE_SKIP in output, output


BLOCKER = textwrap.dedent(
    """
    import builtins, importlib.abc, importlib.metadata, sys

    BLOCKED = {blocked!r}  # not installed with crystal-core
    NOT_FROM_CRYSTAL = {indirect!r}  # installed (ASE needs them), but crystal code must not import them
    KEPT = ("crystal-core", "crystal-example")  # every other crystal-* distribution is hidden

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: not in crystal-core)", name=name)
            return None

    original_import = builtins.__import__

    def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
        importer = (globals or {{}}).get("__name__", "").split(".")[0]
        if level == 0 and name.split(".")[0] in NOT_FROM_CRYSTAL and importer in ("crystal", "crystal_example"):
            raise ModuleNotFoundError(f"{{importer}} imports {{name}}, a dependency crystal-core does not declare")
        return original_import(name, globals, locals, fromlist, level)

    # ... and their distributions are not installed: no entry points, no metadata
    find_distributions = importlib.metadata.Distribution.discover.__func__

    def discover(cls, **kwargs):
        for dist in find_distributions(cls, **kwargs):
            name = (dist.name or "").lower().replace("_", "-")
            if name.replace("-", "_") in BLOCKED or (name.startswith("crystal-") and name not in KEPT):
                continue
            yield dist

    importlib.metadata.Distribution.discover = classmethod(discover)
    sys.meta_path.insert(0, Blocker())
    builtins.__import__ = guarded_import
    import pytest

    code = pytest.main(["-q", "-rs", "-p", "no:cacheprovider"])
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    if leaked:
        print("blocked modules were imported:", leaked)
        code = code or 3
    sys.exit(code)
    """
)


def test_template_tests_pass_without_the_batteries(tmp_path: Path):
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed here, so pip cannot build the template without build isolation")
    project = _copy(TEMPLATE, tmp_path / "crystal-example")
    site = tmp_path / "site"
    _run(
        [
            *(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"),
            *("--disable-pip-version-check", "--target", str(site), str(project)),
        ],
        tmp_path,
    )
    shutil.rmtree(project / "src")  # the tests must use the installed copy
    indirect = ("matplotlib", "scipy")
    code = BLOCKER.format(blocked=tuple(m for m in (*BATTERIES, *HEAVY) if m not in indirect), indirect=indirect)
    output = _run([sys.executable, "-c", code], project, _clean_env(PYTHONPATH=str(site)))
    _assert_template_suite_passed(output)


@pytest.mark.slow
def test_core_alone_in_a_fresh_venv(tmp_path: Path):
    started = time.perf_counter()
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    env = _clean_env()
    core = _copy(CORE, tmp_path / "crystal-core")
    _run([*pip, "install", "--quiet", "-c", str(CONSTRAINTS), str(core), "pytest"], tmp_path, env, timeout=1200)
    project = _copy(TEMPLATE, tmp_path / "crystal-example")
    _run([*pip, "install", "--quiet", "-c", str(CONSTRAINTS), str(project)], tmp_path, env)
    shutil.rmtree(project / "src")  # the tests must use the installed copy

    installed = dict(
        line.lower().replace("_", "-").split("==", 1)
        for line in _run([*pip, "list", "--format=freeze"], tmp_path, env).splitlines()
        if "==" in line
    )
    assert {"crystal-core", "crystal-example", "torch", "pytest"} <= installed.keys()
    assert not {n for n in installed if n.startswith("crystal-")} - {"crystal-core", "crystal-example"}
    assert not installed.keys() & set(NOT_INSTALLED_WITH_CORE), sorted(installed.keys() & set(NOT_INSTALLED_WITH_CORE))
    assert installed["torch"].split("+")[0] == "2.13.0"  # the pin of constraints.txt
    requires = _run(
        [python, "-c", "from importlib.metadata import requires; print('\\n'.join(requires('crystal-core')))"],
        tmp_path,
        env,
    ).splitlines()
    required = {r.split(">")[0].split("=")[0].split("<")[0].strip().lower() for r in requires if "extra ==" not in r}
    assert required == CORE_DEPENDENCIES

    imported = _run([python, "-X", "importtime", "-c", "import crystal; crystal.__version__"], tmp_path, env)
    modules = {line.split("|")[-1].strip().split(".")[0] for line in imported.splitlines() if "import time:" in line}
    assert "crystal" in modules
    assert not modules & {"torch", *HEAVY, *BATTERIES}, sorted(modules & {"torch", *HEAVY, *BATTERIES})

    _assert_template_suite_passed(_run([python, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"], project, env))
    print(f"fresh venv with crystal-core alone: {time.perf_counter() - started:.0f} s")
