"""A small trainable pair potential for testing the TrainablePotential contract in core.

``ε_i = ½ Σ_j φ_{s_i s_j}(r_ij)`` with ``φ`` a radial MLP on Bessel features times a smooth
cutoff, the pair type given by learned element embeddings. Not a plugin.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from pydantic import Field

from crystal.components import ComponentConfig
from crystal.trainable_potential import PotentialConfig, TrainablePotential


class PairConfig(PotentialConfig):
    hidden: int = Field(16, ge=1, description="width of the radial MLP")
    scale: float = Field(1.0, description="energy scale, eV (set from the data by statistics)")


class PairModel(torch.nn.Module):
    def __init__(self, num_elements: int, cutoff: float, hidden: int, scale: float) -> None:
        super().__init__()
        self.cutoff = cutoff
        self.scale = scale
        self.embed = torch.nn.Embedding(num_elements, 4)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(8 + 8, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, 1))
        self.register_buffer("freq", torch.arange(1, 9) * math.pi / cutoff)

    def forward(self, species, edge_index, vectors, batch, num_crystals):
        i, j = edge_index
        r = vectors.norm(dim=-1).clamp(min=1e-9)
        bessel = torch.sin(self.freq * r[:, None]) / r[:, None]
        env = 0.5 * (torch.cos(math.pi * r / self.cutoff) + 1.0) * (r < self.cutoff)
        x = torch.cat([bessel, self.embed(species[i]), self.embed(species[j])], dim=-1)
        pair = self.mlp(x).squeeze(-1) * env
        out = torch.zeros(species.numel(), dtype=pair.dtype, device=pair.device)
        return self.scale * out.index_add(0, i, 0.5 * pair)


class PairPotential(TrainablePotential):
    name = "toy-pair"
    version = "0.1"
    Config: ClassVar[type[ComponentConfig]] = PairConfig

    @classmethod
    def build_model(cls, config: Any) -> torch.nn.Module:
        return PairModel(len(config.elements), config.cutoff, config.hidden, config.scale)

    @classmethod
    def statistics(cls, config, data, energy_offsets, graph) -> dict[str, Any]:
        f = data.atom_properties.get("forces")
        return {"scale": float(f.pow(2).mean().sqrt()) if f is not None and f.numel() else 1.0}
