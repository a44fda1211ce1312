"""Helpers shared by the cross-package tests (on sys.path through pytest's ``pythonpath``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def crystal_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``crystal`` console script in a fresh interpreter."""
    exe = Path(sys.executable).with_name("crystal")
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [str(exe), *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


# --------------------------------------------------------------------------- fixtures
# Imported by the conftest.py of every tests folder (core/*/tests, plugins/xrd/tests, tests).
@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` (the published reference data); the test is skipped when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"reference data not found at {SHARED} (../shared/data is absent on this machine)")
    return SHARED


@pytest.fixture
def pmg_structures() -> list[Any]:
    """Real structures bundled with pymatgen (ordered ones)."""
    import pymatgen.util
    from pymatgen.core import Structure

    folder = Path(pymatgen.util.__file__).parent / "structures"
    names = ["Si", "LiFePO4", "SrTiO3", "CsCl", "Li2O", "TiO2", "Graphite", "K2O2"]
    return [Structure.from_file(folder / f"{n}.json") for n in names]


def skip_gpu_tests_without_cuda(items: list[pytest.Item]) -> None:
    """``pytest_collection_modifyitems`` body: skip tests marked ``gpu`` when CUDA is absent."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
