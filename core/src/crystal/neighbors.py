"""Periodic radius graph: every pair within a cutoff across periodic images, batched.

.. math::  d_{ij}(\\mathbf{n}) = \\lVert (\\mathbf{f}_j + \\mathbf{n} - \\mathbf{f}_i) L \\rVert < r_c

for atoms ``i, j`` of the same crystal and integer image offsets ``n`` (``i = j`` allowed
for ``n ≠ 0``: an atom's own images count in cells smaller than the cutoff).

Shapes: ``edge_index`` (2, E) as (source i, neighbour j); ``shifts`` (E, 3) integer image
offsets; ``vectors`` (E, 3) = ``r_j + n L - r_i`` in Å; ``distances`` (E,).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crystal.batch import CrystalBatch

__all__ = ["RadiusGraph", "radius_graph"]


@dataclass
class RadiusGraph:
    edge_index: torch.Tensor
    shifts: torch.Tensor
    vectors: torch.Tensor
    distances: torch.Tensor


def radius_graph(batch: CrystalBatch, cutoff: float, *, max_pairs_per_chunk: int = 4_000_000) -> RadiusGraph:
    """All neighbours within ``cutoff`` Å, vectorised over the batch (no per-crystal loop).

    The image range along lattice direction ``k`` is ``ceil(cutoff · |b_k|)`` with ``b_k``
    the reciprocal vector (without 2π), i.e. the cutoff over the spacing of lattice planes,
    so skewed and tiny cells are handled exactly. Work is split in chunks of crystals so that
    at most ``max_pairs_per_chunk`` (pair, image) candidates exist at once. Vectors are
    differentiable with respect to ``batch.frac_coords`` and ``batch.lattices``.
    """
    device, dtype = batch.device, batch.dtype
    frac = batch.frac_coords - torch.floor(batch.frac_coords.detach())
    recip_norm = torch.linalg.inv(batch.lattices.detach()).norm(dim=1)  # (B, 3) = 1 / plane spacing
    n_img = torch.ceil(cutoff * recip_norm).long()  # (B, 3)
    pair_counts = batch.num_atoms * batch.num_atoms
    edges, shifts_out, vecs = [], [], []
    # chunk crystals so that pairs * images stays bounded
    img_counts = (2 * n_img + 1).prod(dim=1)
    cost = (pair_counts * img_counts).tolist()
    start, acc = 0, 0
    bounds = []
    for b, c in enumerate(cost):
        if acc and acc + c > max_pairs_per_chunk:
            bounds.append((start, b))
            start, acc = b, 0
        acc += c
    bounds.append((start, len(batch)))
    ptr = batch.ptr
    for lo, hi in bounds:
        if hi <= lo:
            continue
        crystals = torch.arange(lo, hi, device=device)
        counts = batch.num_atoms[crystals]
        pc = counts * counts
        crystal_of_pair = torch.repeat_interleave(crystals, pc)
        local = torch.arange(int(pc.sum()), device=device) - torch.repeat_interleave(torch.cumsum(pc, 0) - pc, pc)
        n_of_pair = batch.num_atoms[crystal_of_pair]
        first = ptr[crystal_of_pair]
        i = first + torch.div(local, n_of_pair, rounding_mode="floor")
        j = first + local % n_of_pair
        nmax = n_img[crystals].amax(dim=0)
        grids = [torch.arange(-int(n), int(n) + 1, device=device) for n in nmax.tolist()]
        shift_grid = torch.cartesian_prod(*grids).to(dtype)  # (S, 3)
        within = (shift_grid.abs()[None, :, :] <= n_img[crystals][:, None, :].to(dtype)).all(-1)  # (C, S)
        diff = frac[j] - frac[i]  # (P, 3)
        L = batch.lattices[crystal_of_pair]  # (P, 3, 3)
        cart = torch.einsum("pk,pkl->pl", diff, L)[:, None, :] + torch.einsum("sk,pkl->psl", shift_grid, L)
        dist = cart.norm(dim=-1)  # (P, S)
        is_self = (i == j)[:, None] & (shift_grid.abs().sum(-1) == 0)[None, :]
        ok = (dist < cutoff) & ~is_self & within[crystal_of_pair - lo]
        p_idx, s_idx = torch.nonzero(ok, as_tuple=True)
        edges.append(torch.stack([i[p_idx], j[p_idx]]))
        shifts_out.append(shift_grid[s_idx])
        vecs.append(cart[p_idx, s_idx])
    edge_index = torch.cat(edges, dim=1) if edges else torch.zeros((2, 0), dtype=torch.long, device=device)
    shifts = torch.cat(shifts_out) if shifts_out else torch.zeros((0, 3), dtype=dtype, device=device)
    vectors = torch.cat(vecs) if vecs else torch.zeros((0, 3), dtype=dtype, device=device)
    # integer image offsets relative to the unwrapped input coordinates
    wrap = torch.floor(batch.frac_coords.detach())
    shifts_unwrapped = shifts - wrap[edge_index[1]] + wrap[edge_index[0]]
    return RadiusGraph(edge_index, shifts_unwrapped.round().long(), vectors, vectors.norm(dim=-1))
