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

    Edges must come grouped by source in (source, neighbour, shift) lexicographic order (as
    enumerated by :func:`radius_graph`); ties are broken by that order, so the result is the
    first ``k`` of the (source, distance, neighbour, shift) order. Neighbour lists are laid
    out densely ``(N, max degree)`` and cut at each row's ``k``-th smallest distance with
    ``topk`` (no sort of all E edges); only the kept ``≤ N k`` edges are sorted. Falls back
    to two stable sorts when the dense layout would be much larger than E.
    """
    src = edge_index[0]
    dist = distances.detach()
    e = src.numel()
    if e == 0:
        return torch.zeros(0, dtype=torch.long, device=src.device)
    counts = torch.bincount(src)
    first = torch.cumsum(counts, 0) - counts
    width = int(counts.max())
    if width <= k:
        keep = torch.arange(e, device=src.device)
    elif counts.numel() * width <= 4 * e + 1_000_000 and bool((src[1:] >= src[:-1]).all()):
        rank = torch.arange(e, device=src.device) - first[src]
        dense = torch.full((counts.numel(), width), float("inf"), dtype=dist.dtype, device=dist.device)
        dense[src, rank] = dist
        kth = torch.topk(dense, k, dim=1, largest=False, sorted=True).values[:, -1]  # (N,)
        below = dist < kth[src]
        n_below = torch.zeros_like(counts).index_add_(0, src, below.long())
        tie = dist == kth[src]
        tie_rank = torch.cumsum(tie.long(), 0)
        tie_first = torch.zeros_like(counts).index_add_(0, src, tie.long())
        tie_rank = tie_rank - (torch.cumsum(tie_first, 0) - tie_first)[src]  # 1-based within source
        keep = (below | (tie & (tie_rank <= k - n_below[src]))).nonzero(as_tuple=True)[0]
    else:
        order = torch.sort(dist, stable=True).indices
        order = order[torch.sort(src[order], stable=True).indices]
        src_sorted = src[order]
        rank = torch.arange(e, device=src.device) - first[src_sorted]
        return order[rank < k]
    # order the kept edges by (source, distance, enumeration order)
    order = torch.sort(dist[keep], stable=True).indices
    order = order[torch.sort(src[keep][order], stable=True).indices]
    return keep[order]


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
        sel_p, sel_n, sel_d = [], [], []
        start = 0
        r_search = cutoff * (1 + 1e-6) + 1e-9
        L_pair = lattices[crystal_of_pair]  # (P, 3, 3)
        same = pi == pj
        for stop in bounds:
            if stop <= start:
                continue
            pair, n, d2 = _sphere_images(
                torch.arange(start, stop, device=device), delta, lo, width, L_pair, same, r_search
            )
            sel_p.append(pair)
            sel_n.append(n)
            sel_d.append(d2)
            start = stop
        if not sel_p:
            return _empty(batch)
        pair = torch.cat(sel_p)
        dist = torch.cat(sel_d).clamp(min=0).sqrt()
        inside = (dist < cutoff).nonzero(as_tuple=True)[0]
        pair, n, dist = pair[inside], torch.cat(sel_n)[inside], dist[inside]
        i, j = pi[pair], pj[pair]
        if max_neighbors is not None:  # choose before the differentiable recomputation
            k = _nearest_k(torch.stack([i, j]), dist, max_neighbors)
            pair, n, i, j = pair[k], n[k], i[k], j[k]
        shifts = n - wrap[j].long() + wrap[i].long()  # offsets for the unwrapped input

    # differentiable recomputation on the survivors only
    L = batch.lattices[crystal_of_pair[pair]]
    vectors = torch.einsum("ec,ecd->ed", batch.frac_coords[j] - batch.frac_coords[i] + shifts.to(dtype), L)
    return RadiusGraph(torch.stack([i, j]), shifts, vectors, vectors.norm(dim=-1))


def _expand(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For counts ``c`` (K,): the owner ``k`` of every item and its rank ``0..c_k-1``."""
    owner = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)
    rank = torch.arange(owner.numel(), device=counts.device) - (torch.cumsum(counts, 0) - counts)[owner]
    return owner, rank


def _sphere_images(
    pairs: torch.Tensor,
    delta: torch.Tensor,
    lo: torch.Tensor,
    width: torch.Tensor,
    lattice_of_pair: torch.Tensor,
    same_atom: torch.Tensor,
    radius: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image offsets ``n`` with ``|(Δ + n) L| < radius`` for ``pairs`` (no self-image ``n = 0``).

    ``n_0, n_1`` run over their bounding ranges; for each such column the range of ``n_2``
    is solved exactly from ``|c + n_2 a_3|² < r²`` with ``c = (Δ_0+n_0) a_1 + (Δ_1+n_1) a_2
    + Δ_2 a_3``, so the candidates fill the sphere rather than its bounding box, and the
    distance test needs only per-column scalars: ``|c|² + 2 n_2 (c·a_3) + n_2² |a_3|²``.
    Returns ``(pair (K,), n (K, 3), squared distance (K,))``.
    """
    w = width[pairs]
    owner, rank = _expand(w[:, 0] * w[:, 1])
    pair = pairs[owner]
    n0 = torch.div(rank, w[owner, 1], rounding_mode="floor") + lo[pair, 0]
    n1 = rank % w[owner, 1] + lo[pair, 1]
    L = lattice_of_pair[pair]  # (C, 3, 3) rows a1, a2, a3
    d = delta[pair]
    coeff = torch.stack([d[:, 0] + n0.to(d.dtype), d[:, 1] + n1.to(d.dtype), d[:, 2]], dim=1)
    c = torch.einsum("ck,ckd->cd", coeff, L)
    a3 = L[:, 2]
    A = (a3 * a3).sum(-1)
    b = (c * a3).sum(-1)
    cc = (c * c).sum(-1)
    r2 = radius * radius
    disc = b * b - A * (cc - r2)
    root = torch.sqrt(disc.clamp(min=0))
    n2_lo = torch.ceil((-b - root) / A - 1e-9).long()
    n2_hi = torch.floor((-b + root) / A + 1e-9).long()
    counts = torch.where(disc >= 0, (n2_hi - n2_lo + 1).clamp(min=0), torch.zeros_like(n2_lo))
    col, k = _expand(counts)
    n2 = n2_lo[col] + k
    n2f = n2.to(d.dtype)
    dist2 = cc[col] + 2.0 * n2f * b[col] + n2f * n2f * A[col]
    n0c, n1c = n0[col], n1[col]
    ok = dist2 < r2
    ok &= ~same_atom[pair[col]] | (n0c != 0) | (n1c != 0) | (n2 != 0)
    keep = ok.nonzero(as_tuple=True)[0]
    col = col[keep]
    return pair[col], torch.stack([n0c[keep], n1c[keep], n2[keep]], dim=1), dist2[keep]
