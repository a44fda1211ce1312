"""The ``vesin`` backend of :func:`crystal.neighbors.radius_graph`: cell lists in C++.

`vesin-torch <https://github.com/Luthaf/vesin>`_ computes the neighbour list of one periodic
system per call (CPU and CUDA). This module calls it once per crystal of a batch on the
wrapped Cartesian positions, with the search radius widened by the same safety margin as the
``pairs`` backend, and returns the candidate edges in vesin's own order; the caller
(:func:`crystal.neighbors._search`) applies the common exact distance test and the canonical
(i, j, n) order, so that every backend returns the same edges.

vesin's shifts ``S`` satisfy ``r_j - r_i + S L`` for the positions it was given, i.e. they
are image offsets with respect to the wrapped fractional coordinates, as the ``pairs``
backend's ``n``.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

__all__ = ["available", "candidates"]


@functools.cache
def available() -> bool:
    """Whether ``vesin_torch`` imports and its compiled library loads with this torch."""
    try:
        import vesin_torch  # noqa: F401
    except Exception:  # ImportError, or OSError/RuntimeError when no build matches this torch
        return False
    return True


def _neighbor_list(radius: float) -> Any:
    import vesin_torch

    return vesin_torch.NeighborList(radius, full_list=True, sorted=False, n_threads=1)


def candidates(
    frac_wrapped: torch.Tensor,
    lattices: torch.Tensor,
    crystal_of_atom: torch.Tensor,
    ptr: list[int],
    radius: list[float],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (i, j, n) with distance below ``radius[b]`` in crystal ``b`` (no self-pair at n = 0).

    ``frac_wrapped`` (N, 3) float64 in [0, 1], ``lattices`` (B, 3, 3) float64 rows (Å),
    ``crystal_of_atom`` (N,) crystal index of every atom, ``ptr`` (B + 1) atom offsets, ``radius`` (B) search radii (Å, margins included). Returns
    ``pairs`` (E, 2) atom indices **within their crystal** (i, j), ``n`` (E, 3) int32 image
    offsets of the wrapped coordinates, distances (E,) float64 Å as vesin computed them and
    ``counts`` (B,) edges per crystal; grouped by crystal, in vesin's order within a crystal.
    """
    device = frac_wrapped.device
    cart = torch.einsum("nk,nkd->nd", frac_wrapped, lattices[crystal_of_atom])  # (N, 3) Å
    periodic = torch.ones(3, dtype=torch.bool, device=device)
    lists: dict[float, Any] = {}
    pairs, shifts, dists, counts = [], [], [], []
    for b, r in enumerate(radius):
        start, stop = ptr[b], ptr[b + 1]
        if stop == start:
            counts.append(0)
            continue
        nl = lists.get(r)
        if nl is None:
            nl = lists[r] = _neighbor_list(r)
        p, s, d = nl.compute(cart[start:stop], lattices[b], periodic, "PSd")
        pairs.append(p)
        shifts.append(s)
        dists.append(d)
        counts.append(int(p.shape[0]))
    count_t = torch.tensor(counts, dtype=torch.long, device=device)
    if not pairs:
        return (
            torch.zeros((0, 2), dtype=torch.long, device=device),
            torch.zeros((0, 3), dtype=torch.int32, device=device),
            torch.zeros(0, dtype=torch.float64, device=device),
            count_t,
        )
    return torch.cat(pairs), torch.cat(shifts), torch.cat(dists), count_t
