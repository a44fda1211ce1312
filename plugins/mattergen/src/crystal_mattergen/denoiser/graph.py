"""The periodic interaction graph of MatterGen's GemNet-T denoiser, built on the fly.

Follows the conventions of microsoft/mattergen (``radius_graph_pbc`` of the OCP code base and
``GemNetT.generate_interaction_graph``), written independently:

1. all pairs (i, j, image n) with ``0 < |x_j + n·L - x_i| <= cutoff``, images ``n`` in a box of
   ``ceil(cutoff / plane spacing)`` cells per lattice direction (the batch's maximum, at most
   ``max_cell_images_per_dim``), candidates enumerated centre-atom-major, then neighbour, then
   image (``itertools.product`` order of -r..r per axis);
2. at most ``max_neighbors`` nearest neighbours per centre atom (ties broken as ``torch.sort``);
3. the edge list is made symmetric: of each pair of counter-edges only the one with
   ``j < i`` (or, for an atom and its own image, the image that comes "earlier") is kept,
   and its reverse is appended, per crystal ``[kept..., reversed...]``;
4. ``id_swap`` maps every edge to its reverse; triplets ``b→a←c`` pair each edge ``c→a``
   with all other edges ending in ``a``.

Units: Å. ``V_st`` is the unit vector of ``x_i - (x_j + n·L)`` (from the neighbour image
towards the centre), ``D_st`` its length, exactly as the reference uses them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["InteractionGraph", "build_interaction_graph", "radius_graph_pbc"]


def _segment_sum(values: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    seg = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)
    return torch.zeros(counts.numel(), dtype=values.dtype, device=values.device).index_add_(0, seg, values)


def radius_graph_pbc(
    cart: torch.Tensor,
    lattice: torch.Tensor,
    num_atoms: torch.Tensor,
    cutoff: float,
    max_neighbors: int,
    max_cell_images_per_dim: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Periodic radius graph.

    Returns ``edge_index`` (2, E) = (neighbour j, centre i), ``images`` (E, 3) float (the cell
    shift ``n`` of the neighbour) and ``edges_per_crystal`` (B,) long. Edges are sorted by centre atom.
    """
    device = cart.device
    num_atoms = num_atoms.long()
    n_sq = num_atoms**2
    atom_offset = torch.cumsum(num_atoms, 0) - num_atoms
    pair_offset = torch.cumsum(n_sq, 0) - n_sq
    n_exp = torch.repeat_interleave(num_atoms, n_sq)
    local = torch.arange(int(n_sq.sum()), device=device) - torch.repeat_interleave(pair_offset, n_sq)
    base = torch.repeat_interleave(atom_offset, n_sq)
    index1 = torch.div(local, n_exp, rounding_mode="floor") + base  # centre
    index2 = local % n_exp + base  # neighbour

    # number of images needed along each lattice vector: cutoff / (distance between lattice planes)
    a1, a2, a3 = lattice[:, 0], lattice[:, 1], lattice[:, 2]
    cross23 = torch.cross(a2, a3, dim=-1)
    vol = torch.sum(a1 * cross23, dim=-1, keepdim=True)
    reps = []
    for cross in (cross23, torch.cross(a3, a1, dim=-1), torch.cross(a1, a2, dim=-1)):
        rep = torch.ceil(cutoff * torch.norm(cross / vol, dim=-1))
        reps.append(min(int(rep.max()), max_cell_images_per_dim))
    axes = [torch.arange(-r, r + 1, device=device, dtype=cart.dtype) for r in reps]
    shifts = torch.cartesian_prod(*axes)  # (C, 3)
    n_cells = shifts.shape[0]

    shift_cart = torch.einsum("ck,bkx->bcx", shifts, lattice)  # (B, C, 3) = n·L
    shift_pair = torch.repeat_interleave(shift_cart, n_sq, dim=0)  # (P, C, 3)
    p1 = cart[index1][:, None, :]
    p2 = cart[index2][:, None, :] + shift_pair
    d2 = torch.sum((p1 - p2) ** 2, dim=-1).reshape(-1)  # (P*C,)
    mask = (d2 <= cutoff * cutoff) & (d2 > 1e-4)
    index1 = index1.repeat_interleave(n_cells)[mask]
    index2 = index2.repeat_interleave(n_cells)[mask]
    images = shifts.repeat(n_sq.sum().item(), 1)[mask]
    d2 = d2[mask]

    # keep the max_neighbors nearest neighbours of every centre atom
    total_atoms = int(num_atoms.sum())
    n_nbr = torch.bincount(index1, minlength=total_atoms)
    n_nbr_kept = n_nbr.clamp(max=max_neighbors)
    per_crystal = _segment_sum(n_nbr_kept, num_atoms)
    max_nbr = int(n_nbr.max()) if n_nbr.numel() else 0
    if max_neighbors > 0 and max_nbr > max_neighbors:
        start = torch.cumsum(n_nbr, 0) - n_nbr
        slot = index1 * max_nbr + torch.arange(index1.numel(), device=device) - torch.repeat_interleave(start, n_nbr)
        table = torch.full((total_atoms * max_nbr,), float("inf"), device=device, dtype=d2.dtype)
        table.index_copy_(0, slot, d2)
        table, order = torch.sort(table.view(total_atoms, max_nbr), dim=1)
        order = (order[:, :max_neighbors] + start.view(-1, 1))[torch.isfinite(table[:, :max_neighbors])]
        keep = torch.zeros(index1.numel(), dtype=torch.bool, device=device)
        keep[order] = True
        index1, index2, images = index1[keep], index2[keep], images[keep]
    return torch.stack([index2, index1]), images, per_crystal


@dataclass
class InteractionGraph:
    """Symmetric periodic graph with triplets (see the module docstring)."""

    edge_index: torch.Tensor  # (2, E) (source s = neighbour, target t = centre)
    images: torch.Tensor  # (E, 3) cell shift of the source
    edges_per_crystal: torch.Tensor  # (B,)
    distance: torch.Tensor  # (E,) Å
    unit_vec: torch.Tensor  # (E, 3) V_st
    id_swap: torch.Tensor  # (E,)
    id3_ba: torch.Tensor  # (T,)
    id3_ca: torch.Tensor  # (T,)
    id3_ragged: torch.Tensor  # (T,)


def _symmetrize(
    edge_index: torch.Tensor, images: torch.Tensor, per_crystal: torch.Tensor, dist: torch.Tensor, vec: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    src, dst = edge_index
    earlier = (
        (images[:, 0] < 0)
        | ((images[:, 0] == 0) & (images[:, 1] < 0))
        | ((images[:, 0] == 0) & (images[:, 1] == 0) & (images[:, 2] < 0))
    )
    keep = (src < dst) | ((src == dst) & earlier)
    crystal_of_edge = torch.repeat_interleave(torch.arange(per_crystal.numel(), device=src.device), per_crystal)
    kept_per_crystal = torch.bincount(crystal_of_edge[keep], minlength=per_crystal.numel())
    m = int(keep.sum())
    # per crystal: its kept edges, then their reverses
    starts = torch.cumsum(kept_per_crystal, 0) - kept_per_crystal
    pos = torch.arange(m, device=src.device)
    crystal_kept = torch.repeat_interleave(torch.arange(per_crystal.numel(), device=src.device), kept_per_crystal)
    out_start = 2 * starts
    first = out_start[crystal_kept] + (pos - starts[crystal_kept])
    second = first + kept_per_crystal[crystal_kept]
    order = torch.empty(2 * m, dtype=torch.long, device=src.device)
    order[first] = pos
    order[second] = pos + m

    def cat(t: torch.Tensor, sign: float) -> torch.Tensor:
        kept = t[keep]
        return torch.cat([kept, sign * kept])[order]

    ei_kept = edge_index[:, keep]
    new_index = torch.cat([ei_kept, ei_kept.flip(0)], dim=1)[:, order]
    id_swap = torch.empty(2 * m, dtype=torch.long, device=src.device)
    id_swap[first] = second
    id_swap[second] = first
    return new_index, cat(images, -1.0), 2 * kept_per_crystal, cat(dist, 1.0), cat(vec, -1.0), id_swap


def _triplets(edge_index: torch.Tensor, n_atoms: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    src, dst = edge_index
    n_edges = src.numel()
    # edges grouped by target atom, ordered by source atom inside a group (stable)
    key = dst * n_atoms + src
    by_target = key.argsort()  # same call as torch_sparse (order inside a group only changes rounding)
    in_deg = torch.bincount(dst, minlength=n_atoms)
    start = torch.cumsum(in_deg, 0) - in_deg
    reps = in_deg[dst]  # every edge c->a meets all edges into a
    id3_ca = torch.repeat_interleave(torch.arange(n_edges, device=src.device), reps)
    ragged = torch.arange(int(reps.sum()), device=src.device) - torch.repeat_interleave(
        torch.cumsum(reps, 0) - reps, reps
    )
    id3_ba = by_target[start[dst][id3_ca] + ragged]
    mask = id3_ba != id3_ca
    id3_ba, id3_ca = id3_ba[mask], id3_ca[mask]
    counts = torch.bincount(id3_ca, minlength=n_edges)
    id3_ragged = torch.arange(id3_ca.numel(), device=src.device) - torch.repeat_interleave(
        torch.cumsum(counts, 0) - counts, counts
    )
    return id3_ba, id3_ca, id3_ragged


def build_interaction_graph(
    cart: torch.Tensor,
    lattice: torch.Tensor,
    num_atoms: torch.Tensor,
    cutoff: float,
    max_neighbors: int,
    max_cell_images_per_dim: int,
) -> InteractionGraph:
    """Radius graph, distances/directions, symmetrisation, ``id_swap`` and triplets."""
    edge_index, images, per_crystal = radius_graph_pbc(
        cart, lattice, num_atoms, cutoff, max_neighbors, max_cell_images_per_dim
    )
    j, i = edge_index
    lat_e = torch.repeat_interleave(lattice, per_crystal, dim=0)
    vec = cart[j] - cart[i] + torch.einsum("ek,ekx->ex", images, lat_e)  # neighbour image - centre
    dist = vec.norm(dim=-1)
    unit = -vec / dist[:, None]
    edge_index, images, per_crystal, dist, unit, id_swap = _symmetrize(edge_index, images, per_crystal, dist, unit)
    id3_ba, id3_ca, id3_ragged = _triplets(edge_index, cart.shape[0])
    return InteractionGraph(edge_index, images, per_crystal, dist, unit, id_swap, id3_ba, id3_ca, id3_ragged)
