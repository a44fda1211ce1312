"""Pairs within a cutoff in one large periodic crystal, in O(N) time and memory (a cell list).

The unit cell is cut into ``n_k = max(1, floor(1 / (r |b_k|)))`` bins along each lattice
vector (``b_k`` the reciprocal vectors without 2π, ``1/|b_k|`` the spacing of lattice planes),
so that a bin is at least ``r`` thick. Any neighbour of an atom within ``r`` then lies in one of
the bins ``bin_i + o`` of the unwrapped (infinite) lattice with ``|o_k| <= m_k = max(1, ceil(r
|b_k| n_k))`` (``m_k = 1`` unless the cell is thinner than ``r``). Each unwrapped bin is a
wrapped bin plus a lattice translation, so every (pair, image) is visited once. Work and
memory are proportional to ``N`` times the atoms in ``(2m+1)^3`` bins.
"""

from __future__ import annotations

import math

import torch

__all__ = ["cell_list_pairs"]


def cell_list_pairs(
    frac: torch.Tensor, lattice: torch.Tensor, cutoff: float, *, max_candidates: int = 8_000_000
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All ordered pairs ``(i, j, n)`` with ``|(f_j + n - f_i) L| < cutoff`` of one crystal
    (every pair but an atom with itself: overlapping atoms give distance 0).

    ``frac`` (N, 3) fractional coordinates, ``lattice`` (3, 3) rows = lattice vectors (Å).
    Returns ``i`` (E,), ``j`` (E,) and distances (E,) Å (no autograd). Candidates are processed
    in chunks of at most ``max_candidates``.
    """
    device = frac.device
    with torch.no_grad():
        f = (frac - torch.floor(frac)).to(torch.float64)
        lat = lattice.to(torch.float64)
        n_atoms = f.shape[0]
        recip = torch.linalg.inv(lat).norm(dim=0)  # (3,) |b_k| = 1 / plane spacing (columns of L^-1)
        bins = [max(1, math.floor(1.0 / (cutoff * float(recip[k])))) for k in range(3)]
        bins = [min(b, max(1, round(n_atoms ** (1 / 3)) * 4)) for b in bins]  # no more bins than needed
        reach = [max(1, math.ceil(cutoff * float(recip[k]) * bins[k] - 1e-12)) for k in range(3)]
        nb = torch.tensor(bins, device=device)
        cell = torch.minimum(torch.floor(f * nb).long(), nb - 1)  # (N, 3)
        flat = (cell[:, 0] * bins[1] + cell[:, 1]) * bins[2] + cell[:, 2]
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=bins[0] * bins[1] * bins[2])
        starts = torch.cumsum(counts, 0) - counts
        offsets = torch.cartesian_prod(*[torch.arange(-m, m + 1, device=device) for m in reach]).reshape(
            -1, 3
        )  # (O, 3)
        out_i, out_j, out_d = [], [], []
        # chunk over atoms so that candidates stay bounded
        per_atom = offsets.shape[0] * max(1, int(counts.max()))
        step = max(1, max_candidates // per_atom)
        for a0 in range(0, n_atoms, step):
            atoms = torch.arange(a0, min(a0 + step, n_atoms), device=device)
            unwrapped = cell[atoms][:, None, :] + offsets[None, :, :]  # (A, O, 3)
            shift = torch.div(unwrapped, nb, rounding_mode="floor")  # lattice translation of that bin
            wrapped = unwrapped - shift * nb
            target = (wrapped[..., 0] * bins[1] + wrapped[..., 1]) * bins[2] + wrapped[..., 2]  # (A, O)
            cnt = counts[target].reshape(-1)
            src_atom = atoms[:, None].expand_as(target).reshape(-1)
            src_shift = shift.reshape(-1, 3)
            total = int(cnt.sum())
            if total == 0:
                continue
            rep = torch.repeat_interleave(torch.arange(cnt.numel(), device=device), cnt)
            local = torch.arange(total, device=device) - torch.repeat_interleave(torch.cumsum(cnt, 0) - cnt, cnt)
            j = order[starts[target.reshape(-1)][rep] + local]
            i = src_atom[rep]
            vec = (f[j] + src_shift[rep].to(torch.float64) - f[i]) @ lat
            d = vec.norm(dim=1)
            itself = (i == j) & (src_shift[rep] == 0).all(dim=1)  # an atom and itself, not an image
            keep = (d < cutoff) & ~itself
            out_i.append(i[keep])
            out_j.append(j[keep])
            out_d.append(d[keep])
        if not out_i:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return empty, empty, torch.zeros(0, dtype=torch.float64, device=device)
        return torch.cat(out_i), torch.cat(out_j), torch.cat(out_d)
