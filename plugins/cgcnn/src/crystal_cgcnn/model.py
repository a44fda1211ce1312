"""The CGCNN network and its batched crystal graph.

Parameter names match the original implementation (``txie-93/cgcnn``, ``cgcnn/model.py``)
so that original ``state_dict``s load unchanged: ``embedding``, ``convs.<k>.fc_full``,
``convs.<k>.bn1``, ``convs.<k>.bn2``, ``conv_to_fc``, ``fcs.<k>``, ``fc_out``.

Graph (the original ``CIFData``): every atom keeps its ``max_num_nbr`` nearest neighbours
within ``radius`` (periodic images included, sorted by distance). An atom with fewer is
padded, as the original does, with neighbour index 0 (the first atom of its crystal) at
distance ``radius + 1``; padded slots take part in the convolution like real ones.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from crystal.batch import CrystalBatch
from crystal.neighbors import radius_graph

__all__ = ["CGCNN", "NeighbourGraph", "gaussian_centres", "nearest_neighbours"]


def gaussian_centres(dmin: float, dmax: float, step: float) -> torch.Tensor:
    """Centres of the original ``GaussianDistance``: ``np.arange(dmin, dmax + step, step)``
    (41 centres for 0, 8, 0.2), computed with numpy so the float values are identical."""
    return torch.from_numpy(np.arange(dmin, dmax + step, step))


class NeighbourGraph:
    """Fixed-width neighbour lists: ``index`` (N, M) global atom indices, ``distance`` (N, M) Å."""

    def __init__(self, index: torch.Tensor, distance: torch.Tensor) -> None:
        self.index = index
        self.distance = distance


def nearest_neighbours(batch: CrystalBatch, radius: float, max_num_nbr: int) -> NeighbourGraph:
    """The ``max_num_nbr`` nearest neighbours of every atom within ``radius``, batched.

    One :func:`crystal.neighbors.radius_graph` call for the whole batch, then a vectorised
    per-atom top-M: edges are stably sorted by distance and then by source atom, and each
    edge's rank within its source is its position minus the source's first position.
    """
    n, device = batch.num_nodes, batch.device
    g = radius_graph(batch, radius)
    src, dst, dist = g.edge_index[0], g.edge_index[1], g.distances.detach()
    order = torch.argsort(dist, stable=True)
    order = order[torch.argsort(src[order], stable=True)]
    src, dst, dist = src[order], dst[order], dist[order]
    counts = torch.bincount(src, minlength=n)
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(src.numel(), device=device) - first[src]
    keep = rank < max_num_nbr
    src, dst, dist, rank = src[keep], dst[keep], dist[keep], rank[keep]
    # padding as in the original: neighbour 0 of the crystal, distance radius + 1
    pad_index = batch.ptr[:-1][batch.batch]
    index = pad_index[:, None].expand(n, max_num_nbr).clone()
    distance = torch.full((n, max_num_nbr), radius + 1.0, dtype=dist.dtype, device=device)
    index[src, rank] = dst
    distance[src, rank] = dist
    return NeighbourGraph(index, distance)


class ConvLayer(nn.Module):
    """Gated graph convolution: ``v_i ← softplus(v_i + BN(Σ_j σ(z W_f) ⊙ softplus(z W_s)))``
    with ``z = [v_i, v_j, u_ij]``; both halves share one Linear + BatchNorm as in the original."""

    def __init__(self, atom_fea_len: int, nbr_fea_len: int) -> None:
        super().__init__()
        self.atom_fea_len = atom_fea_len
        self.fc_full = nn.Linear(2 * atom_fea_len + nbr_fea_len, 2 * atom_fea_len)
        self.bn1 = nn.BatchNorm1d(2 * atom_fea_len)
        self.bn2 = nn.BatchNorm1d(atom_fea_len)

    def forward(self, atom_fea: torch.Tensor, nbr_fea: torch.Tensor, nbr_idx: torch.Tensor) -> torch.Tensor:
        n, m = nbr_idx.shape
        self_fea = atom_fea[:, None, :].expand(n, m, self.atom_fea_len)
        total = torch.cat([self_fea, atom_fea[nbr_idx], nbr_fea], dim=2)
        total = self.bn1(self.fc_full(total).view(-1, 2 * self.atom_fea_len)).view(n, m, 2 * self.atom_fea_len)
        filt, core = total.chunk(2, dim=2)
        summed = (torch.sigmoid(filt) * F.softplus(core)).sum(dim=1)
        return F.softplus(atom_fea + self.bn2(summed))


class CGCNN(nn.Module):
    """``CrystalGraphConvNet`` of the original code (eval-mode inference, no dropout)."""

    def __init__(
        self,
        orig_atom_fea_len: int,
        nbr_fea_len: int,
        atom_fea_len: int = 64,
        n_conv: int = 3,
        h_fea_len: int = 128,
        n_h: int = 1,
        classification: bool = False,
    ) -> None:
        super().__init__()
        self.classification = classification
        self.embedding = nn.Linear(orig_atom_fea_len, atom_fea_len)
        self.convs = nn.ModuleList([ConvLayer(atom_fea_len, nbr_fea_len) for _ in range(n_conv)])
        self.conv_to_fc = nn.Linear(atom_fea_len, h_fea_len)
        if n_h > 1:
            self.fcs = nn.ModuleList([nn.Linear(h_fea_len, h_fea_len) for _ in range(n_h - 1)])
        self.fc_out = nn.Linear(h_fea_len, 2 if classification else 1)

    def forward(
        self,
        atom_fea: torch.Tensor,
        nbr_fea: torch.Tensor,
        nbr_idx: torch.Tensor,
        crystal_of_atom: torch.Tensor,
        num_crystals: int,
    ) -> torch.Tensor:
        """Raw outputs ``(B, 1)`` (normalised regression) or ``(B, 2)`` log-probabilities."""
        h = self.embedding(atom_fea)
        for conv in self.convs:
            h = conv(h, nbr_fea, nbr_idx)
        summed = torch.zeros((num_crystals, h.shape[1]), dtype=h.dtype, device=h.device)
        summed.index_add_(0, crystal_of_atom, h)
        counts = torch.bincount(crystal_of_atom, minlength=num_crystals).clamp(min=1).to(h.dtype)
        crys = summed / counts[:, None]
        crys = F.softplus(self.conv_to_fc(F.softplus(crys)))
        for fc in getattr(self, "fcs", ()):
            crys = F.softplus(fc(crys))
        out = self.fc_out(crys)
        return F.log_softmax(out, dim=1) if self.classification else out
