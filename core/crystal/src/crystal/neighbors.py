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

import itertools
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from crystal import _neighbors_vesin
from crystal.batch import CrystalBatch
from crystal.errors import StructureError

__all__ = ["DEFAULT_MAX_MEAN_NEIGHBORS", "Backend", "NeighborLimitError", "RadiusGraph", "nearest_k", "radius_graph"]

Backend = Literal["auto", "vesin", "pairs"]
_BACKENDS: tuple[str, ...] = get_args(Backend)
_MARGIN = 1e-6  # relative widening of every search radius (plus 1e-9 Å); the exact test follows
_BAND = 1e-9  # backend distances within this relative band of the radius are recomputed exactly
_VESIN_MIN_MEAN_ATOMS = 8  # "auto" uses vesin (CPU, full graph) from this many atoms per crystal on


#: default bound on the mean number of neighbours per atom (see :func:`radius_graph`): a density of
#: 0.78 atoms/Å³ at 8.5 Å, 3.8 atoms/Å³ at 5 Å, against 0.18 atoms/Å³ for diamond, the densest solid
#: (~390 neighbours within 8 Å)
DEFAULT_MAX_MEAN_NEIGHBORS = 2000.0


class NeighborLimitError(StructureError):
    """A crystal would have more neighbours per atom than :func:`radius_graph` allows.

    ``indices`` are the offending crystals' positions in the batch, ``ids`` their ids.
    """

    def __init__(self, message: str, indices: list[int], ids: list[str]) -> None:
        super().__init__(message)
        self.indices = indices
        self.ids = ids


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


def nearest_k(edge_index: torch.Tensor, distances: torch.Tensor, k: int) -> torch.Tensor:
    """(E',) indices of the ``k`` nearest edges of every source, ordered by (source, rank).

    Use it to cut an edge list to ``k`` neighbours per atom, e.g. the edges of a
    :class:`RadiusGraph`: ``keep = nearest_k(g.edge_index, g.distances, 12)``. Edges must
    come grouped by source in (source, neighbour, shift) lexicographic order (as enumerated
    by :func:`radius_graph`); ties are broken by that order, so the result is the
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
    backend: Backend = "auto",
    max_mean_neighbors: float | None = DEFAULT_MAX_MEAN_NEIGHBORS,
) -> RadiusGraph:
    """All neighbours within ``cutoff`` Å of every atom of the batch.

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

    ``backend`` chooses the search, never the result: ``"pairs"`` is the vectorised
    enumeration above (no per-crystal loop; any device); ``"vesin"`` calls the cell lists of
    `vesin-torch <https://github.com/Luthaf/vesin>`_ once per crystal and sorts their edges
    into the same order; ``"auto"`` takes the faster one as measured
    (``benchmarks/graphs.py``): ``vesin`` on the CPU for the full graph (no
    ``max_neighbors``) of crystals with 8 or more atoms on average when vesin-torch loads,
    ``pairs`` otherwise. Every backend applies
    the same exact distance test (``|(f_j + n - f_i) L| < cutoff`` in float64, wrapped
    coordinates) to its candidates, so edges, order and shifts are identical.

    ``max_mean_neighbors`` bounds the work and memory: before any search, the mean number of
    neighbours per atom of every crystal is estimated from its density,
    ``n/V · 4/3 π cutoff³``, and a crystal above the bound (or with a zero or non-finite
    volume) raises :class:`NeighborLimitError` naming it, instead of allocating an unbounded
    number of edges (a cell collapsing during a relaxation with a wrong stress reaches
    millions of edges per atom). The default, 2000, is a density of 0.78 atoms/Å³ at 8.5 Å
    (3.8 atoms/Å³ at 5 Å), four times that of diamond, the densest solid; ``None`` lifts it.

    Returns a :class:`RadiusGraph`: ``edge_index`` (2, E) long (source ``i``, neighbour ``j``;
    both directions of every pair, grouped by source), ``shifts`` (E, 3) long image offsets,
    ``vectors`` (E, 3) ``r_j + n L - r_i`` in Å and ``distances`` (E,) Å, in the batch's
    dtype and on its device. ``vectors`` and ``distances`` are differentiable with respect to
    ``batch.frac_coords`` and ``batch.lattices`` (the edge set itself is not: it is chosen
    without autograd), so energies built on them give forces and stress by autograd.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"radius_graph: unknown backend {backend!r}; expected one of {', '.join(_BACKENDS)}")
    if backend == "vesin" and not _neighbors_vesin.available():
        raise ImportError(
            "radius_graph(backend='vesin') needs vesin-torch with a build for this torch "
            f"({torch.__version__}): pip install vesin-torch"
        )
    use = _resolve_backend(batch, max_neighbors, backend)
    dtype = batch.dtype
    if batch.num_nodes == 0:
        return _empty(batch)
    if max_mean_neighbors is not None:
        _check_density(batch, cutoff, max_mean_neighbors)
    with torch.no_grad():
        if max_neighbors is None:
            i, j, n, dist = _search(batch, cutoff, max_pairs_per_chunk, use)
        else:
            i, j, n, dist = _search_knn(batch, cutoff, max_neighbors, max_pairs_per_chunk, use)
            keep = nearest_k(torch.stack([i, j]), dist, max_neighbors)  # choose before the recomputation
            i, j, n = i[keep], j[keep], n[keep]
        if i.numel() == 0:
            return _empty(batch)
        wrap = torch.floor(batch.frac_coords.detach())
        if bool((wrap != 0).any()):
            wrap_l = wrap.long()
            shifts = n - wrap_l[j] + wrap_l[i]  # offsets for the unwrapped input
        else:
            shifts = n

    # differentiable recomputation on the survivors only
    frac = batch.frac_coords[j] - batch.frac_coords[i] + shifts.to(dtype)  # (E, 3)
    vectors = _cartesian(batch, i, frac)
    return RadiusGraph(torch.stack([i, j]), shifts, vectors, vectors.norm(dim=-1))


def _check_density(batch: CrystalBatch, cutoff: float, limit: float) -> None:
    """Raise :class:`NeighborLimitError` for the crystals whose estimated mean number of
    neighbours per atom, ``n/V · 4/3 π cutoff³``, exceeds ``limit`` (or whose volume is 0/NaN)."""
    with torch.no_grad():
        volume = torch.linalg.det(batch.lattices.detach().to(torch.float64)).abs()
        density = batch.num_atoms.to(torch.float64) / volume
        estimate = density * (4.0 / 3.0 * torch.pi * float(cutoff) ** 3)
        bad = ~(estimate <= limit)  # NaN and inf count as too many
    if not bool(bad.any()):
        return
    indices = bad.nonzero(as_tuple=True)[0].tolist()
    ids = [batch.ids[k] for k in indices]
    k = indices[0]
    shown = ", ".join(repr(i) for i in ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
    raise NeighborLimitError(
        f"radius_graph: crystal(s) {shown} would have ~{float(estimate[k]):.4g} neighbours per atom within "
        f"{float(cutoff):g} Å ({int(batch.num_atoms[k])} atoms in {float(volume[k]):.4g} Å³, "
        f"{float(density[k]):.3g} atoms/Å³), more than max_mean_neighbors={limit:g}: a collapsed or degenerate "
        "cell (the densest solid, diamond, holds 0.18 atoms/Å³); check the structure (or the stress of the "
        "potential that relaxed it), or pass max_mean_neighbors=None to lift the bound",
        indices,
        ids,
    )


def _cartesian(batch: CrystalBatch, i: torch.Tensor, frac: torch.Tensor) -> torch.Tensor:
    """(E, 3) ``frac L`` of edges grouped by ascending source ``i`` (so by crystal), with autograd.

    On the CPU one ``(E_b, 3) @ (3, 3)`` product per crystal (a loop over crystals, much
    cheaper there than gathering an (E, 3, 3) lattice per edge); elsewhere the gather, which
    needs no loop.
    """
    if batch.device.type != "cpu":
        return torch.einsum("ec,ecd->ed", frac, batch.lattices[batch.batch[i]])
    bounds = torch.searchsorted(i, batch.ptr).tolist()
    lattices = batch.lattices
    parts = [frac[a:b] @ lattices[k] for k, (a, b) in enumerate(itertools.pairwise(bounds)) if b > a]
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def _resolve_backend(batch: CrystalBatch, max_neighbors: int | None, backend: str) -> str:
    """The backend ``"auto"`` stands for, from measurements at 8 Å on one CPU thread
    (``benchmarks/graphs.py`` and random cells of 2-48 atoms): vesin's per-crystal call
    costs more than the vectorised pair enumeration for small cells (Perov-5, 5 atoms: pairs
    ~1.3x faster), about the same at 8-12 atoms (Carbon-24, 9.2 atoms on average: vesin
    ~1.05x faster) and less for larger cells (24 atoms: ~1.4x, 48 atoms: ~1.9x). With
    ``max_neighbors`` the pair search (a short radius first) is faster everywhere (Carbon-24:
    ~1.2x); on GPUs a loop over crystals is not used."""
    if backend != "auto":
        return backend
    if (
        batch.device.type == "cpu"
        and max_neighbors is None
        and batch.num_nodes >= _VESIN_MIN_MEAN_ATOMS * len(batch)
        and _neighbors_vesin.available()
    ):
        return "vesin"
    return "pairs"


def _search(
    batch: CrystalBatch,
    cutoff: float | torch.Tensor,
    max_pairs_per_chunk: int,
    backend: str = "pairs",
    *,
    exact: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (i, j, n) with ``|(f_j + n - f_i) L| < cutoff`` for wrapped coordinates ``f``
    (no autograd), grouped by source ``i`` in (i, j, n) lexicographic order.

    ``cutoff`` is a number or a ``(B,)`` tensor (one radius per crystal). Returns ``i, j``
    (E,), image offsets ``n`` (E, 3) with respect to the wrapped coordinates, and distances
    (E,) float64: the backend's own (to within ~1e-12 relative) unless ``exact``, then all
    recomputed by :func:`_exact_distances` (needed where distances are compared, as in
    :func:`nearest_k`). The edge set is the same for every ``backend``: candidates come from
    a search radius widened by ``_MARGIN``, and edges whose backend distance lies within
    ``_BAND`` of the radius are decided with :func:`_exact_distances`.
    """
    device = batch.device
    frac = batch.frac_coords.detach()
    frac = (frac - torch.floor(frac)).to(torch.float64)  # (N, 3) wrapped to [0, 1]
    lattices = batch.lattices.detach().to(torch.float64)
    radius = torch.as_tensor(cutoff, dtype=torch.float64, device=device).expand(len(batch))  # (B,)
    if backend == "vesin":
        i, j, n, dist, counts = _candidates_vesin(batch, frac, lattices, radius)
    else:
        i, j, n, dist = _candidates_pairs(batch, frac, lattices, radius, max_pairs_per_chunk)
        counts = None
    if i.numel() == 0:
        return i, j, n.long(), dist
    # one radius for all: a number, no per-edge gathers
    r_edge: float | torch.Tensor = float(cutoff) if not isinstance(cutoff, torch.Tensor) else radius[batch.batch[i]]
    keep: torch.Tensor | None = None
    if exact:
        dist = _exact_distances(frac, lattices, batch.batch[i], i, j, n)
        keep = dist < r_edge
    else:
        unsure = dist >= r_edge * (1 - _BAND)
        if bool(unsure.any()):
            idx = unsure.nonzero(as_tuple=True)[0]
            dist = dist.clone()
            dist[idx] = _exact_distances(frac, lattices, batch.batch[i[idx]], i[idx], j[idx], n[idx])
            keep = dist < r_edge
    if keep is not None and not bool(keep.all()):
        idx = keep.nonzero(as_tuple=True)[0]
        i, j, n, dist = i[idx], j[idx], n[idx], dist[idx]
        if counts is not None:
            counts = torch.bincount(batch.batch[i], minlength=len(batch))
    if counts is not None:  # vesin: its order within a crystal -> (i, j, n)
        order = _canonical_order(batch, i, j, n, counts)
        return i[order], j[order], n[order].long(), dist[order]
    return i, j, n, dist


def _canonical_order(
    batch: CrystalBatch,
    i: torch.Tensor,
    j: torch.Tensor,
    n: torch.Tensor,
    counts: torch.Tensor,
    *,
    int32_keys_below: int = 2**31,
    int64_keys_below: int = 2**62,
) -> torch.Tensor:
    """The permutation that sorts edges grouped by crystal into (i, j, n) lexicographic order.

    One sort of the key ``(i · w + j_local) · K + code(n)`` (``w`` the largest crystal, ``K``
    the number of image offsets in the bounding box of ``n``), in int32 when it fits
    (twice as fast as int64 on the CPU), else int64, else two stable sorts.
    """
    lo = n.amin(dim=0)
    span = (n.amax(dim=0) - lo + 1).tolist()
    m = (n - lo).long()
    code = (m[:, 0] * span[1] + m[:, 1]) * span[2] + m[:, 2]
    k = span[0] * span[1] * span[2]
    width = int(batch.num_atoms.max())
    offset = torch.repeat_interleave(batch.ptr[:-1], counts)  # (E,) first atom of the edge's crystal
    if batch.num_nodes * width * k < int32_keys_below:
        key = (i.int() * width + (j - offset).int()) * k + code.int()
        return torch.sort(key).indices  # keys are unique
    if batch.num_nodes * width * k < int64_keys_below:
        return torch.sort((i * width + (j - offset)) * k + code).indices
    order = torch.sort(code, stable=True).indices
    return order[torch.sort((i * width + (j - offset))[order], stable=True).indices]


def _exact_distances(
    frac: torch.Tensor, lattices: torch.Tensor, crystal: torch.Tensor, i: torch.Tensor, j: torch.Tensor, n: torch.Tensor
) -> torch.Tensor:
    """(E,) ``|(f_j + n - f_i) L|`` in float64 from wrapped ``frac`` (N, 3) and ``lattices``
    (B, 3, 3) float64: the one formula that decides edges at the cutoff for every backend."""
    d = frac[j] - frac[i] + n.to(torch.float64)
    dist: torch.Tensor = torch.bmm(d.unsqueeze(1), lattices[crystal]).squeeze(1).norm(dim=1)
    return dist


def _candidates_vesin(
    batch: CrystalBatch, frac: torch.Tensor, lattices: torch.Tensor, radius: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """vesin's edges within the widened radius as batch indices ``i, j``, offsets ``n``
    (int32), distances and edges per crystal; grouped by crystal in vesin's order."""
    search = (radius * (1 + _MARGIN) + 1e-9).tolist()
    ptr = batch.ptr
    pairs, n, dist, counts = _neighbors_vesin.candidates(frac, lattices, batch.batch, ptr.tolist(), search)
    offset = torch.repeat_interleave(ptr[:-1], counts)[:, None]  # (E, 1) first atom of the edge's crystal
    pairs = pairs + offset
    return pairs[:, 0], pairs[:, 1], n, dist, counts


def _candidates_pairs(
    batch: CrystalBatch, frac: torch.Tensor, lattices: torch.Tensor, radius: torch.Tensor, max_pairs_per_chunk: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (pair, image) candidate within the widened radius, in (i, j, n) order (see
    :func:`radius_graph`): no per-crystal loop."""
    device = batch.device
    recip_norm = torch.linalg.inv(lattices).norm(dim=1)  # (B, 3) = 1 / plane spacing
    reach = (radius * (1 + _MARGIN) + 1e-9)[:, None] * recip_norm  # (B, 3) safety margin; exact filter after

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
    delta = frac[pj] - frac[pi]  # (P, 3) float64
    h = reach[crystal_of_pair]
    lo = torch.ceil(-h - delta).long()
    hi = torch.floor(h - delta).long()
    width = (hi - lo + 1).clamp(min=0)  # (P, 3)
    cand = width.prod(dim=1)  # (P,) candidate images per pair (bounding box)
    r_pair = radius[crystal_of_pair]
    r2_search = (r_pair * (1 + _MARGIN) + 1e-9) ** 2

    # chunk pairs so that at most max_pairs_per_chunk candidates exist at once
    ends = torch.cumsum(cand, 0)
    chunk_id = torch.div(ends - 1, max(1, max_pairs_per_chunk), rounding_mode="floor").clamp(min=0)
    bounds = torch.cumsum(torch.bincount(chunk_id), 0).tolist()
    sel_p, sel_n, sel_d = [], [], []
    start = 0
    L_pair = lattices[crystal_of_pair]  # (P, 3, 3)
    same = pi == pj
    for stop in bounds:
        if stop <= start:
            continue
        pair, n, d2 = _sphere_images(
            torch.arange(start, stop, device=device), delta, lo, width, L_pair, same, r2_search
        )
        sel_p.append(pair)
        sel_n.append(n)
        sel_d.append(d2)
        start = stop
    if not sel_p:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty, torch.zeros((0, 3), dtype=torch.long, device=device), torch.zeros(0, device=device)
    pair = torch.cat(sel_p)
    return pi[pair], pj[pair], torch.cat(sel_n), torch.cat(sel_d).clamp(min=0).sqrt()


def _search_knn(
    batch: CrystalBatch, cutoff: float, k: int, max_pairs_per_chunk: int, backend: str = "pairs"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A superset of every atom's ``k`` nearest neighbours within ``cutoff`` (all ties included).

    First a search within a per-crystal radius ``r_0 = min(cutoff, 1.5 (3 k V / 4πN)^{1/3} + 0.5 Å)``
    (a sphere holding about 3k atoms at the crystal's density); an atom with at least ``k``
    neighbours inside ``r_0`` has its ``k`` nearest — and every tie of the k-th — among them.
    Crystals with an atom short of ``k`` are searched again with the full ``cutoff``. Same
    output order as :func:`_search`; every distance exact (:func:`_exact_distances`), so that
    ties are the same for every backend.
    """
    volume = torch.linalg.det(batch.lattices.detach().to(torch.float64)).abs()
    r_k = (3 * k * volume / (4 * torch.pi * batch.num_atoms.to(torch.float64))) ** (1 / 3)
    r0 = (1.5 * r_k + 0.5).clamp(max=cutoff)
    if bool((r0 >= cutoff).all()):
        return _search(batch, cutoff, max_pairs_per_chunk, backend, exact=True)
    i, j, n, dist = _search(batch, r0, max_pairs_per_chunk, backend, exact=True)
    degree = torch.bincount(i, minlength=batch.num_nodes)
    short = (degree < k) & (r0 < cutoff)[batch.batch]
    if not bool(short.any()):
        return i, j, n, dist
    redo = torch.zeros(len(batch), dtype=torch.bool, device=batch.device)
    redo[batch.batch[short]] = True
    keep = (~redo[batch.batch[i]]).nonzero(as_tuple=True)[0]
    redo_idx = redo.nonzero(as_tuple=True)[0]
    sub = batch.select(redo_idx)
    si, sj, sn, sd = _search(sub, cutoff, max_pairs_per_chunk, backend, exact=True)
    to_global = batch._atom_index(redo_idx)  # sub-batch atom -> batch atom
    i = torch.cat([i[keep], to_global[si]])
    j = torch.cat([j[keep], to_global[sj]])
    n = torch.cat([n[keep], sn])
    dist = torch.cat([dist[keep], sd])
    order = torch.sort(i, stable=True).indices  # regroup by source, keeping each source's order
    return i[order], j[order], n[order], dist[order]


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
    r2_pair: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image offsets ``n`` with ``|(Δ + n) L|² < r²`` for ``pairs`` (no self-image ``n = 0``;
    ``r2_pair`` (P,) the squared search radius of each pair).

    ``n_0, n_1`` run over their bounding ranges; for each such column the range of ``n_2``
    is solved exactly from ``|c + n_2 a_3|² < r²`` with ``c = (Δ_0+n_0) a_1 + (Δ_1+n_1) a_2
    + Δ_2 a_3``, so the candidates fill the sphere rather than its bounding box, and the
    distance test needs only per-column scalars: ``|c|² + 2 n_2 (c·a_3) + n_2² |a_3|²``.
    Returns ``(pair (K,), n (K, 3), squared distance (K,))``.
    """
    # per-pair scalars (float64), so that columns need one gather and no 3-vectors:
    # c = β + n0 a1 + n1 a2 with β = Δ L;  c·a3 and |c|² expand into dot products of β, a_k
    L = lattice_of_pair.index_select(0, pairs).to(torch.float64)  # (P', 3, 3)
    beta = torch.einsum("pk,pkd->pd", delta.index_select(0, pairs).to(torch.float64), L)
    a1, a2, a3 = L[:, 0], L[:, 1], L[:, 2]
    scalars = torch.stack(
        [
            (beta * a3).sum(-1), (a1 * a3).sum(-1), (a2 * a3).sum(-1), (beta * beta).sum(-1),
            (a1 * a1).sum(-1), (a2 * a2).sum(-1), (beta * a1).sum(-1), (beta * a2).sum(-1),
            (a1 * a2).sum(-1), (a3 * a3).sum(-1), r2_pair.index_select(0, pairs),
        ],
        dim=1,
    )  # fmt: skip
    w = width.index_select(0, pairs)
    lo_p = lo.index_select(0, pairs)
    owner, rank = _expand(w[:, 0] * w[:, 1])
    w1 = w[:, 1].index_select(0, owner)
    n0 = torch.div(rank, w1, rounding_mode="floor") + lo_p[:, 0].index_select(0, owner)
    n1 = rank % w1 + lo_p[:, 1].index_select(0, owner)
    sc = scalars.index_select(0, owner)  # (C, 11)
    f0, f1 = n0.to(torch.float64), n1.to(torch.float64)
    b = sc[:, 0] + f0 * sc[:, 1] + f1 * sc[:, 2]  # c·a3
    cc = sc[:, 3] + f0 * f0 * sc[:, 4] + f1 * f1 * sc[:, 5] + 2 * (f0 * sc[:, 6] + f1 * sc[:, 7] + f0 * f1 * sc[:, 8])
    A, r2 = sc[:, 9], sc[:, 10]
    disc = b * b - A * (cc - r2)
    root = torch.sqrt(disc.clamp(min=0))
    n2_lo = torch.ceil((-b - root) / A - 1e-9).long()
    n2_hi = torch.floor((-b + root) / A + 1e-9).long()
    counts = torch.where(disc >= 0, (n2_hi - n2_lo + 1).clamp(min=0), torch.zeros_like(n2_lo))
    col, k = _expand(counts)
    ints = torch.stack([owner, n0, n1, n2_lo], dim=1).index_select(0, col)  # (K, 4)
    floats = torch.stack([b, cc, A, r2], dim=1).index_select(0, col)  # (K, 4)
    n2 = ints[:, 3] + k
    n2f = n2.to(torch.float64)
    dist2 = floats[:, 1] + 2.0 * n2f * floats[:, 0] + n2f * n2f * floats[:, 2]
    pair = pairs.index_select(0, ints[:, 0])
    ok = dist2 < floats[:, 3]
    ok &= ~same_atom.index_select(0, pair) | (ints[:, 1] != 0) | (ints[:, 2] != 0) | (n2 != 0)
    keep = ok.nonzero(as_tuple=True)[0]
    n = torch.stack([ints[:, 1], ints[:, 2], n2], dim=1).index_select(0, keep)
    return pair.index_select(0, keep), n, dist2.index_select(0, keep)
