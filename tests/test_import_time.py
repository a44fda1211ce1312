"""Listing plugins must not import torch or plugin code (timings: benchmarks/cli_startup.py)."""

from __future__ import annotations

import subprocess
import sys


def _imported_modules(code: str) -> set[str]:
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True)
    return {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}


def test_plugins_list_imports_no_torch_and_no_plugin_code():
    mods = _imported_modules(
        "import sys; from crystal_cli.main import main; sys.argv=['crystal','plugins','list']; main(['plugins','list'])"
    )
    assert "torch" not in mods
    heavy = {
        m
        for m in mods
        if m.split(".")[0] in {"torch", "pymatgen", "ase", "chgnet", "pyxtal", "crystal_chgnet", "crystal_pyxtal"}
    }
    assert not heavy, sorted(heavy)[:10]


def test_import_crystal_is_light():
    mods = _imported_modules("import crystal; crystal.__version__")
    assert "torch" not in mods and "pymatgen.core" not in mods
