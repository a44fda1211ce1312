"""Noise schedules of DiffCSP: a DDPM β schedule for the lattice (and the one-hot atom types of
ab initio generation) and a geometric σ schedule for the wrapped normal on fractional coordinates.

Both are indexed by the integer time ``t = 0 … T``; index 0 is the clean data (β₀ = 0, σ₀ = 0).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal

import torch
from torch import nn

from crystal_diffcsp.wrapped_normal import wrapped_normal_score_sq_mean

__all__ = ["BetaSchedule", "SigmaSchedule", "cosine_betas", "linear_betas"]


def cosine_betas(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """(T,) β_t of the cosine schedule (Nichol & Dhariwal 2021), clipped to [1e-4, 0.9999].

    ``ᾱ(t) = cos²(((t/T) + s)/(1 + s) · π/2) / ᾱ(0)`` and ``β_t = 1 − ᾱ(t)/ᾱ(t−1)``.
    """
    x = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)
    abar = torch.cos(((x / timesteps) + s) / (1 + s) * math.pi * 0.5) ** 2
    abar = abar / abar[0]
    return torch.clip(1 - abar[1:] / abar[:-1], 1e-4, 0.9999)


def linear_betas(timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """(T,) β_t linear from ``beta_start`` to ``beta_end`` (Ho et al. 2020)."""
    return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)


class BetaSchedule(nn.Module):
    """DDPM schedule: buffers ``betas``, ``alphas``, ``alphas_cumprod`` (ᾱ), ``sigmas`` (posterior std),
    each (T + 1,) with index 0 the clean data.

    ``q(L_t | L_0) = N(√ᾱ_t L_0, (1 − ᾱ_t) I)``; posterior std ``σ_t = √(β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t))``.
    """

    betas: torch.Tensor
    alphas: torch.Tensor
    alphas_cumprod: torch.Tensor
    sigmas: torch.Tensor

    def __init__(self, timesteps: int, mode: Literal["cosine", "linear"] = "cosine") -> None:
        super().__init__()
        self.timesteps = int(timesteps)
        betas = cosine_betas(timesteps) if mode == "cosine" else linear_betas(timesteps)
        betas = torch.cat([torch.zeros(1, dtype=torch.float64), betas])
        alphas = 1 - betas
        abar = torch.cumprod(alphas, 0)
        sig = torch.zeros_like(betas)
        sig[1:] = torch.sqrt(betas[1:] * (1 - abar[:-1]) / (1 - abar[1:]))
        for name, value in (("betas", betas), ("alphas", alphas), ("alphas_cumprod", abar), ("sigmas", sig)):
            self.register_buffer(name, value.float(), persistent=False)


@lru_cache(maxsize=8)
def _sigma_table(timesteps: int, sigma_begin: float, sigma_end: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(T,) σ_t and E[(∇ log p_{σ_t})²] in float64 (the quadrature takes seconds: computed once per schedule)."""
    sig = torch.exp(torch.linspace(math.log(sigma_begin), math.log(sigma_end), timesteps, dtype=torch.float64))
    return sig, wrapped_normal_score_sq_mean(sig)


class SigmaSchedule(nn.Module):
    """Geometric σ_t from ``sigma_begin`` (t = 1) to ``sigma_end`` (t = T), σ₀ = 0.

    Buffers (T + 1,): ``sigmas`` and ``sigmas_norm`` = E[(∇ log p_{σ_t})²] (= 1/λ_t of the paper;
    index 0 holds 1).
    """

    sigmas: torch.Tensor
    sigmas_norm: torch.Tensor

    def __init__(self, timesteps: int, sigma_begin: float = 0.005, sigma_end: float = 0.5) -> None:
        super().__init__()
        self.timesteps = int(timesteps)
        self.sigma_begin = float(sigma_begin)
        self.sigma_end = float(sigma_end)
        sig, norm = _sigma_table(int(timesteps), float(sigma_begin), float(sigma_end))
        self.register_buffer("sigmas", torch.cat([torch.zeros(1, dtype=torch.float64), sig]).float(), persistent=False)
        self.register_buffer(
            "sigmas_norm", torch.cat([torch.ones(1, dtype=torch.float64), norm]).float(), persistent=False
        )
