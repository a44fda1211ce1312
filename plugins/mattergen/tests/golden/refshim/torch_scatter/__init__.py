"""Pure-torch stand-in for the few ``torch_scatter`` functions microsoft/mattergen imports.

Used ONLY by ``make_golden.py`` when the compiled ``torch_scatter`` is not installed (building
it from source takes hours on a 2-core machine). Semantics as documented by torch_scatter:
reductions of ``src`` along ``dim`` into ``dim_size`` buckets given by ``index``.
"""

from __future__ import annotations

import torch

__version__ = "shim"


def _broadcast(index: torch.Tensor, src: torch.Tensor, dim: int) -> torch.Tensor:
    dim = dim % src.dim()
    if index.dim() == 1:
        shape = [1] * src.dim()
        shape[dim] = -1
        index = index.view(shape)
    return index.expand_as(src)


def scatter(src, index, dim=-1, out=None, dim_size=None, reduce="sum"):
    dim = dim % src.dim()
    if dim_size is None:
        dim_size = int(index.max()) + 1 if index.numel() else 0
    shape = list(src.shape)
    shape[dim] = dim_size
    idx = _broadcast(index, src, dim)
    if reduce in ("sum", "add"):
        return torch.zeros(shape, dtype=src.dtype, device=src.device).scatter_add_(dim, idx, src)
    if reduce == "mean":
        total = torch.zeros(shape, dtype=src.dtype, device=src.device).scatter_add_(dim, idx, src)
        count = torch.zeros(shape, dtype=src.dtype, device=src.device).scatter_add_(dim, idx, torch.ones_like(src))
        return total / count.clamp(min=1)
    if reduce in ("max", "min", "amax", "amin"):
        red = "amax" if reduce in ("max", "amax") else "amin"
        out = torch.zeros(shape, dtype=src.dtype, device=src.device)
        return out.scatter_reduce_(dim, idx, src, reduce=red, include_self=False)
    raise ValueError(reduce)


def scatter_add(src, index, dim=-1, out=None, dim_size=None):
    return scatter(src, index, dim=dim, dim_size=dim_size, reduce="sum")


def scatter_mean(src, index, dim=-1, out=None, dim_size=None):
    return scatter(src, index, dim=dim, dim_size=dim_size, reduce="mean")


def segment_coo(src, index, out=None, dim_size=None, reduce="sum"):
    dim = index.dim() - 1
    return scatter(src, index, dim=dim, dim_size=dim_size, reduce=reduce)


def segment_csr(src, indptr, out=None, reduce="sum"):
    counts = indptr[1:] - indptr[:-1]
    index = torch.repeat_interleave(torch.arange(counts.numel(), device=src.device), counts)
    return scatter(src, index, dim=0, dim_size=counts.numel(), reduce=reduce)
