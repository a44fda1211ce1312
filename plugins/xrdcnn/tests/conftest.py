from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from pymatgen.core import Lattice, Structure

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"reference data not found at {SHARED} (../shared/data is absent on this machine)")
    return SHARED


def nacl(a: float = 5.64) -> Structure:
    """Rock salt, conventional cell (Fm-3m)."""
    f = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
    cl = [[(x + 0.5) % 1, y, z] for x, y, z in f]
    return Structure(Lattice.cubic(a), ["Na"] * 4 + ["Cl"] * 4, f + cl)


def rutile(a: float = 4.594, c: float = 2.959, u: float = 0.3053) -> Structure:
    """Rutile TiO2 (P4_2/mnm)."""
    coords = [[0, 0, 0], [0.5, 0.5, 0.5], [u, u, 0], [-u, -u, 0], [0.5 + u, 0.5 - u, 0.5], [0.5 - u, 0.5 + u, 0.5]]
    return Structure(Lattice.tetragonal(a, c), ["Ti", "Ti", "O", "O", "O", "O"], coords)


def hcp(a: float, c: float) -> Structure:
    """Hexagonal close packed (P6_3/mmc)."""
    return Structure(Lattice.hexagonal(a, c), ["Mg", "Mg"], [[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]])


def tiny_set(n_per_class: int, seed: int) -> tuple[list[Structure], list[int]]:
    """Random-lattice structures of 4 crystal systems (cubic, hexagonal, tetragonal, orthorhombic)."""
    rng = random.Random(seed)
    out: list[Structure] = []
    sgs: list[int] = []
    for _ in range(n_per_class):
        a, b, c = sorted(rng.uniform(3.0, 7.0) for _ in range(3))
        out += [
            nacl(rng.uniform(4.0, 6.5)),
            hcp(rng.uniform(2.8, 4.0), rng.uniform(4.5, 6.5)),
            rutile(rng.uniform(4.2, 5.0), rng.uniform(2.7, 3.4)),
            Structure(Lattice.orthorhombic(a, b + 0.3, c + 0.6), ["Cu", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        ]
        sgs += [225, 194, 136, 47]
    return out, sgs


@pytest.fixture(scope="session")
def textbook() -> tuple[Structure, Structure]:
    """Rock-salt NaCl (Fm-3m, cubic) and rutile TiO2 (P4_2/mnm, tetragonal)."""
    return nacl(), rutile()


@pytest.fixture(scope="session")
def tiny_batches():
    from crystal.batch import CrystalBatch

    def make(n: int, seed: int):  # type: ignore[no-untyped-def]
        structures, sgs = tiny_set(n, seed)
        b = CrystalBatch.from_structures(structures).to(dtype=torch.float32)
        b.crystal_properties["space_group"] = torch.tensor(sgs)
        return b

    return make(24, 0), make(6, 1)
