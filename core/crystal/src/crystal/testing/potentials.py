"""A reference Lennard-Jones potential: exact forces and stress by autograd, batched."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from crystal.batch import CrystalBatch
from crystal.components import ComponentConfig, Potential, PotentialOutput
from crystal.neighbors import radius_graph

__all__ = ["LennardJones"]


class LennardJonesConfig(ComponentConfig):
    epsilon: float = Field(0.0104, gt=0, description="well depth, eV (argon: 0.0104)")
    sigma: float = Field(3.40, gt=0, description="zero-crossing distance, Å (argon: 3.40)")
    cutoff: float = Field(8.5, gt=0, description="cutoff radius, Å; the energy is shifted to 0 there")


class LennardJones(Potential):
    """12-6 Lennard-Jones with a shifted energy, ``E = ½ Σ_{i≠j} 4ε[(σ/r)¹² − (σ/r)⁶] − shift``.

    Forces ``F = −∂E/∂r`` and stress ``σ = (1/V) ∂E/∂ε`` (ASE convention) are exact, by
    autograd through a homogeneous strain. For tests and examples; not a plugin.
    """

    name = "lennard-jones"
    version = "1.0"
    Config: ClassVar[type[ComponentConfig]] = LennardJonesConfig
    consumes = "crystal"

    def compute(self, batch: CrystalBatch, *, forces: bool = True, stress: bool = True) -> PotentialOutput:
        cfg = self.config
        assert isinstance(cfg, LennardJonesConfig)
        B = len(batch)
        if B == 0:
            return PotentialOutput.empty(batch, forces=forces, stress=stress)
        with torch.enable_grad():
            strain = torch.zeros((B, 3, 3), dtype=batch.dtype, device=batch.device, requires_grad=stress)
            sym = 0.5 * (strain + strain.transpose(1, 2))
            deform = torch.eye(3, dtype=batch.dtype, device=batch.device) + sym
            pos = batch.cart_coords.detach().requires_grad_(forces)
            lat = batch.lattices @ deform
            pos_s = torch.einsum("ni,nij->nj", pos, deform[batch.batch])
            frac = torch.einsum("ni,nij->nj", pos_s, torch.linalg.inv(lat)[batch.batch])
            graph = radius_graph(batch.with_positions(frac, lat), cfg.cutoff)
            r = graph.distances
            sr6 = (cfg.sigma / r) ** 6
            src6 = (cfg.sigma / cfg.cutoff) ** 6
            pair = 4 * cfg.epsilon * ((sr6 * sr6 - sr6) - (src6 * src6 - src6))
            e_atom = torch.zeros(batch.num_nodes, dtype=batch.dtype, device=batch.device).index_add(
                0, graph.edge_index[0], 0.5 * pair
            )
            energy = torch.zeros(B, dtype=batch.dtype, device=batch.device).index_add(0, batch.batch, e_atom)
            inputs = [t for t, want in ((pos, forces), (strain, stress)) if want]
            grads = torch.autograd.grad(energy.sum(), inputs) if inputs else ()
        out = PotentialOutput(energy=energy.detach())
        k = 0
        if forces:
            out.forces = -grads[k]
            k += 1
        if stress:
            out.stress = grads[k] / batch.volumes[:, None, None]
        return out
