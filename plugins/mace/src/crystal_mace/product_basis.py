"""MACE's equivariant product basis block and node update (Batatia et al. 2022, Eqs. 10-11).

``m_i = Σ_ν W^{(ν)}_{z_i} · U^{(ν)} · A_i^{⊗ν}`` (:class:`SymmetricContraction`), then
``h_i^{(t+1)} = Linear(m_i) + sc_i`` where ``sc_i`` is the interaction's element-dependent
self-connection. (N, K, D) -> (N, irreps_out.dim).
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

from crystal_mace.symmetric_contraction import SymmetricContraction

__all__ = ["ProductBasisBlock"]


class ProductBasisBlock(nn.Module):
    """Symmetric contraction to ``irreps_out``, a channel-mixing linear map, plus the residual."""

    def __init__(
        self,
        coupling_irreps: o3.Irreps,
        irreps_out: o3.Irreps,
        correlation: int,
        num_elements: int,
        use_sc: bool = True,
    ) -> None:
        super().__init__()
        self.use_sc = use_sc
        self.symmetric_contraction = SymmetricContraction(coupling_irreps, irreps_out, correlation, num_elements)
        self.linear = o3.Linear(o3.Irreps(irreps_out), o3.Irreps(irreps_out))

    def forward(self, a: torch.Tensor, sc: torch.Tensor | None, species: torch.Tensor) -> torch.Tensor:
        """a (N, K, D), sc (N, out.dim) or None, species (N,) -> (N, out.dim)."""
        h = self.linear(self.symmetric_contraction(a, species))
        if self.use_sc and sc is not None:
            h = h + sc
        return h
