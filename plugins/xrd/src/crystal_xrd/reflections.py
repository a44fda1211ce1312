"""Enumeration of reciprocal-lattice points inside the diffraction shell, batched.

For lattice rows ``A`` (B, 3, 3) the reciprocal metric is ``G* = (A Aᵀ)⁻¹`` and a point
``h = (h, k, l)`` has ``|g|² = hᵀ G* h`` (Å⁻², crystallographic convention without 2π).
Bragg: ``sin θ = λ |g| / 2``.  Since ``|h_i| = |g · a_i| ≤ |g| |a_i|``, every point with
``|g| ≤ g_max`` lies in the box ``|h_i| ≤ floor(g_max |a_i|)``.

Only one point of each Friedel pair ``±h`` is enumerated (``h`` lexicographically
positive); intensities of the pair are equal because scattering factors are real.
"""

from __future__ import annotations

import math

import torch

__all__ = ["friedel_half_box", "g_limits", "index_bounds", "reflections_in_shell"]


def g_limits(two_theta_min: float, two_theta_max: float, wavelength: float) -> tuple[float, float]:
    """``(g_min, g_max)`` in Å⁻¹ for a 2θ range in degrees: ``g = 2 sin(2θ/2) / λ``."""
    lo = 2.0 * math.sin(math.radians(two_theta_min) / 2.0) / wavelength
    hi = 2.0 * math.sin(math.radians(two_theta_max) / 2.0) / wavelength
    return lo, hi


def index_bounds(lattices: torch.Tensor, g_max: float) -> torch.Tensor:
    """(B, 3) long: ``floor(g_max |a_i|)``, the largest |index| along each axis."""
    lengths = torch.linalg.norm(lattices.to(torch.float64), dim=-1)  # (B, 3)
    return torch.floor(lengths * g_max + 1e-9).long()


def friedel_half_box(bounds: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(M, 3) long: indices with ``|h_i| ≤ bounds_i`` in the positive Friedel half (no 000)."""
    hb, kb, lb = (int(v) for v in bounds.tolist())
    h = torch.arange(0, hb + 1, device=device)
    k = torch.arange(-kb, kb + 1, device=device)
    l_ = torch.arange(-lb, lb + 1, device=device)
    grid = torch.cartesian_prod(h, k, l_).reshape(-1, 3)
    hh, kk, ll = grid.unbind(-1)
    half = (hh > 0) | ((hh == 0) & (kk > 0)) | ((hh == 0) & (kk == 0) & (ll > 0))
    return grid[half]


def reflections_in_shell(
    lattices: torch.Tensor, g_min: float, g_max: float, bounds: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reciprocal points with ``g_min ≤ |g| ≤ g_max`` for each crystal, padded.

    ``lattices`` (B, 3, 3) rows in Å.  Returns ``hkl`` (B, K, 3) long, ``g2`` (B, K) float64
    (|g|² in Å⁻²) and ``valid`` (B, K) bool, with ``K`` the largest count in the batch.
    """
    device = lattices.device
    if bounds is None:
        bounds = index_bounds(lattices, g_max)
    box = friedel_half_box(bounds.max(dim=0).values, device)  # (M, 3)
    lat = lattices.to(torch.float64)
    metric = torch.linalg.inv(lat @ lat.transpose(1, 2))  # (B, 3, 3) G*
    boxf = box.to(torch.float64)
    g2 = torch.einsum("mi,bij,mj->bm", boxf, metric, boxf)  # (B, M)
    tol = 1e-10 * max(g_max * g_max, 1.0)
    inside = (g2 <= g_max * g_max + tol) & (g2 >= g_min * g_min - tol)
    count = inside.sum(dim=1)
    k = int(count.max()) if count.numel() else 0
    order = torch.argsort((~inside).to(torch.int8), dim=1, stable=True)[:, :k]  # (B, K)
    return box[order], g2.gather(1, order), inside.gather(1, order)
