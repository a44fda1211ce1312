"""Peak broadening onto a fixed 2θ grid (area-normalised profiles), batched.

Grid: ``x_j = x_0 + j·Δ`` (degrees), ``j = 0..G-1``.  Peak ``p`` at ``c_p`` with integrated
intensity ``I_p`` and full width ``H_p`` (degrees) contributes ``I_p · φ(x - c_p; H_p)``:

* Gaussian    ``φ_G = sqrt(4 ln2/π)/H · exp(-4 ln2 (x-c)²/H²)``
* Lorentzian  ``φ_L = (2/(πH)) / (1 + 4 (x-c)²/H²)``
* pseudo-Voigt ``φ = η φ_L + (1-η) φ_G`` (same H)

Width: ``H² = fwhm² + H_S²`` with the Scherrer width ``H_S = K λ / (L cos θ)`` (radians,
converted to degrees) when a crystallite size ``L`` is given.  Profiles are evaluated only
within ``± window·H`` of each peak and scattered into the grid (cost ∝ peaks × window).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

__all__ = ["broaden", "grid", "peak_widths", "profile_values"]

_G = math.sqrt(4.0 * math.log(2.0) / math.pi)
_LN2x4 = 4.0 * math.log(2.0)


def grid(
    two_theta_min: float, step: float, num_points: int, *, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """(G,) grid ``x_0 + j Δ`` in degrees."""
    return two_theta_min + step * torch.arange(num_points, dtype=dtype, device=device)


def peak_widths(
    two_theta: torch.Tensor,
    fwhm: torch.Tensor | float,
    wavelength: float,
    crystallite_size_nm: float | None,
    scherrer_constant: float = 0.9,
) -> torch.Tensor:
    """FWHM H (B, P) in degrees; ``fwhm`` is a float or a (B,) per-pattern instrumental width."""
    inst = torch.as_tensor(fwhm, dtype=two_theta.dtype, device=two_theta.device)
    inst = inst[:, None] if inst.dim() == 1 else inst
    h2 = (inst * inst).expand_as(two_theta)
    if crystallite_size_nm is not None:
        theta = torch.deg2rad(two_theta) / 2.0
        size_a = 10.0 * crystallite_size_nm
        hs = torch.rad2deg(scherrer_constant * wavelength / (size_a * torch.cos(theta)))
        h2 = h2 + hs * hs
    return torch.sqrt(h2)


def profile_values(
    dx: torch.Tensor, width: torch.Tensor, shape: Literal["gaussian", "lorentzian", "pseudo_voigt"], eta: float
) -> torch.Tensor:
    """Area-normalised profile φ(dx; H) in deg⁻¹ (broadcasting ``dx`` and ``width``)."""
    inv = 1.0 / width
    u = (dx * inv) ** 2
    if shape == "gaussian":
        return (_G * inv) * torch.exp(-_LN2x4 * u)
    lor = ((2.0 / math.pi) * inv) / (1.0 + 4.0 * u)
    if shape == "lorentzian":
        return lor
    return eta * lor + ((1.0 - eta) * _G * inv) * torch.exp(-_LN2x4 * u)


def broaden(
    two_theta: torch.Tensor,
    intensity: torch.Tensor,
    mask: torch.Tensor,
    width: torch.Tensor,
    two_theta_min: float,
    step: float,
    num_points: int,
    shape: Literal["gaussian", "lorentzian", "pseudo_voigt"] = "gaussian",
    eta: float = 0.5,
    window: float = 3.0,
) -> torch.Tensor:
    """Patterns (B, G): ``y(x_j) = Σ_p I_p φ(x_j - c_p; H_p)`` over peaks with ``mask``.

    ``two_theta``, ``intensity``, ``width`` (B, P); positions and widths in degrees.  Each
    profile is evaluated on the ``2W + 1`` grid points nearest its centre, ``W`` covering
    ``window`` FWHM of the broadest peak of the batch.
    """
    b, p = two_theta.shape
    out = intensity.new_zeros((b, num_points))
    if p == 0 or b == 0 or not bool(mask.any()):
        return out
    wmax = float(torch.where(mask, width, torch.zeros_like(width)).max())
    half = min(math.ceil(window * wmax / step), num_points)
    offsets = torch.arange(-half, half + 1, device=two_theta.device)  # (W,)
    pos = (two_theta - two_theta_min) / step  # (B, P) in grid units
    center = torch.round(pos)
    dx = (offsets.to(pos.dtype) - (pos - center)[..., None]) * step  # (B, P, W) degrees from the peak
    weight = torch.where(mask, intensity, torch.zeros_like(intensity))[..., None]
    vals = profile_values(dx, width[..., None], shape, eta) * weight
    j = center.long()[..., None] + offsets  # (B, P, W)
    vals = vals * ((j >= 0) & (j < num_points)).to(vals.dtype)
    flat = (j.clamp(0, num_points - 1) + num_points * torch.arange(b, device=j.device)[:, None, None]).reshape(-1)
    return out.reshape(-1).index_add_(0, flat, vals.reshape(-1)).reshape(b, num_points)
