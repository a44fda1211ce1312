"""The SchNet network on a batch of periodic crystals.

.. math::

    \\mathbf{x}_i^{(0)} = \\mathbf{a}_{Z_i}, \\qquad
    \\mathbf{x}_i^{(t+1)} = \\mathbf{x}_i^{(t)} + \\mathbf{v}_i^{(t)} \\quad (t = 0 \\dots T-1), \\qquad
    y = \\operatorname{mean}_i \\text{ or } \\textstyle\\sum_i \\; \\mathrm{MLP}(\\mathbf{x}_i^{(T)})

with the interaction blocks ``v`` of :class:`crystal_schnet.layers.Interaction` acting on
every neighbour ``j`` (all periodic images) within the cutoff ``r_c``. Distances are
expanded in ``K`` Gaussians ``exp(-γ (d - μ_k)²)`` with centres evenly spaced on
``[0, r_c]``.

The graph (:func:`crystal.neighbors.radius_graph`), the distances, the Gaussian expansion
and the cutoff envelope are computed in the batch's float64, then cast to the parameters'
dtype (float32 by default, float64 after ``.double()``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from crystal.basis import gaussian_expansion
from crystal.batch import CrystalBatch
from crystal.neighbors import radius_graph
from crystal_schnet.layers import AtomwiseHead, Interaction, cosine_cutoff

__all__ = ["SchNet"]


class SchNet(nn.Module):
    """SchNet with structure-level heads (pooled atom-wise outputs) and atom-level heads.

    Args:
        num_features: ``F``, width of the atom-wise representation and of the embedding.
        num_filters: ``F_f``, width of the continuous filters.
        num_interactions: ``T``, number of interaction blocks (weights not shared).
        cutoff: ``r_c`` in Å; neighbours with ``d < r_c`` interact.
        num_gaussians: ``K``, Gaussian centres evenly spaced on ``[0, r_c]``.
        gamma: ``γ`` in Å⁻², Gaussian width parameter.
        cutoff_fn: ``"none"`` (hard cutoff) or ``"cosine"`` (filters times :func:`cosine_cutoff`).
        readout: ``"mean"`` or ``"sum"`` over the atoms of each crystal (structure heads).
        structure_width: raw structure outputs per crystal (0: none).
        atom_width: raw atom outputs per atom (0: none).
        num_elements: rows of the embedding (atomic numbers ``0 … num_elements - 1``).

    ``forward(batch)`` returns ``(structure (B, structure_width) | None, atom (N, atom_width) | None)``.
    """

    def __init__(
        self,
        *,
        num_features: int = 64,
        num_filters: int = 64,
        num_interactions: int = 6,
        cutoff: float = 5.0,
        num_gaussians: int = 50,
        gamma: float = 10.0,
        cutoff_fn: Literal["none", "cosine"] = "none",
        readout: Literal["mean", "sum"] = "mean",
        structure_width: int = 1,
        atom_width: int = 0,
        num_elements: int = 101,
    ) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.num_gaussians = int(num_gaussians)
        self.gamma = float(gamma)
        self.cutoff_fn = cutoff_fn
        self.readout = readout
        self.embedding = nn.Embedding(num_elements, num_features)
        # the original embedding: N(0, σ²) with σ = F^(-1/4)
        nn.init.normal_(self.embedding.weight, std=num_features**-0.25)
        self.interactions = nn.ModuleList(
            [Interaction(num_features, num_filters, num_gaussians) for _ in range(num_interactions)]
        )
        self.structure_head = AtomwiseHead(num_features, structure_width) if structure_width else None
        self.atom_head = AtomwiseHead(num_features, atom_width) if atom_width else None

    def representation(self, batch: CrystalBatch) -> torch.Tensor:
        """Final atom-wise features ``x^(T)``: (N, F)."""
        dtype = self.embedding.weight.dtype
        graph = radius_graph(batch, self.cutoff)
        d = graph.distances  # (E,) in the batch's dtype (float64 from the encoder)
        rbf = gaussian_expansion(d, 0.0, self.cutoff, num=self.num_gaussians, gamma=self.gamma).to(dtype)
        envelope = cosine_cutoff(d, self.cutoff).to(dtype) if self.cutoff_fn == "cosine" else None
        x = self.embedding(batch.atomic_numbers)
        for block in self.interactions:
            x = x + block(x, rbf, envelope, graph.edge_index)
        return x

    def pool(self, y: torch.Tensor, batch: CrystalBatch) -> torch.Tensor:
        """Aggregate atom-wise outputs per crystal: (N, W) → (B, W), mean or sum."""
        out = torch.zeros((len(batch), y.shape[1]), dtype=y.dtype, device=y.device).index_add_(0, batch.batch, y)
        if self.readout == "mean":
            out = out / batch.num_atoms.clamp(min=1).to(y.dtype)[:, None]
        return out

    def forward(self, batch: CrystalBatch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x = self.representation(batch)
        structure = self.pool(self.structure_head(x), batch) if self.structure_head is not None else None
        atom = self.atom_head(x) if self.atom_head is not None else None
        return structure, atom
