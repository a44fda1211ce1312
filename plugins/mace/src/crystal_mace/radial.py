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

__all__ = ["AgnesiTransform", "BesselBasis", "PairRepulsion", "PolynomialCutoff", "RadialEmbedding"]


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


def _default_covalent_radii(atomic_numbers: list[int]) -> list[float]:
    """Covalent radii (Å) of ``atomic_numbers`` from ASE's table (the one mace-torch uses); only needed
    for a *fresh* model with ZBL repulsion or the Agnesi transform (a loaded one carries its radii)."""
    try:
        from ase.data import covalent_radii
    except ImportError:  # pragma: no cover - ase is a test dependency
        raise ImportError(
            "a new MACE model with pair_repulsion or distance_transform='agnesi' needs covalent radii: "
            "install ase (or load released weights, which carry them)"
        ) from None
    return [float(covalent_radii[z]) for z in atomic_numbers]


class AgnesiTransform(nn.Module):
    """Agnesi distance transform (Witt et al., JCP 2023, ACEpotentials.jl), as in MACE-MP-0b/MPA-0::

        t(r) = 1 / (1 + a (r/r0)^q / (1 + (r/r0)^(q−p))),    r0 = (R_cov(z_i) + R_cov(z_j)) / 2

    The Bessel basis is evaluated at ``t(r)``; the polynomial envelope stays on ``r``. Per-element
    covalent radii are buffers (saved with the weights). (E,) Å -> (E,) dimensionless.
    """

    def __init__(self, radii: list[float], q: float = 0.9183, p: float = 4.5791, a: float = 1.0805) -> None:
        super().__init__()
        dtype = torch.get_default_dtype()
        self.register_buffer("radii", torch.tensor(radii, dtype=dtype))
        self.register_buffer("q", torch.tensor(q, dtype=dtype))
        self.register_buffer("p", torch.tensor(p, dtype=dtype))
        self.register_buffer("a", torch.tensor(a, dtype=dtype))

    def forward(self, r: torch.Tensor, species: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        r0 = 0.5 * (self.radii[species[edge_index[0]]] + self.radii[species[edge_index[1]]])
        x = r / r0
        return (1 + self.a * torch.pow(x, self.q) / (1 + torch.pow(x, self.q - self.p))).reciprocal()


class PairRepulsion(nn.Module):
    """ZBL screened nuclear repulsion (Ziegler, Biersack & Littmark 1985) with MACE's envelope, as the
    ``pair_repulsion`` term of MACE-MP-0b/MPA-0::

        a_ij   = 0.4543 · 0.529 / (Z_i^0.300 + Z_j^0.300)                         Å
        φ(x)   = 0.1818 e^{−3.2x} + 0.5099 e^{−0.9423x} + 0.2802 e^{−0.4028x} + 0.02817 e^{−0.2016x}
        V_ij   = 14.3996 Z_i Z_j / r · φ(r / a_ij) · f_cut(r; R_cov(z_i) + R_cov(z_j), p)     eV
        e_i   += ½ Σ_j V_ij

    (14.3996 eV Å = e²/4πε0.) Added to the interaction energy before scale and shift, as in
    mace-torch's ScaleShiftMACE. Constants and per-element radii are buffers. -> (N,) eV.
    """

    def __init__(self, atomic_numbers: list[int], radii: list[float], p: int = 5) -> None:
        super().__init__()
        dtype = torch.get_default_dtype()
        self.p = int(p)
        self.register_buffer("z", torch.tensor([float(z) for z in atomic_numbers], dtype=dtype))
        self.register_buffer("radii", torch.tensor(radii, dtype=dtype))
        self.register_buffer("c", torch.tensor([0.1818, 0.5099, 0.2802, 0.02817], dtype=dtype))
        self.register_buffer("a_exp", torch.tensor(0.300, dtype=dtype))
        self.register_buffer("a_prefactor", torch.tensor(0.4543, dtype=dtype))

    def forward(self, r: torch.Tensor, species: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        si, sj = species[edge_index[0]], species[edge_index[1]]
        zi, zj = self.z[si], self.z[sj]
        a = self.a_prefactor * 0.529 / (torch.pow(zi, self.a_exp) + torch.pow(zj, self.a_exp))
        x = r / a
        phi = (
            self.c[0] * torch.exp(-3.2 * x)
            + self.c[1] * torch.exp(-0.9423 * x)
            + self.c[2] * torch.exp(-0.4028 * x)
            + self.c[3] * torch.exp(-0.2016 * x)
        )
        v = (14.3996 * zi * zj) / r * phi
        r_max = self.radii[si] + self.radii[sj]
        p = float(self.p)
        y = r / r_max
        env = (
            1.0
            - (p + 1.0) * (p + 2.0) / 2.0 * y**self.p
            + p * (p + 2.0) * y ** (self.p + 1)
            - p * (p + 1.0) / 2.0 * y ** (self.p + 2)
        ) * (r < r_max).to(r.dtype)
        v = 0.5 * v * env
        out = torch.zeros(species.shape[0], dtype=r.dtype, device=r.device)
        return out.index_add(0, edge_index[0], v)
