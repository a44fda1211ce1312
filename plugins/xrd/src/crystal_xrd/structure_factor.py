"""Kinematic structure factors and the Lorentz-polarisation factor, batched.

For reflection ``h`` of crystal ``b`` with atoms ``j`` (fractional positions ``x_j``)::

    F(h) = Σ_j o_j f_{Z_j}(s) T_{Z_j}(s) exp(2πi h·x_j),      I(h) = |F(h)|²

with occupancies ``o_j`` (1 unless the batch carries an ``occupancy`` atom property),
``s = |g|/2`` and the Debye–Waller factor ``T = exp(-B s²)``.  Atoms are grouped by
element so that each form factor is evaluated once per element and reflection:
``F = Σ_u f_u(s) (Σ_{j∈u} o_j e^{2πi h·x_j})``, the inner sum being a batched matmul.

Lorentz-polarisation (unpolarised beam, no monochromator)::

    LP(θ) = (1 + cos² 2θ) / (sin² θ cos θ)
"""

from __future__ import annotations

import math

import torch

from crystal.batch import CrystalBatch
from crystal_xrd.scattering import SCATTERING_PREFACTOR, scattering_table

__all__ = ["lorentz_polarization", "padded_atoms", "structure_factor_intensity"]


def padded_atoms(batch: CrystalBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-crystal padded atoms with per-crystal element slots.

    Returns ``frac`` (B, Nmax, 3), ``weights`` (B, Nmax, Umax) (occupancy one-hot over the
    crystal's own distinct elements, zero for padding) and ``elements`` (B, Umax) the atomic
    number in each slot (0 = empty slot), Umax being the most distinct elements of any crystal.
    """
    b = len(batch)
    nmax = int(batch.num_atoms.max()) if b else 0
    pos = torch.arange(batch.num_nodes, device=batch.device) - batch.ptr[:-1][batch.batch]
    frac = batch.frac_coords.new_zeros((b, nmax, 3))
    frac[batch.batch, pos] = batch.frac_coords
    zspan = int(batch.atomic_numbers.max()) + 1 if batch.num_nodes else 1
    keys, inverse = torch.unique(batch.batch * zspan + batch.atomic_numbers, return_inverse=True)  # sorted
    key_crystal = keys // zspan
    first = torch.searchsorted(keys, key_crystal * zspan)  # index of each crystal's first key
    slot = torch.arange(len(keys), device=keys.device) - first
    umax = int(slot.max()) + 1 if len(keys) else 0
    elements = torch.zeros((b, umax), dtype=torch.long, device=batch.device)
    elements[key_crystal, slot] = keys % zspan
    occ = batch.atom_properties.get("occupancy")
    occ = occ.to(batch.dtype) if occ is not None else batch.frac_coords.new_ones(batch.num_nodes)
    weights = batch.frac_coords.new_zeros((b, nmax, umax))
    weights[batch.batch, pos, slot[inverse]] = occ
    return frac, weights, elements


def structure_factor_intensity(
    batch: CrystalBatch,
    hkl: torch.Tensor,
    s2: torch.Tensor,
    debye_waller: float | dict[str, float] | None = None,
    *,
    where: str = "xrd",
) -> torch.Tensor:
    """``|F(h)|²`` (B, K) for reflections ``hkl`` (B, K, 3) with ``s²`` (B, K) in Å⁻².

    Computed in the batch's dtype (phases ``2π h·x`` are exact up to that precision).
    """
    frac, weights, elements = padded_atoms(batch)  # elements (B, U)
    dtype = batch.dtype
    present = torch.unique(elements[elements > 0])
    table = torch.zeros(
        (int(elements.max()) + 1 if elements.numel() else 1, 4, 2), dtype=torch.float64, device=s2.device
    )
    table[present] = scattering_table(present, where=where).to(s2.device)
    coeffs = table[elements]  # (B, U, 4, 2); empty slots have zero coefficients and Z = 0 -> f = 0
    s2d = s2.to(dtype)
    a = coeffs[..., 0].to(dtype)[:, None]  # (B, 1, U, 4)
    b = coeffs[..., 1].to(dtype)[:, None]
    series = (a * torch.exp(-b * s2d[..., None, None])).sum(-1)  # (B, K, U)
    f = elements.to(dtype)[:, None, :] - SCATTERING_PREFACTOR * s2d[..., None] * series
    if debye_waller is not None:
        from crystal.elements import symbol

        zmax = int(elements.max())
        bvals = torch.zeros(zmax + 1, dtype=dtype, device=s2.device)
        for z in present.tolist():
            bvals[z] = (
                float(debye_waller.get(symbol(z), 0.0)) if isinstance(debye_waller, dict) else float(debye_waller)
            )
        f = f * torch.exp(-bvals[elements][:, None, :] * s2d[..., None])
    phase = (2.0 * math.pi) * torch.einsum("bki,bni->bkn", hkl.to(dtype), frac)  # (B, K, Nmax)
    re = torch.cos(phase) @ weights  # (B, K, U)  Σ_j o_j cos(2π h·x_j) per element slot
    im = torch.sin(phase) @ weights
    f_re = (f * re).sum(-1)
    f_im = (f * im).sum(-1)
    return f_re * f_re + f_im * f_im


def lorentz_polarization(theta: torch.Tensor) -> torch.Tensor:
    """``(1 + cos² 2θ) / (sin² θ cos θ)`` for Bragg angles θ in radians (any shape)."""
    cos2t = torch.cos(2.0 * theta)
    return (1.0 + cos2t * cos2t) / (torch.sin(theta) ** 2 * torch.cos(theta))
