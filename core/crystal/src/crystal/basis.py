"""Radial bases and smooth cutoff envelopes for interatomic distances.

All operators map distances ``d`` of shape (E,) (any shape ``(*)``) to ``(*, K)`` features
(or ``(*)`` for the envelope), are differentiable and keep ``d``'s dtype and device.

* :func:`gaussian_expansion` — ``exp(-γ (d - μ_k)²)``: CGCNN (``μ`` from 0 to 8 Å every
  0.2 Å, ``γ = 1/0.2²``, 41 centres) and SchNet (0 to 30 Å every 0.1 Å, ``γ = 10 Å⁻²``,
  301 centres).
* :func:`bessel_basis` — ``sqrt(2/c) sin(nπd/c)/d`` (DimeNet, MACE).
* :func:`polynomial_cutoff` — DimeNet's smooth polynomial envelope, 1 at 0 and 0 at ``c``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["bessel_basis", "gaussian_expansion", "polynomial_cutoff"]


def gaussian_expansion(
    d: torch.Tensor,
    start: float = 0.0,
    stop: float = 8.0,
    num: int | None = None,
    step: float | None = 0.2,
    width: float | None = None,
    gamma: float | None = None,
) -> torch.Tensor:
    """Gaussian smearing :math:`e_k(d) = \\exp(-\\gamma (d - \\mu_k)^2)`, ``μ_k`` evenly spaced.

    Centres: ``num`` points from ``start`` to ``stop`` inclusive when ``num`` is given,
    else every ``step`` (``round((stop - start)/step) + 1`` centres). ``γ = 1/width²`` with
    ``width`` defaulting to the centre spacing (CGCNN's ``var = step``), unless ``gamma`` is
    given. Defaults are CGCNN's (0–8 Å, step 0.2 → 41 centres); SchNet's is
    ``gaussian_expansion(d, 0.0, 30.0, step=0.1, gamma=10.0)`` (301 centres).

    Shapes: ``d`` (*) → (*, K).
    """
    if num is None:
        if step is None:
            raise ValueError("give num or step")
        num = round((stop - start) / step) + 1
    centres = torch.linspace(start, stop, num, dtype=d.dtype, device=d.device)
    if gamma is None:
        spacing = (stop - start) / (num - 1) if num > 1 else 1.0
        w = spacing if width is None else width
        gamma = 1.0 / (w * w)
    return torch.exp(-gamma * (d[..., None] - centres) ** 2)


def bessel_basis(d: torch.Tensor, cutoff: float, num: int = 8) -> torch.Tensor:
    """Spherical Bessel (order 0) radial basis :math:`e_n(d) = \\sqrt{2/c}\\,\\sin(n\\pi d/c)/d`.

    ``n = 1..num`` (DimeNet eq. 7, MACE). The ``d → 0`` limit ``sqrt(2/c) nπ/c`` is used for
    ``d = 0``. Shapes: ``d`` (*) → (*, num).
    """
    n = torch.arange(1, num + 1, dtype=d.dtype, device=d.device)
    x = d[..., None]
    safe = torch.where(x == 0, torch.ones_like(x), x)
    values = math.sqrt(2.0 / cutoff) * torch.sin(n * math.pi * safe / cutoff) / safe
    limit = math.sqrt(2.0 / cutoff) * n * math.pi / cutoff
    return torch.where(x == 0, limit.expand_as(values), values)


def polynomial_cutoff(d: torch.Tensor, cutoff: float, p: int = 6) -> torch.Tensor:
    """DimeNet's polynomial envelope (eq. 8 without its ``1/d`` factor, as in NequIP/MACE),
    ``x = d/c``, zero for ``x ≥ 1``:

    .. math::  u(x) = 1 - \\frac{(p+1)(p+2)}{2} x^p + p(p+2) x^{p+1} - \\frac{p(p+1)}{2} x^{p+2}

    ``u(0) = 1`` and ``u``, ``u'``, ``u''`` vanish at ``x = 1`` (so it is C² across the
    cutoff). Shapes: ``d`` (*) → (*).
    """
    x = d / cutoff
    u = 1.0 - (p + 1) * (p + 2) / 2 * x**p + p * (p + 2) * x ** (p + 1) - p * (p + 1) / 2 * x ** (p + 2)
    return torch.where(x < 1.0, u, torch.zeros_like(u))
