"""Fixtures of the crystal-crystallm tests: one torch thread, small perovskites, the shared data."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "data"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: one thread is faster than two on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cubic_perovskite(a: str, b: str, x: str, lattice: float):
    """ABX3 in Pm-3m (A at the corner, B at the body centre, X on the face centres)."""
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup(
        "Pm-3m", Lattice.cubic(lattice), [a, b, x], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0.0]]
    )


@pytest.fixture(scope="session")
def perovskites():
    """Four cubic perovskites (pymatgen structures), no shared data needed."""
    return [
        cubic_perovskite("Sr", "Ti", "O", 3.905),
        cubic_perovskite("Ba", "Ti", "O", 4.0),
        cubic_perovskite("Ca", "Ti", "O", 3.84),
        cubic_perovskite("K", "Nb", "O", 4.02),
    ]


def _shared_cifs(dataset: str, split: str = "test", limit: int | None = None) -> list[str]:
    path = SHARED / dataset / f"{split}.csv"
    if not path.is_file():
        pytest.skip(f"reference data not found at {path} (../shared/data is absent on this machine)")
    csv.field_size_limit(sys.maxsize)
    with open(path, newline="") as fh:
        rows = [row["cif"] for row in csv.DictReader(fh)]
    return rows[:limit] if limit is not None else rows


@pytest.fixture(scope="session")
def shared_cifs():
    """``shared_cifs(dataset, split="test", limit=None)``: the ``cif`` column of
    ``../shared/data/<dataset>/<split>.csv``; skips the test when the data is absent."""
    return _shared_cifs


@pytest.fixture(scope="session")
def make_perovskite():
    """``make_perovskite(a, b, x, lattice)``: a cubic ABX3 pymatgen structure."""
    return cubic_perovskite
