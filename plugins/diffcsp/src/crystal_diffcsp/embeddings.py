"""Sinusoidal embeddings: of the diffusion time (Vaswani et al.) and of fractional-coordinate
differences (the Fourier features that make CSPNet periodic-translation invariant)."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["FractionalFourierFeatures", "SinusoidalTimeEmbedding"]


class SinusoidalTimeEmbedding(nn.Module):
    """(B,) integer times → (B, dim): ``[sin(t ω_j), cos(t ω_j)]``, ``ω_j = 10000^(−j/(dim/2 − 1))``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"time embedding dim must be even and >= 4, got {dim}")
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000.0) / (half - 1) * torch.arange(half, device=t.device, dtype=torch.float32))
        arg = t.to(torch.float32)[:, None] * freqs[None, :]
        return torch.cat([arg.sin(), arg.cos()], dim=-1)


class FractionalFourierFeatures(nn.Module):
    """(E, 3) fractional differences Δf → (E, 6K): ``[sin(2πk Δf_c), cos(2πk Δf_c)]`` for
    ``k = 0 … K−1`` and the three axes ``c`` (the reference code's ``SinusoidsEmbedding``;
    ``k = 0`` contributes the constants sin 0 = 0 and cos 0 = 1).

    Every feature has period 1 in each Δf_c, so the features, and everything computed from them,
    are invariant to shifting all fractional coordinates by the same vector and to wrapping.
    """

    def __init__(self, num_freqs: int) -> None:
        super().__init__()
        self.num_freqs = int(num_freqs)

    @property
    def dim(self) -> int:
        return 6 * self.num_freqs

    def forward(self, frac_diff: torch.Tensor) -> torch.Tensor:
        # wrap first (as the reference, ``(f_j − f_i) % 1``) so the arguments stay small in float32
        wrapped = torch.remainder(frac_diff, 1.0)
        freqs = 2 * math.pi * torch.arange(self.num_freqs, dtype=frac_diff.dtype, device=frac_diff.device)
        arg = (wrapped.unsqueeze(-1) * freqs).reshape(frac_diff.shape[0], -1)
        return torch.cat([arg.sin(), arg.cos()], dim=-1)
