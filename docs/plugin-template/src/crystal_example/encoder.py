"""The ``example-density`` encoder: mass density of every crystal of a batch, in g/cm^3.

``density = (sum of atomic masses in the cell) / (cell volume)`` with masses in amu and
the volume in Å^3; ``1 amu/Å^3 = 1.66053906660 g/cm^3``. Computed batched on the batch's
device with one ``index_add_`` (no per-crystal Python loop, no pymatgen round trip).

This is a real (if simple) encoder: invariant under rotations, translations, atom
permutations and supercells, exactly the symmetries every encoder must respect.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from crystal.batch import CrystalBatch
from crystal.components import ComponentConfig, Encoder
from pydantic import Field

__all__ = ["AMU_PER_A3_IN_G_PER_CM3", "DensityConfig", "DensityEncoder"]

#: 1 amu/Å^3 in g/cm^3 (CODATA 2018 atomic mass constant in g, times 10^24)
AMU_PER_A3_IN_G_PER_CM3 = 1.66053906660


class DensityConfig(ComponentConfig):
    """Settings of ``example-density`` (unknown keys are errors: extra='forbid')."""

    masses: Literal["standard", "isotope"] = Field(
        "standard",
        description="atomic masses, amu: 'standard' = IUPAC 2016 standard atomic weights "
        "(natural isotopic mix; ase.data.atomic_masses_iupac2016), 'isotope' = mass of the most "
        "common isotope (ase.data.atomic_masses_common)",
    )


class DensityEncoder(Encoder):
    """Mass density (g/cm^3) of every crystal."""

    name = "example-density"
    version = "0.1.0"
    #: one line for `crystal plugins list` (copied into crystal_plugin.toml by `crystal plugins manifest --write`)
    description = "Mass density (g/cm^3) from standard atomic weights and the cell volume; exact, no weights"
    Config: ClassVar[type[ComponentConfig]] = DensityConfig
    consumes = "crystal"
    produces = "properties"
    devices = ("cpu", "cuda")
    weights = ()

    config: DensityConfig

    @property
    def targets(self) -> tuple[str, ...]:
        return ("density",)

    def _mass_table(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        from ase.data import atomic_masses_common, atomic_masses_iupac2016

        table = atomic_masses_iupac2016 if self.config.masses == "standard" else atomic_masses_common
        return torch.as_tensor(table, dtype=dtype, device=device)

    def predict(self, batch: CrystalBatch) -> dict[str, torch.Tensor]:
        """``{"density": (B,) tensor}`` in g/cm^3, on the batch's device and dtype."""
        masses = self._mass_table(batch.dtype, batch.device)[batch.atomic_numbers]  # (N,) amu
        total = torch.zeros(len(batch), dtype=batch.dtype, device=batch.device).index_add_(0, batch.batch, masses)
        return {"density": total / batch.volumes * AMU_PER_A3_IN_G_PER_CM3}
