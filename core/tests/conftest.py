from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"reference data not found at {SHARED} (../shared/data is absent on this machine)")
    return SHARED


@pytest.fixture
def pmg_structures():
    """Real structures bundled with pymatgen (ordered ones)."""
    import pymatgen.util
    from pymatgen.core import Structure

    folder = Path(pymatgen.util.__file__).parent / "structures"
    names = ["Si", "LiFePO4", "SrTiO3", "CsCl", "Li2O", "TiO2", "Graphite", "K2O2"]
    return [Structure.from_file(folder / f"{n}.json") for n in names]
