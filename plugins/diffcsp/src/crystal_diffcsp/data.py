"""Training data for DiffCSP: structures → a float32 :class:`CrystalBatch` in the reference's frame.

As the reference data pipeline (CDVAE's, ``niggli: true, primitive: false``): each cell is
Niggli-reduced and its lattice rebuilt from its lengths and angles (``a`` in the x–z plane,
``c`` along z: pymatgen's ``Lattice.from_parameters``, identical to the reference's
``lattice_params_to_matrix``); fractional coordinates are wrapped to [0, 1). The model is
rotation invariant/equivariant, so the frame only fixes what the lattice DDPM learns to emit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from crystal.batch import CrystalBatch
from crystal.errors import ConfigError, StructureError

__all__ = ["canonical_structure", "load_training_data", "prepare_batch"]


def canonical_structure(structure):  # type: ignore[no-untyped-def]
    """Niggli-reduced copy of a pymatgen ``Structure`` with the lattice rebuilt from (a, b, c, α, β, γ)."""
    from pymatgen.core import Lattice, Structure

    s = structure.get_reduced_structure("niggli")
    lat = Lattice.from_parameters(*s.lattice.abc, *s.lattice.angles)
    frac = np.mod(s.frac_coords, 1.0)
    frac[frac >= 1.0] = 0.0
    return Structure(lat, s.species, frac, coords_are_cartesian=False)


def prepare_batch(structures: Iterable, ids: Sequence[str] | None = None) -> CrystalBatch:  # type: ignore[type-arg]
    """Canonicalise (:func:`canonical_structure`) and batch as float32 on the CPU."""
    structures = list(structures)
    if not structures:
        raise ConfigError("diffcsp: no structures to train on")
    canon = []
    for k, s in enumerate(structures):
        if not s.is_ordered:
            raise StructureError(f"diffcsp: structure {ids[k] if ids else k} is disordered")
        if len(s) == 0:
            raise StructureError(f"diffcsp: structure {ids[k] if ids else k} has no atoms")
        canon.append(canonical_structure(s))
    batch = CrystalBatch.from_structures(canon, ids, dtype=torch.float64).to(dtype=torch.float32)
    if int(batch.atomic_numbers.max()) > 100:
        raise StructureError("diffcsp: atomic numbers above 100 are not supported (atom types are Z = 1 … 100)")
    return batch


def load_training_data(path: str | Path, limit: int | None = None) -> CrystalBatch:
    """Read a CDVAE-style CSV (``cif`` column) or any file :func:`crystal.io.read_structures` reads."""
    from crystal.io import read_structures

    res = read_structures(Path(path), limit=limit)
    if res.failures:
        raise StructureError(f"diffcsp: {len(res.failures)} unreadable entries in {path}, first: {res.failures[0]}")
    return prepare_batch(res.structures, res.ids)
