"""The CGCNN network with its batched crystal graph (Xie & Grossman, PRL 120, 145301 (2018)).

Parameter names match the original implementation (``txie-93/cgcnn``, ``cgcnn/model.py``,
``CrystalGraphConvNet``) so that original ``state_dict``s load unchanged: ``embedding``,
``convs.<k>.fc_full``, ``convs.<k>.bn1``, ``convs.<k>.bn2``, ``conv_to_fc``, ``fcs.<k>``,
``fc_out``. Added here: the element-feature table (buffers ``element_features``,
``element_known``, so that a crystal checkpoint is self-contained) and, only for per-atom
targets, ``fc_atom``.

Graph (the original ``CIFData``): every atom keeps its ``max_num_nbr`` nearest neighbours
within ``radius`` (periodic images included, sorted by distance). An atom with fewer is
padded, as the original does, with neighbour index 0 (the first atom of its crystal) at
distance ``radius + 1``; padded slots take part in the convolution like real ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from crystal.batch import CrystalBatch
from crystal.neighbors import radius_graph

__all__ = ["CGCNN", "ConvLayer", "NeighbourGraph", "gaussian_centres", "gaussian_distance", "nearest_neighbours"]


def gaussian_centres(dmin: float, dmax: float, step: float) -> torch.Tensor:
    """Centres ``μ_k`` of the original ``GaussianDistance``: ``np.arange(dmin, dmax + step, step)``
    (41 centres for 0, 8, 0.2 Å), float64, computed with numpy so the values are identical."""
    return torch.from_numpy(np.arange(dmin, dmax + step, step))


def gaussian_distance(distance: torch.Tensor, centres: torch.Tensor, step: float) -> torch.Tensor:
    r"""Bond features :math:`u_{ij,k} = \exp(-(d_{ij} - \mu_k)^2 / \sigma^2)` with :math:`\sigma` = ``step``.

    ``distance`` (N, M) Å, ``centres`` (K,) Å → (N, M, K), in the dtype of ``distance``.
    """
    return torch.exp(-((distance[..., None] - centres) ** 2) / step**2)


class NeighbourGraph:
    """Fixed-width neighbour lists: ``index`` (N, M) global atom indices, ``distance`` (N, M) Å."""

    def __init__(self, index: torch.Tensor, distance: torch.Tensor) -> None:
        self.index = index
        self.distance = distance


def nearest_neighbours(batch: CrystalBatch, radius: float, max_num_nbr: int) -> NeighbourGraph:
    """The ``max_num_nbr`` nearest neighbours of every atom within ``radius`` Å, batched.

    One :func:`crystal.neighbors.radius_graph` call for the whole batch with
    ``max_neighbors=max_num_nbr`` (edges ordered by source, then distance; ties by neighbour
    index, then image); an edge's slot is its position minus its source's first position.
    Atoms with fewer neighbours are padded with the crystal's first atom at ``radius + 1``.
    Distances are in the batch's dtype (float64 for the model) and differentiable.
    """
    n, device = batch.num_nodes, batch.device
    g = radius_graph(batch, radius, max_neighbors=max_num_nbr)
    src, dst, dist = g.edge_index[0], g.edge_index[1], g.distances
    counts = torch.bincount(src, minlength=n)
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(src.numel(), device=device) - first[src]
    pad_index = batch.ptr[:-1][batch.batch]
    index = pad_index[:, None].expand(n, max_num_nbr).clone()
    distance = torch.full((n, max_num_nbr), radius + 1.0, dtype=batch.dtype, device=device)
    index[src, rank] = dst
    distance = distance.index_put((src, rank), dist)
    return NeighbourGraph(index, distance)


class ConvLayer(nn.Module):
    r"""Gated graph convolution (Eq. 5 of the paper):

    .. math::
        z_{ij} = v_i \oplus v_j \oplus u_{ij}, \qquad
        (f_{ij}, s_{ij}) = \mathrm{BN}_1(z_{ij} W + b), \\
        v_i \leftarrow \mathrm{softplus}\Big(v_i + \mathrm{BN}_2\big(\textstyle\sum_j
        \sigma(f_{ij}) \odot \mathrm{softplus}(s_{ij})\big)\Big)

    ``atom_fea`` (N, F), ``nbr_fea`` (N, M, K), ``nbr_idx`` (N, M) → (N, F). One Linear and
    BatchNorm produce both halves, as in the original; ``BN₁`` normalises over all N·M slots
    (padding included). Training mode uses batch statistics, eval mode the running ones.
    """

    def __init__(self, atom_fea_len: int, nbr_fea_len: int) -> None:
        super().__init__()
        self.atom_fea_len = atom_fea_len
        self.fc_full = nn.Linear(2 * atom_fea_len + nbr_fea_len, 2 * atom_fea_len)
        self.bn1 = nn.BatchNorm1d(2 * atom_fea_len)
        self.bn2 = nn.BatchNorm1d(atom_fea_len)

    def forward(self, atom_fea: torch.Tensor, nbr_fea: torch.Tensor, nbr_idx: torch.Tensor) -> torch.Tensor:
        n, m = nbr_idx.shape
        f = self.atom_fea_len
        z = torch.cat([atom_fea[:, None, :].expand(n, m, f), atom_fea[nbr_idx], nbr_fea], dim=2)
        gated = self.bn1(self.fc_full(z).view(n * m, 2 * f)).view(n, m, 2 * f)
        filt, core = gated.chunk(2, dim=2)
        summed = (torch.sigmoid(filt) * F.softplus(core)).sum(dim=1)
        return F.softplus(atom_fea + self.bn2(summed))


class CGCNN(nn.Module):
    r"""``CrystalGraphConvNet`` of the original code, taking a :class:`CrystalBatch`.

    .. math::
        v_i^{(0)} = W_e\, x_{Z_i} + b_e, \quad v^{(t+1)} = \mathrm{Conv}_t(v^{(t)}), \quad
        h_c = \mathrm{softplus}\big(W_c\, \mathrm{softplus}(\tfrac{1}{|c|}\textstyle\sum_{i \in c} v_i^{(T)}) + b_c\big)

    then ``n_h − 1`` × [Linear → softplus] and ``fc_out`` → structure block (B, S). Dropout
    (``dropout`` > 0, training only) acts on ``h_c`` after ``conv_to_fc``, where the original
    applies p = 0.5 in classification models. Per-atom targets: ``fc_atom(v_i^{(T)})`` → (N, A).

    ``element_features`` (Zmax + 1, D) are the fixed input features ``x_Z`` (atom_init.json or
    derived); ``element_known`` (Zmax + 1,) marks the elements that have them. The graph and
    the Gaussian expansion are computed in float64 and cast to the parameters' dtype.
    """

    def __init__(
        self,
        element_features: torch.Tensor,
        element_known: torch.Tensor,
        *,
        atom_fea_len: int,
        n_conv: int,
        h_fea_len: int,
        n_h: int,
        radius: float,
        max_num_nbr: int,
        dmin: float,
        step: float,
        dropout: float,
        structure_width: int,
        atom_width: int,
    ) -> None:
        super().__init__()
        self.radius, self.max_num_nbr, self.step = float(radius), int(max_num_nbr), float(step)
        self._centres = gaussian_centres(dmin, radius, step)  # float64, kept out of .float()/.double()
        self.register_buffer("element_features", element_features.to(torch.get_default_dtype()).clone())
        self.register_buffer("element_known", element_known.to(torch.bool).clone())
        self.embedding = nn.Linear(int(element_features.shape[1]), atom_fea_len)
        self.convs = nn.ModuleList([ConvLayer(atom_fea_len, int(self._centres.numel())) for _ in range(n_conv)])
        self.structure_width, self.atom_width = int(structure_width), int(atom_width)
        if self.structure_width:
            self.conv_to_fc = nn.Linear(atom_fea_len, h_fea_len)
            self.dropout = nn.Dropout(dropout)
            if n_h > 1:
                self.fcs = nn.ModuleList([nn.Linear(h_fea_len, h_fea_len) for _ in range(n_h - 1)])
            self.fc_out = nn.Linear(h_fea_len, self.structure_width)
        if self.atom_width:
            self.fc_atom = nn.Linear(atom_fea_len, self.atom_width)

    def forward(self, batch: CrystalBatch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(structure_block (B, S) or None, atom_block (N, A) or None)``: raw outputs."""
        if batch.dtype != torch.float64:
            batch = batch.to(dtype=torch.float64)
        dtype = self.embedding.weight.dtype
        graph = nearest_neighbours(batch, self.radius, self.max_num_nbr)
        centres = self._centres.to(batch.device)
        nbr_fea = gaussian_distance(graph.distance, centres, self.step).to(dtype)  # (N, M, K)
        h = self.embedding(self.element_features[batch.atomic_numbers].to(dtype))  # (N, F)
        for conv in self.convs:
            h = conv(h, nbr_fea, graph.index)
        atom_block = self.fc_atom(h) if self.atom_width else None
        structure_block = None
        if self.structure_width:
            b = len(batch)
            summed = torch.zeros((b, h.shape[1]), dtype=h.dtype, device=h.device).index_add_(0, batch.batch, h)
            crys = summed / batch.num_atoms.clamp(min=1).to(h.dtype)[:, None]  # mean pooling (B, F)
            crys = F.softplus(self.conv_to_fc(F.softplus(crys)))
            crys = self.dropout(crys)
            for fc in getattr(self, "fcs", ()):
                crys = F.softplus(fc(crys))
            structure_block = self.fc_out(crys)
        return structure_block, atom_block

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Element features are data: a state dict with a table of another shape (another
        atom_init, or derived features of another size) resizes the table, the mask and
        the embedding's input width before the values are copied in."""
        table = state_dict.get(prefix + "element_features")
        known = state_dict.get(prefix + "element_known")
        if isinstance(table, torch.Tensor) and table.shape != self.element_features.shape:
            ref = self.element_features
            self.element_features = torch.empty(table.shape, dtype=ref.dtype, device=ref.device)
            if isinstance(known, torch.Tensor):
                self.element_known = torch.empty(known.shape, dtype=torch.bool, device=ref.device)
            w = self.embedding.weight
            if table.dim() == 2 and table.shape[1] != w.shape[1]:
                self.embedding = nn.Linear(int(table.shape[1]), int(w.shape[0]), device=w.device, dtype=w.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
