"""The wrapped normal distribution on the unit torus [0, 1) and its score.

Fractional coordinates are noised as ``F_t = w(F_0 + σ_t ε)``, ``ε ~ N(0, I)``, ``w(x) = x − ⌊x⌋``,
so ``q(F_t | F_0)`` is a wrapped normal with density (per coordinate, period 1)

    p(x; σ) = (2πσ²)^(-1/2) Σ_{k∈ℤ} exp(−(x + k)² / 2σ²),      x = F_t − F_0

truncated here to the images ``k = −n … n`` (``n = 10`` as the reference code; for σ ≤ 0.5
the neglected terms are below exp(−(10.5)²/0.5) ≈ 1e-96). Its score is

    ∇ₓ log p(x; σ) = −Σ_k w_k (x + k) / σ²,    w_k = softmax_k(−(x + k)² / 2σ²),

computed through a softmax so that it stays finite for σ = 0.005 (where exp underflows).
The score-matching weight of DiffCSP is ``λ_t = 1 / E_{x∼p(·;σ_t)}[(∇ log p)²]``; we compute
the expectation by trapezoidal quadrature (deterministic) where the reference uses a Monte
Carlo estimate with 10,000 samples.
"""

from __future__ import annotations

import math

import torch

__all__ = ["wrapped_normal_log_density", "wrapped_normal_score", "wrapped_normal_score_sq_mean"]

NUM_IMAGES = 10


def _images(x: torch.Tensor, n: int) -> torch.Tensor:
    """(..., 2n+1) the periodic images ``x + k``, ``k = −n … n``, of ``x`` wrapped to [−0.5, 0.5)."""
    x = x - torch.floor(x + 0.5)
    k = torch.arange(-n, n + 1, dtype=x.dtype, device=x.device)
    return x.unsqueeze(-1) + k


def wrapped_normal_log_density(x: torch.Tensor, sigma: torch.Tensor | float, n: int = NUM_IMAGES) -> torch.Tensor:
    """log p(x; σ) of the period-1 wrapped normal (normalised), same shape as ``x``.

    ``sigma`` broadcasts against ``x``.
    """
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    xk = _images(x, n)
    s = sigma.unsqueeze(-1)
    return torch.logsumexp(-(xk**2) / (2 * s**2), dim=-1) - 0.5 * torch.log(2 * math.pi * sigma**2)


def wrapped_normal_score(x: torch.Tensor, sigma: torch.Tensor | float, n: int = NUM_IMAGES) -> torch.Tensor:
    """∇ₓ log p(x; σ), same shape as ``x`` (``sigma`` broadcasts); periodic in ``x`` with period 1."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    xk = _images(x, n)
    s2 = (sigma**2).unsqueeze(-1)
    w = torch.softmax(-(xk**2) / (2 * s2), dim=-1)
    return -(w * xk).sum(-1) / sigma**2


def wrapped_normal_score_sq_mean(sigma: torch.Tensor, points: int = 401, n: int = NUM_IMAGES) -> torch.Tensor:
    """(S,) E[(∇ log p)²] under p(·; σ) for each σ, by trapezoidal quadrature in float64.

    The grid covers ``x ∈ [−h, h]`` with ``h = min(0.5, 12σ)``: the whole period when σ ≥ 1/24
    (a smooth periodic integrand, so the trapezoidal rule converges spectrally), else ±12σ,
    outside of which the density is below 1e-31 of its peak. 401 points agree with 4001 to
    float64 print precision (checked for σ in [0.005, 0.5]).
    """
    sig = sigma.to(torch.float64).reshape(-1, 1)
    h = torch.clamp(12 * sig, max=0.5)
    u = torch.linspace(-1.0, 1.0, points, dtype=torch.float64, device=sigma.device)
    x = h * u  # (S, P)
    logp = wrapped_normal_log_density(x, sig, n)
    score = wrapped_normal_score(x, sig, n)
    p = torch.exp(logp)
    mass = torch.trapezoid(p, x, dim=-1)
    mean_sq = torch.trapezoid(p * score**2, x, dim=-1) / mass
    return mean_sq.to(sigma.dtype)
