"""Class labels of the three heads: crystal system (7), extinction group, space group (230).

Extinction groups are computed, not typed in: for every space group in its standard
setting (pyxtal's tables: monoclinic unique axis b, rhombohedral groups in the hexagonal
setting, origin choice 2) a reflection ``h`` is systematically absent when some symmetry
operation ``(R, t)`` has ``hR = h`` and ``h·t ∉ ℤ``.  Two space groups share an extinction
group when they belong to the same crystal system and have the same absent reflections
among ``|h|, |k|, |l| ≤ 6``.  This gives 112 classes (Park et al. used the 101 extinction
symbols of International Tables; see the README).  The table is generated once by
:func:`compute_extinction_table` and shipped as ``extinction_groups.json``;
``tests/test_xrdcnn.py`` recomputes it (slow test).

Structures are labelled with spglib (``symprec`` in Å, default 0.1) on their own cell.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
import torch

from crystal import symmetry
from crystal.batch import CrystalBatch
from crystal.errors import StructureError
from crystal.symmetry import CRYSTAL_SYSTEMS

__all__ = [
    "CRYSTAL_SYSTEMS",
    "HEADS",
    "compute_extinction_table",
    "crystal_system_index",
    "extinction_table",
    "head_labels",
    "label_batch",
    "targets_from_space_groups",
]

HEADS = ("crystal_system", "extinction_group", "space_group")
_TABLE_FILE = "extinction_groups.json"


def crystal_system_index(space_group: int) -> int:
    """0–6 index of the crystal system of an international space-group number
    (:func:`crystal.symmetry.crystal_system_index`, raising :class:`StructureError`)."""
    try:
        return symmetry.crystal_system_index(space_group)
    except ValueError as exc:
        raise StructureError(str(exc)) from None


def compute_extinction_table(hmax: int = 6) -> dict[str, Any]:
    """Extinction groups of the 230 space groups (see the module docstring); needs pyxtal."""
    import itertools

    from pyxtal.symmetry import Group

    hkl = np.array([h for h in itertools.product(range(-hmax, hmax + 1), repeat=3) if any(h)], dtype=float)
    keys: dict[tuple[int, bytes], int] = {}
    groups: list[list[int]] = []
    of_sg: list[int] = []
    symbols: list[str] = []
    for sg in range(1, 231):
        group = Group(sg)
        symbols.append(str(group.symbol))
        absent = np.zeros(len(hkl), dtype=bool)
        for op in group.Wyckoff_positions[0].ops:
            fixed = np.all(np.abs(hkl @ op.rotation_matrix - hkl) < 1e-8, axis=1)
            phase = (hkl @ op.translation_vector) % 1.0
            absent |= fixed & (np.minimum(phase, 1.0 - phase) > 1e-6)
        key = (crystal_system_index(sg), np.packbits(absent).tobytes())
        if key not in keys:
            keys[key] = len(groups)
            groups.append([])
        groups[keys[key]].append(sg)
        of_sg.append(keys[key])
    names = [f"{CRYSTAL_SYSTEMS[crystal_system_index(g[0])][0]}[{','.join(symbols[s - 1] for s in g)}]" for g in groups]
    return {"hmax": hmax, "space_group_symbols": symbols, "extinction_group_of": of_sg, "extinction_groups": names}


@lru_cache(maxsize=1)
def extinction_table() -> dict[str, Any]:
    """The shipped table: ``space_group_symbols`` (230), ``extinction_group_of`` (230), ``extinction_groups``."""
    data: dict[str, Any] = json.loads((resources.files("crystal_xrdcnn") / _TABLE_FILE).read_text())
    return data


def head_labels(head: str) -> list[str]:
    """Class names of a head."""
    table = extinction_table()
    if head == "crystal_system":
        return [c[0] for c in CRYSTAL_SYSTEMS]
    if head == "extinction_group":
        return list(table["extinction_groups"])
    if head == "space_group":
        return [f"{s} (#{i + 1})" for i, s in enumerate(table["space_group_symbols"])]
    from crystal.errors import ConfigError

    raise ConfigError(f"xrdcnn: unknown head {head!r}; heads: {', '.join(HEADS)}")


def targets_from_space_groups(space_groups: torch.Tensor) -> dict[str, torch.Tensor]:
    """(B,) space-group numbers 1–230 → class indices of every head (B,) long."""
    sg = space_groups.long()
    if bool(((sg < 1) | (sg > 230)).any()):
        raise StructureError(f"space-group numbers must be 1-230, got {sorted(set(sg.tolist()))[:5]}")
    bounds = torch.tensor([hi for _, _, hi in CRYSTAL_SYSTEMS], device=sg.device)
    ext = torch.tensor(extinction_table()["extinction_group_of"], device=sg.device)
    return {
        "crystal_system": torch.searchsorted(bounds, sg),
        "extinction_group": ext[sg - 1],
        "space_group": sg - 1,
    }


def label_batch(batch: CrystalBatch, symprec: float = 0.1, angle_tolerance: float = 5.0) -> torch.Tensor:
    """(B,) space-group numbers found by spglib for every crystal (a per-crystal loop; not a hot path)."""
    import spglib

    out = []
    lat = batch.lattices.detach().cpu().double().numpy()
    frac = batch.frac_coords.detach().cpu().double().numpy()
    z = batch.atomic_numbers.detach().cpu().numpy()
    ptr = batch.ptr.cpu().tolist()
    for i in range(len(batch)):
        cell = (lat[i], frac[ptr[i] : ptr[i + 1]] % 1.0, z[ptr[i] : ptr[i + 1]])
        data = spglib.get_symmetry_dataset(cell, symprec=symprec, angle_tolerance=angle_tolerance)
        if data is None:
            raise StructureError(f"xrdcnn: spglib found no symmetry for crystal {batch.ids[i]!r} (symprec {symprec})")
        out.append(int(data.number))
    return torch.tensor(out, dtype=torch.long)
