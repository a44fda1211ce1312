"""The operators of SchNet (Schütt et al., J. Chem. Phys. 148, 241722 (2018)), one per class.

Notation: ``N`` atoms, ``E`` directed edges ``(i, j)`` (atom ``i`` receives from neighbour
``j``, periodic image included), ``F`` atom-wise features, ``F_f`` filters, ``K`` radial
basis functions. Every layer works on flat, batched tensors (PyTorch Geometric layout) and
keeps the dtype of its parameters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AtomwiseHead",
    "CFConv",
    "Interaction",
    "ShiftedSoftplus",
    "cosine_cutoff",
    "shifted_softplus",
]

_LOG2 = math.log(2.0)


def shifted_softplus(x: torch.Tensor) -> torch.Tensor:
    """Shifted softplus :math:`\\mathrm{ssp}(x) = \\ln(0.5 e^x + 0.5) = \\mathrm{softplus}(x) - \\ln 2`.

    ``ssp(0) = 0``; computed as ``softplus(x) - ln 2`` (stable for large ``|x|``). Shapes: any.
    """
    return F.softplus(x) - _LOG2


class ShiftedSoftplus(nn.Module):
    """Module form of :func:`shifted_softplus`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return shifted_softplus(x)


def cosine_cutoff(d: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Cosine envelope :math:`f_c(d) = \\tfrac12 (\\cos(\\pi d / r_c) + 1)` for ``d < r_c``, else 0.

    1 at ``d = 0``, 0 with zero slope at ``d = r_c`` (SchNetPack's ``CosineCutoff``; Behler's
    symmetry-function cutoff). Shapes: ``d`` (*) → (*).
    """
    f = 0.5 * (torch.cos(d * (math.pi / cutoff)) + 1.0)
    return torch.where(d < cutoff, f, torch.zeros_like(f))


def _glorot(linear: nn.Linear) -> nn.Linear:
    """Glorot-uniform weights and zero bias: the initialisation of the original ``Dense`` layer."""
    nn.init.xavier_uniform_(linear.weight)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)
    return linear


class CFConv(nn.Module):
    """Continuous-filter convolution (JCP 2018 eq. 3, with periodic images):

    .. math::  \\mathbf{x}'_i = \\sum_{(i,j,\\mathbf{n}):\\, d_{ij\\mathbf{n}} < r_c}
               \\mathbf{x}_j \\circ W(d_{ij\\mathbf{n}}),
               \\qquad W(d) = \\mathrm{ssp}(W_2\\, \\mathrm{ssp}(W_1 \\mathbf{e}(d) + b_1) + b_2)\\, f_c(d)

    where ``e(d)`` is the ``K``-dimensional Gaussian expansion of the distance and ``f_c``
    the cutoff envelope (1 for a hard cutoff). The filter-generating network is two dense
    layers with shifted softplus (paper Fig. 2 and the authors' ``SchNetFilter``). Summing
    over every periodic image ``n`` of ``j`` within the cutoff equals the original's sum of
    image filters followed by the product with ``x_j``.

    Shapes: ``x`` (N, F_f), ``rbf`` (E, K), ``envelope`` (E,) or None, ``edge_index`` (2, E)
    → (N, F_f).
    """

    def __init__(self, num_basis: int, num_filters: int) -> None:
        super().__init__()
        self.filter1 = _glorot(nn.Linear(num_basis, num_filters))
        self.filter2 = _glorot(nn.Linear(num_filters, num_filters))

    def filters(self, rbf: torch.Tensor, envelope: torch.Tensor | None) -> torch.Tensor:
        """``W(d)`` of every edge: (E, K) → (E, F_f)."""
        w = shifted_softplus(self.filter2(shifted_softplus(self.filter1(rbf))))
        return w if envelope is None else w * envelope[:, None]

    def forward(
        self, x: torch.Tensor, rbf: torch.Tensor, envelope: torch.Tensor | None, edge_index: torch.Tensor
    ) -> torch.Tensor:
        i, j = edge_index[0], edge_index[1]
        messages = x[j] * self.filters(rbf, envelope)  # (E, F_f)
        return torch.zeros_like(x).index_add_(0, i, messages)


class Interaction(nn.Module):
    """SchNet interaction block (JCP 2018 Fig. 2), returning the residual update ``v_i``:

    .. math::  \\mathbf{v}_i = W_3\\, \\mathrm{ssp}\\big(W_2\\, \\mathrm{cfconv}(W_1 \\mathbf{x})_i + b_2\\big) + b_3,
               \\qquad \\mathbf{x}_i \\leftarrow \\mathbf{x}_i + \\mathbf{v}_i

    ``W_1`` (F → F_f, no bias: the original ``in2fac``), the cfconv (:class:`CFConv`),
    ``W_2`` (F_f → F, with bias, then ssp: ``fac2out``) and the atom-wise ``W_3`` (F → F).

    Shapes: ``x`` (N, F), ``rbf`` (E, K), ``envelope`` (E,) or None, ``edge_index`` (2, E) → (N, F).
    """

    def __init__(self, num_features: int, num_filters: int, num_basis: int) -> None:
        super().__init__()
        self.in2f = _glorot(nn.Linear(num_features, num_filters, bias=False))
        self.cfconv = CFConv(num_basis, num_filters)
        self.f2out = _glorot(nn.Linear(num_filters, num_features))
        self.dense = _glorot(nn.Linear(num_features, num_features))

    def forward(
        self, x: torch.Tensor, rbf: torch.Tensor, envelope: torch.Tensor | None, edge_index: torch.Tensor
    ) -> torch.Tensor:
        h = self.cfconv(self.in2f(x), rbf, envelope, edge_index)
        return self.dense(shifted_softplus(self.f2out(h)))


class AtomwiseHead(nn.Module):
    """Atom-wise output network (JCP 2018 Fig. 2): :math:`y_i = W_b\\, \\mathrm{ssp}(W_a \\mathbf{x}_i + b_a) + b_b`,
    F → F/2 → ``width``. The last layer starts at zero, as in the original code, so that an
    untrained model predicts the training mean (normalised output 0).

    Shapes: ``x`` (N, F) → (N, width).
    """

    def __init__(self, num_features: int, width: int) -> None:
        super().__init__()
        hidden = num_features // 2
        self.hidden = _glorot(nn.Linear(num_features, hidden))
        self.out = nn.Linear(hidden, width)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(shifted_softplus(self.hidden(x)))
