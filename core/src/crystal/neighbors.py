"""Periodic radius graph: every pair within a cutoff across periodic images, batched.

.. math::  d_{ij}(\\mathbf{n}) = \\lVert (\\mathbf{f}_j + \\mathbf{n} - \\mathbf{f}_i) L \\rVert < r_c

for atoms ``i, j`` of the same crystal and integer image offsets ``n`` (``i = j`` allowed
for ``n ≠ 0``: an atom's own images count in cells smaller than the cutoff).

With ``max_neighbors = k`` only the ``k`` nearest neighbours of every source atom ``i`` are
kept (CGCNN uses 12), ties broken deterministically by (distance, neighbour index, shift).

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


def _empty(batch: CrystalBatch) -> RadiusGraph:
    device, dtype = batch.device, batch.dtype
    vectors = torch.zeros((0, 3), dtype=dtype, device=device) + 0.0 * batch.lattices.sum()
    return RadiusGraph(
        torch.zeros((2, 0), dtype=torch.long, device=device),
        torch.zeros((0, 3), dtype=torch.long, device=device),
        vectors,
        vectors.norm(dim=-1),
    )


def _nearest_k(edge_index: torch.Tensor, distances: torch.Tensor, k: int) -> torch.Tensor:
    """(E',) indices of the ``k`` nearest edges of every source, ordered by (source, rank).

    Edges must come in (source, neighbour, shift) lexicographic order (as enumerated by
    :func:`radius_graph`), so two stable sorts give the (source, distance, neighbour, shift)
    order.
    """
    src = edge_index[0]
    order = torch.sort(distances.detach(), stable=True).indices
    order = order[torch.sort(src[order], stable=True).indices]
    src_sorted = src[order]
    counts = torch.bincount(src_sorted)
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(src_sorted.shape[0], device=src.device) - first[src_sorted]
    return order[rank < k]


def radius_graph(
    batch: CrystalBatch,
    cutoff: float,
    *,
    max_pairs_per_chunk: int = 4_000_000,
    max_neighbors: int | None = None,
) -> RadiusGraph:
    """All neighbours within ``cutoff`` Å, vectorised over the batch (no per-crystal loop).

    Candidate images are enumerated **per atom pair**: with ``Δ = f_j - f_i`` (wrapped
    coordinates) and ``h_k = cutoff · |b_k|`` (``b_k`` the reciprocal vector without 2π, so
    ``1/|b_k|`` is the spacing of lattice planes), only ``n_k ∈ [⌈-h_k - Δ_k⌉, ⌊h_k - Δ_k⌋]``
    can be within the cutoff, since ``|Δ_k + n_k| ≤ |r| |b_k|``. This is exact for skewed
    and tiny cells (an atom's own images) and cells smaller than the cutoff, and avoids a
    batch-wide image grid. The search runs without autograd in chunks of at most
    ``max_pairs_per_chunk`` (pair, image) candidates; the surviving vectors are then
    recomputed as ``(f_j + n - f_i) L`` so that they are differentiable with respect to
    ``batch.frac_coords`` and ``batch.lattices``.

    ``max_neighbors`` keeps only the that many nearest neighbours of each source atom (ties
    by neighbour index, then shift); edges are then ordered by (source, distance).
    """
    device, dtype = batch.device, batch.dtype
    if batch.num_nodes == 0:
        return _empty(batch)
    with torch.no_grad():
        frac_in = batch.frac_coords.detach()
        wrap = torch.floor(frac_in)
        frac = frac_in - wrap  # (N, 3) in [0, 1)
        lattices = batch.lattices.detach()
        recip_norm = torch.linalg.inv(lattices).norm(dim=1)  # (B, 3) = 1 / plane spacing
        reach = cutoff * recip_norm * (1 + 1e-6) + 1e-9  # (B, 3) safety margin; exact filter below

        # every ordered intra-crystal pair (i, j)
        counts = batch.num_atoms
        pc = counts * counts
        num_pairs = int(pc.sum())
        crystal_of_pair = torch.repeat_interleave(torch.arange(len(batch), device=device), pc)
        local = torch.arange(num_pairs, device=device) - torch.repeat_interleave(torch.cumsum(pc, 0) - pc, pc)
        n_of_pair = counts[crystal_of_pair]
        first = batch.ptr[crystal_of_pair]
        pi = first + torch.div(local, n_of_pair, rounding_mode="floor")
        pj = first + local % n_of_pair
        delta = frac[pj] - frac[pi]  # (P, 3)
        h = reach[crystal_of_pair]
        lo = torch.ceil(-h - delta).long()
        hi = torch.floor(h - delta).long()
        width = (hi - lo + 1).clamp(min=0)  # (P, 3)
        cand = width.prod(dim=1)  # (P,) candidate images per pair

        # chunk pairs so that at most max_pairs_per_chunk candidates exist at once
        ends = torch.cumsum(cand, 0)
        chunk_id = torch.div(ends - 1, max(1, max_pairs_per_chunk), rounding_mode="floor").clamp(min=0)
        bounds = torch.cumsum(torch.bincount(chunk_id), 0).tolist()
        sel_p, sel_n = [], []
        start = 0
        for stop in bounds:
            if stop <= start:
                continue
            c = cand[start:stop]
            total = int(c.sum())
            if total:
                pair = torch.repeat_interleave(torch.arange(start, stop, device=device), c)
                t = torch.arange(total, device=device) - torch.repeat_interleave(torch.cumsum(c, 0) - c, c)
                w = width[pair]
                n = (
                    torch.stack(
                        [
                            torch.div(t, w[:, 1] * w[:, 2], rounding_mode="floor"),
                            torch.div(t, w[:, 2], rounding_mode="floor") % w[:, 1],
                            t % w[:, 2],
                        ],
                        dim=1,
                    )
                    + lo[pair]
                )  # (K, 3)
                cart = torch.einsum("kc,kcd->kd", delta[pair] + n.to(dtype), lattices[crystal_of_pair[pair]])
                ok = cart.norm(dim=-1) < cutoff * (1 + 1e-6) + 1e-9
                ok &= (pi[pair] != pj[pair]) | (n != 0).any(dim=1)
                sel_p.append(pair[ok])
                sel_n.append(n[ok])
            start = stop
        if not sel_p:
            return _empty(batch)
        pair = torch.cat(sel_p)
        i, j = pi[pair], pj[pair]
        shifts = torch.cat(sel_n) - wrap[j].long() + wrap[i].long()  # offsets for the unwrapped input

    # differentiable recomputation on the survivors only
    L = batch.lattices[crystal_of_pair[pair]]
    vectors = torch.einsum("ec,ecd->ed", batch.frac_coords[j] - batch.frac_coords[i] + shifts.to(dtype), L)
    distances = vectors.norm(dim=-1)
    keep = (distances.detach() < cutoff).nonzero(as_tuple=True)[0]
    edge_index = torch.stack([i, j])
    if max_neighbors is not None:
        keep = keep[_nearest_k(edge_index[:, keep], distances[keep], max_neighbors)]
    return RadiusGraph(edge_index[:, keep], shifts[keep], vectors[keep], distances[keep])
