"""CSPNet, the periodic-E(3)-equivariant denoiser of DiffCSP (Jiao et al., NeurIPS 2023, Sec. 3.3)."""

from __future__ import annotations

import torch
from torch import nn

from crystal_diffcsp.csp_layer import CSPLayer
from crystal_diffcsp.embeddings import FractionalFourierFeatures
from crystal_diffcsp.graph import fully_connected_edges

__all__ = ["MAX_ATOMIC_NUMBER", "CSPNet"]

#: atom types are Z = 1 … 100 (the reference's MAX_ATOMIC_NUM)
MAX_ATOMIC_NUMBER = 100


class CSPNet(nn.Module):
    """Denoiser ``(t, A, F, L) → (ε̂_L, ε̂_F, ε̂_A)``.

    * node input: ``A`` as atomic numbers (N,) → ``nn.Embedding(100, H)`` (crystal structure
      prediction), or as a continuous (N, 100) one-hot under noise → ``nn.Linear(100, H)``
      (ab initio generation, ``type_input="continuous"``); concatenated with the (B, T_e)
      sinusoidal time embedding of its crystal and mapped by ``Linear(H + T_e, H)``;
    * ``num_layers`` × :class:`~crystal_diffcsp.csp_layer.CSPLayer` on the fully connected
      graph of each crystal (self-pairs included), then LayerNorm (``layer_norm``);
    * lattice output ``ε̂_L = M_b L_b`` (B, 3, 3) with ``M_b = Linear(H, 9)(mean_i h_i)`` reshaped
      to 3×3, lattice vectors as rows (the paper's ``L φ(LᵀL)`` with columns): rotating the
      Cartesian frame ``L → L R`` rotates the output the same way, ``M`` being invariant;
    * coordinate output ``ε̂_F = Linear(H, 3, no bias)(h_i)`` (N, 3): fractional, hence invariant
      to rotations, and invariant to periodic translations of the input coordinates;
    * ab initio only: type output ``ε̂_A = Linear(H, 100)(h_i)`` (N, 100).

    All outputs are permutation equivariant (per-atom) or invariant (per-crystal).
    """

    def __init__(
        self,
        hidden_dim: int = 512,
        num_layers: int = 6,
        num_freqs: int = 128,
        time_dim: int = 256,
        layer_norm: bool = True,
        type_input: str = "embedding",
        predict_types: bool = False,
    ) -> None:
        super().__init__()
        if type_input not in ("embedding", "continuous"):
            raise ValueError(f"type_input must be 'embedding' or 'continuous', got {type_input!r}")
        self.type_input = type_input
        self.node_embedding: nn.Module = (
            nn.Embedding(MAX_ATOMIC_NUMBER, hidden_dim)
            if type_input == "embedding"
            else nn.Linear(MAX_ATOMIC_NUMBER, hidden_dim)
        )
        self.atom_latent = nn.Linear(hidden_dim + time_dim, hidden_dim)
        self.fourier = FractionalFourierFeatures(num_freqs)
        self.layers = nn.ModuleList(CSPLayer(hidden_dim, self.fourier.dim, layer_norm) for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(hidden_dim) if layer_norm else nn.Identity()
        self.coord_out = nn.Linear(hidden_dim, 3, bias=False)
        self.lattice_out = nn.Linear(hidden_dim, 9, bias=False)
        self.type_out = nn.Linear(hidden_dim, MAX_ATOMIC_NUMBER) if predict_types else None

    def forward(
        self,
        time_emb: torch.Tensor,
        atom_types: torch.Tensor,
        frac_coords: torch.Tensor,
        lattices: torch.Tensor,
        num_atoms: torch.Tensor,
        batch: torch.Tensor,
        edges: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``time_emb`` (B, T_e), ``atom_types`` (N,) long Z or (N, 100) float, ``frac_coords``
        (N, 3), ``lattices`` (B, 3, 3) rows in Å, ``num_atoms`` (B,), ``batch`` (N,) → ε̂_L (B, 3, 3),
        ε̂_F (N, 3), ε̂_A (N, 100) or ``None``. ``edges`` may pass precomputed
        :func:`~crystal_diffcsp.graph.fully_connected_edges` of ``num_atoms``."""
        src, dst = fully_connected_edges(num_atoms) if edges is None else edges
        edge_crystal = batch[src]
        h = self.node_embedding(atom_types - 1 if self.type_input == "embedding" else atom_types)
        h = self.atom_latent(torch.cat([h, time_emb[batch]], dim=-1))
        fourier = self.fourier(frac_coords[dst] - frac_coords[src])
        ips = (lattices @ lattices.transpose(-1, -2)).reshape(-1, 9)
        inv_degree = (1.0 / num_atoms.to(h.dtype))[batch].unsqueeze(-1)
        for layer in self.layers:
            h = layer(h, ips, fourier, src, dst, edge_crystal, inv_degree)
        h = self.final_norm(h)
        coord = self.coord_out(h)
        pooled = torch.zeros(num_atoms.shape[0], h.shape[1], dtype=h.dtype, device=h.device).index_add_(0, batch, h)
        pooled = pooled / num_atoms.to(h.dtype).clamp(min=1).unsqueeze(-1)
        lattice = torch.einsum("bij,bjk->bik", self.lattice_out(pooled).view(-1, 3, 3), lattices)
        types = self.type_out(h) if self.type_out is not None else None
        return lattice, coord, types
