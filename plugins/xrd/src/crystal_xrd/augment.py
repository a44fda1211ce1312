"""Training augmentation of simulated powder patterns (seeded, batched).

* Preferred orientation, March–Dollase (Dollase, J. Appl. Cryst. 19, 267 (1986)): the
  intensity of reflection ``h`` is multiplied by
  ``W(α) = (r² cos² α + sin² α / r)^(-3/2)`` where α is the angle between ``g_h`` and the
  preferred-orientation axis ``g_a`` (a reciprocal-lattice direction) and ``r`` the
  March parameter (r < 1 platelets, r > 1 needles, r = 1 random powder).  Applied per
  reflection, before equivalent reflections are merged.
* Lattice strain ε and zero shift δ: ``sin θ' = sin θ / (1 + ε)``, ``2θ'' = 2θ' + δ``.
* Peak-intensity jitter: ``I' = I · exp(σ z)``, z ~ N(0, 1).
* On the grid: a second phase ``y' = (1-w) y + w y_other`` (another crystal of the batch),
  a smooth background ``A · (c₀ + c₁ e^{-t/τ} + c₂ t + c₃ t²)`` on ``t ∈ [0, 1]``,
  and Gaussian noise; all heights relative to the strongest point of the pattern.

Every random number is drawn on the CPU from one ``torch.Generator`` (so a seed gives the
same augmentation on any device) and moved to the batch's device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crystal_xrd.config import XRDAugment

__all__ = ["AugmentDraws", "draw", "grid_augment", "march_dollase", "perturb_positions"]

_AXES = torch.tensor(
    [[h, k, m] for h in (-1, 0, 1) for k in (-1, 0, 1) for m in (-1, 0, 1) if (h, k, m) > (0, 0, 0)],
    dtype=torch.long,
)


@dataclass
class AugmentDraws:
    """Per-crystal random draws (B, ...), on the CPU until :meth:`to`."""

    march_r: torch.Tensor  # (B,)
    axis: torch.Tensor  # (B, 3) long, hkl of the preferred-orientation axis
    strain: torch.Tensor  # (B,)
    shift: torch.Tensor  # (B,) degrees
    fwhm: torch.Tensor | None  # (B,) degrees
    mix_weight: torch.Tensor  # (B,) 0 where no second phase
    mix_partner: torch.Tensor  # (B,) long
    background: torch.Tensor  # (B, 5): height, c0..c3 and tau folded in below
    tau: torch.Tensor  # (B,)


def draw(cfg: XRDAugment, b: int, gen: torch.Generator) -> AugmentDraws:
    """All per-crystal draws for ``b`` crystals from ``gen`` (fixed order)."""

    def uni(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=gen, dtype=torch.float64)

    po = cfg.preferred_orientation
    march_r = uni(1.0 - po, 1.0 + po, b)
    axis = _AXES[torch.randint(len(_AXES), (b,), generator=gen)]
    strain = uni(-cfg.strain, cfg.strain, b)
    shift = uni(-cfg.shift, cfg.shift, b)
    fwhm = uni(*cfg.fwhm_range, b) if cfg.fwhm_range is not None else None
    mixed = torch.rand(b, generator=gen, dtype=torch.float64) < cfg.mix_probability
    mix_weight = torch.where(mixed, uni(0.0, cfg.mix_fraction, b), torch.zeros(b, dtype=torch.float64))
    partner = (torch.arange(b) + torch.randint(1, max(b, 2), (b,), generator=gen)) % max(b, 1)
    background = torch.rand(b, 5, generator=gen, dtype=torch.float64)
    tau = uni(0.05, 0.5, b)
    return AugmentDraws(march_r, axis, strain, shift, fwhm, mix_weight, partner, background, tau)


def march_dollase(hkl: torch.Tensor, metric: torch.Tensor, axis: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """March–Dollase factors (B, K) for reflections ``hkl`` (B, K, 3).

    ``metric`` (B, 3, 3) reciprocal metric G*, ``axis`` (B, 3) hkl of the axis, ``r`` (B,).
    ``cos α = hᵀG*a / sqrt(hᵀG*h · aᵀG*a)``.
    """
    h = hkl.to(metric.dtype)
    a = axis.to(metric.dtype)
    ga = torch.einsum("bij,bj->bi", metric, a)  # (B, 3)
    num = torch.einsum("bki,bi->bk", h, ga)
    hh = torch.einsum("bki,bij,bkj->bk", h, metric, h).clamp_min(1e-30)
    aa = (a * ga).sum(-1, keepdim=True)
    cos2 = (num * num / (hh * aa)).clamp(0.0, 1.0)
    rr = r.to(metric.dtype)[:, None]
    return (rr * rr * cos2 + (1.0 - cos2) / rr) ** -1.5


def perturb_positions(
    two_theta: torch.Tensor, strain: torch.Tensor, shift: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Strained and shifted positions (B, P) in degrees, and a mask of those still defined.

    ``sin θ' = sin θ / (1 + ε)``; then ``2θ'' = 2θ' + δ``.
    """
    s = torch.sin(torch.deg2rad(two_theta) / 2.0) / (1.0 + strain[:, None])
    ok = s.abs() < 1.0
    theta = torch.asin(s.clamp(-1.0, 1.0))
    return torch.rad2deg(2.0 * theta) + shift[:, None], ok


def grid_augment(patterns: torch.Tensor, draws: AugmentDraws, cfg: XRDAugment, gen: torch.Generator) -> torch.Tensor:
    """Second phase, background and noise on patterns (B, G) (each scaled to its own max)."""
    b, g = patterns.shape
    dev, dt = patterns.device, patterns.dtype
    peak = patterns.amax(dim=1, keepdim=True).clamp_min(torch.finfo(dt).tiny)
    y = patterns / peak
    w = draws.mix_weight.to(dev, dt)[:, None]
    if b > 1 and bool((w > 0).any()):
        y = (1.0 - w) * y + w * y[draws.mix_partner.to(dev)]
    if cfg.background > 0:
        t = torch.linspace(0.0, 1.0, g, dtype=dt, device=dev)[None, :]
        c = draws.background.to(dev, dt)
        tau = draws.tau.to(dev, dt)[:, None]
        shape = c[:, 1:2] + c[:, 2:3] * torch.exp(-t / tau) + c[:, 3:4] * t + c[:, 4:5] * t * t
        shape = shape / shape.amax(dim=1, keepdim=True).clamp_min(1e-12)
        y = y + cfg.background * c[:, 0:1] * shape
    if cfg.noise > 0:
        y = y + cfg.noise * torch.randn(b, g, generator=gen, dtype=torch.float64).to(dev, dt)
    return y * peak
