"""pluggy hooks of crystal-example (entry point group ``crystal.hooks``).

This module is imported every time the ``crystal`` CLI starts, so it must stay light:
no torch, pymatgen, ASE or model code at the top. Heavy imports go inside functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from crystal.hookspecs import hookimpl
from crystal.registries import MetricSpec

if TYPE_CHECKING:  # for type checkers only; never imported at run time
    import torch
    from crystal.batch import CrystalBatch


def mean_atomic_mass(batch: CrystalBatch) -> torch.Tensor:
    """(B,) mean standard atomic weight of the atoms of each crystal, amu."""
    import torch
    from ase.data import atomic_masses_iupac2016

    table = torch.as_tensor(atomic_masses_iupac2016, dtype=batch.dtype, device=batch.device)
    total = torch.zeros(len(batch), dtype=batch.dtype, device=batch.device)
    total.index_add_(0, batch.batch, table[batch.atomic_numbers])
    return total / batch.num_atoms.to(batch.dtype)


@hookimpl
def register_metrics(register: Callable[[MetricSpec], None]) -> None:
    register(
        MetricSpec(
            name="mean_atomic_mass",
            unit="amu",
            description="mean standard atomic weight of the atoms in the cell",
            compute=mean_atomic_mass,
        )
    )
