"""Radial basis expansion of a scalar (bond length or bond-angle cosine)."""

from __future__ import annotations

import torch
from torch import nn

from crystal.basis import gaussian_expansion

__all__ = ["RBFExpansion"]


class RBFExpansion(nn.Module):
    """Gaussians on ``bins`` evenly spaced centres :math:`\\mu_k` from ``vmin`` to ``vmax``:

    .. math::  e_k(d) = \\exp\\!\\left(-\\gamma\\,(d - \\mu_k)^2\\right), \\qquad
               \\gamma = 1/\\Delta, \\quad \\Delta = \\frac{v_{max} - v_{min}}{\\text{bins} - 1}

    As in the reference ``RBFExpansion`` (``lengthscale=None``), ``γ`` is the inverse of the
    centre spacing ``Δ`` (not ``1/Δ²``): ALIGNN's bond lengths use 0–8 Å with 80 bins
    (``γ = 9.875 Å⁻²``), its angle cosines −1…1 with 40 bins (``γ = 19.5``). No parameters;
    computed in the input's dtype.

    Shapes: ``d`` (*) → (*, bins).
    """

    def __init__(self, vmin: float, vmax: float, bins: int) -> None:
        super().__init__()
        if bins < 2 or not vmax > vmin:
            raise ValueError("RBFExpansion needs bins >= 2 and vmax > vmin")
        self.vmin, self.vmax, self.bins = float(vmin), float(vmax), int(bins)
        self.gamma = (self.bins - 1) / (self.vmax - self.vmin)

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        return gaussian_expansion(d, self.vmin, self.vmax, num=self.bins, gamma=self.gamma)

    def extra_repr(self) -> str:
        return f"vmin={self.vmin}, vmax={self.vmax}, bins={self.bins}, gamma={self.gamma:.4g}"
