"""Segment reductions over a flat index (atoms → crystals, bonds → atoms / crystals) with
``index_add_`` / ``scatter_reduce`` only (no torch_scatter)."""

from __future__ import annotations

import torch

__all__ = ["segment_mean", "segment_softmax", "segment_sum"]


def segment_sum(x: torch.Tensor, index: torch.Tensor, num_segments: int) -> torch.Tensor:
    """:math:`y_s = \\sum_{k: \\mathrm{index}_k = s} x_k`. Shapes: (M, F), (M,) → (S, F)."""
    out = x.new_zeros((num_segments, *x.shape[1:]))
    return out.index_add_(0, index, x)


def segment_mean(x: torch.Tensor, index: torch.Tensor, num_segments: int) -> torch.Tensor:
    """:math:`y_s = \\frac{1}{|\\{k: \\mathrm{index}_k = s\\}|} \\sum_{k: \\mathrm{index}_k = s} x_k`;
    0 for an empty segment (an atom without bonds, a crystal without bonds).

    Shapes: (M, F), (M,) → (S, F).
    """
    total = segment_sum(x, index, num_segments)
    count = torch.bincount(index, minlength=num_segments).clamp(min=1).to(x.dtype)
    return total / count.view(-1, *([1] * (x.dim() - 1)))


def segment_softmax(e: torch.Tensor, index: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Softmax within each segment, :math:`a_k = e^{e_k} / \\sum_{l: \\mathrm{index}_l =
    \\mathrm{index}_k} e^{e_l}` (the segment's maximum is subtracted first, as in the
    reference code). Shapes: (M,), (M,) → (M,).
    """
    if e.numel() == 0:
        return e
    shift = torch.full((num_segments,), float("-inf"), dtype=e.dtype, device=e.device)
    shift = shift.scatter_reduce(0, index, e.detach(), reduce="amax", include_self=True)
    z = torch.exp(e - shift[index])
    return z / segment_sum(z, index, num_segments)[index]
