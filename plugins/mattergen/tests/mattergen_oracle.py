"""Test helpers: an exact ("oracle") denoiser for a point-mass data distribution.

For data concentrated on one crystal (x0 fractional coordinates, L0 lattice, types Z0), the
true model targets are known in closed form: ``pos`` = wrapped-normal score × std, ``cell`` =
``-(L - m_t)/σ_t`` and logits peaked on Z0. Sampling with them must return the crystal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from crystal_mattergen.diffusion import NUM_CLASSES, Corruption, DiffusionConfig, wrapped_normal_score

PEROVSKITE_FRAC = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.5]])
PEROVSKITE_Z = torch.tensor([22, 38, 8, 8, 8])
PEROVSKITE_A = 3.905


@dataclass
class Out:
    frac_score: torch.Tensor
    lattice_score: torch.Tensor
    type_logits: torch.Tensor


class OracleDenoiser(nn.Module):
    """Exact model targets for the point mass at cubic SrTiO3 (5 atoms per crystal)."""

    def __init__(self, config: DiffusionConfig | None = None, properties: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.corruption = Corruption(config)
        self.property_names = list(properties)
        self.dummy = nn.Parameter(torch.zeros(1))
        self.calls: list[dict | None] = []

    def forward(
        self,
        frac_coords,
        lattice,
        atom_types,
        num_atoms,
        batch,
        t,
        conditions=None,
        unconditional=None,
        mask_elements=False,
    ):
        self.calls.append(None if conditions is None else dict(conditions))
        nb = len(num_atoms)
        assert bool((num_atoms == 5).all()), "the oracle knows 5-atom crystals only"
        x0 = PEROVSKITE_FRAC.to(frac_coords)[None].expand(nb, 5, 3).reshape(-1, 3)
        std = self.corruption.pos.std(t, num_atoms, batch)
        pos = wrapped_normal_score(frac_coords, x0, std.squeeze(-1) ** 2) * std
        l0 = PEROVSKITE_A * torch.eye(3, dtype=lattice.dtype, device=lattice.device).expand(nb, 3, 3)
        mean, sig = self.corruption.lattice.marginal(l0, t, num_atoms)
        cell = -(lattice - mean) / sig
        z0 = PEROVSKITE_Z.to(frac_coords.device).repeat(nb)
        logits = torch.full((len(z0), NUM_CLASSES), -20.0, dtype=frac_coords.dtype, device=frac_coords.device)
        logits[torch.arange(len(z0)), z0 - 1] = 20.0
        if conditions is not None and "dft_band_gap" in conditions:  # a visible conditional shift
            cell = cell + torch.as_tensor(conditions["dft_band_gap"]).to(cell).reshape(nb, 1, 1) * 0.0
        return Out(pos, cell, logits)
