"""Radial embedding of MACE: a Bessel basis times a polynomial envelope (Batatia et al. 2022).

``R_n(r) = sqrt(2 / r_max) · sin(n π r / r_max) / r · f_cut(r)``, ``n = 1 … num_bessel``,
with the DimeNet polynomial envelope (Gasteiger et al. 2020) of order ``p``::

    f_cut(r) = 1 − (p+1)(p+2)/2 · x^p + p(p+2) · x^(p+1) − p(p+1)/2 · x^(p+2),   x = r / r_max < 1
    f_cut(r) = 0                                                                  r ≥ r_max

``f_cut`` and its first two derivatives vanish at ``r_max``, so energies and forces are smooth
where neighbours cross the cutoff.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["BesselBasis", "PolynomialCutoff", "RadialEmbedding"]


class BesselBasis(nn.Module):
    """``B_n(r) = sqrt(2/r_max) sin(n π r / r_max) / r``: (E,) Å -> (E, num_bessel).

    The frequencies ``n π / r_max`` are fixed (not trained), as in MACE's default.
    """

    def __init__(self, r_max: float, num_bessel: int = 8) -> None:
        super().__init__()
        self.r_max = float(r_max)
        self.num_bessel = int(num_bessel)
        self.prefactor = math.sqrt(2.0 / r_max)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        # computed in the input's precision (no float32 buffer rounded into a float64 model)
        freqs = torch.arange(1, self.num_bessel + 1, dtype=r.dtype, device=r.device) * (math.pi / self.r_max)
        r = r.unsqueeze(-1)
        return self.prefactor * torch.sin(freqs * r) / r


class PolynomialCutoff(nn.Module):
    """Smooth envelope ``f_cut(r)`` of order ``p``: (E,) Å -> (E,), 1 at r = 0 and 0 for r ≥ r_max."""

    def __init__(self, r_max: float, p: int = 5) -> None:
        super().__init__()
        self.r_max = float(r_max)
        self.p = int(p)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        p = float(self.p)
        x = r / self.r_max
        env = (
            1.0
            - (p + 1.0) * (p + 2.0) / 2.0 * x**self.p
            + p * (p + 2.0) * x ** (self.p + 1)
            - p * (p + 1.0) / 2.0 * x ** (self.p + 2)
        )
        return env * (x < 1.0).to(r.dtype)


class RadialEmbedding(nn.Module):
    """Edge features ``R_n(r) = B_n(r) f_cut(r)``: (E,) Å -> (E, num_bessel)."""

    def __init__(self, r_max: float, num_bessel: int = 8, num_polynomial_cutoff: int = 5) -> None:
        super().__init__()
        self.bessel = BesselBasis(r_max, num_bessel)
        self.cutoff = PolynomialCutoff(r_max, num_polynomial_cutoff)
        self.out_dim = num_bessel

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return self.bessel(r) * self.cutoff(r).unsqueeze(-1)
