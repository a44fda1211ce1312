"""Atomic X-ray scattering factors (Cromer–Mann-type fit used by pymatgen's XRDCalculator).

The coefficients are read at run time from the installed pymatgen package
(``pymatgen/analysis/diffraction/atomic_scattering_params.json``); nothing is copied.

For an element with atomic number ``Z`` and fitted pairs ``(a_k, b_k)`` (k = 1..4)::

    f(s) = Z - 41.78214 · s² · Σ_k a_k exp(-b_k s²),      s = sin θ / λ = 1 / (2 d)   (Å⁻¹)

(De Graef & McHenry, *Structure of Materials*, ch. 12; the same expression as pymatgen).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import torch

from crystal.elements import atomic_number, symbol
from crystal.errors import StructureError

__all__ = ["SCATTERING_PREFACTOR", "covered_elements", "form_factors", "scattering_table"]

#: the constant of the fitted form (Å², from pymatgen / De Graef & McHenry)
SCATTERING_PREFACTOR = 41.78214


@lru_cache(maxsize=1)
def _raw_table() -> dict[str, list[list[float]]]:
    try:
        text = (resources.files("pymatgen.analysis.diffraction") / "atomic_scattering_params.json").read_text()
    except (ModuleNotFoundError, FileNotFoundError) as exc:  # pragma: no cover - pymatgen is a core dependency
        raise StructureError(f"xrd: cannot read pymatgen's atomic_scattering_params.json ({exc})") from None
    data: dict[str, list[list[float]]] = json.loads(text)
    return data


@lru_cache(maxsize=1)
def _table_cpu() -> tuple[torch.Tensor, torch.Tensor]:
    raw: dict[int, list[list[float]]] = {}
    for sym, pairs in _raw_table().items():
        try:
            raw[atomic_number(sym)] = pairs
        except ValueError:  # isotopes such as "D" are not elements of the periodic table
            continue
    zmax = max(raw)
    coeffs = torch.zeros((zmax + 1, 4, 2), dtype=torch.float64)
    known = torch.zeros(zmax + 1, dtype=torch.bool)
    for z, pairs in raw.items():
        coeffs[z, : len(pairs)] = torch.tensor(pairs, dtype=torch.float64)
        known[z] = True
    return coeffs, known


def covered_elements() -> frozenset[int]:
    """Atomic numbers with scattering coefficients."""
    _, known = _table_cpu()
    return frozenset(torch.nonzero(known).flatten().tolist())


def scattering_table(atomic_numbers: torch.Tensor, *, where: str = "xrd") -> torch.Tensor:
    """(U, 4, 2) coefficients ``(a_k, b_k)`` of the given (U,) atomic numbers.

    Raises :class:`StructureError` naming every element without coefficients.
    """
    coeffs, known = _table_cpu()
    z = atomic_numbers.detach().to("cpu").long()
    bad = (z < 0) | (z >= known.shape[0])
    bad = bad | ~known[z.clamp(0, known.shape[0] - 1)]
    if bool(bad.any()):
        missing = sorted(set(z[bad].tolist()))
        names = ", ".join(symbol(int(v)) if 0 < v < 119 else f"Z={v}" for v in missing)
        raise StructureError(f"{where}: no X-ray scattering coefficients for element(s) {names}")
    return coeffs[z].to(device=atomic_numbers.device)


def form_factors(z: torch.Tensor, coeffs: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
    """Atomic scattering factors.

    ``z`` (U,) atomic numbers, ``coeffs`` (U, 4, 2), ``s2`` (..., ) values of s² in Å⁻²;
    returns (..., U): ``f_u(s) = Z_u - 41.78214 s² Σ_k a_uk exp(-b_uk s²)``.
    """
    a = coeffs[:, :, 0].to(s2.dtype)  # (U, 4)
    b = coeffs[:, :, 1].to(s2.dtype)
    s2e = s2[..., None, None]  # (..., 1, 1)
    series = (a * torch.exp(-b * s2e)).sum(-1)  # (..., U)
    return z.to(s2.dtype) - SCATTERING_PREFACTOR * s2[..., None] * series
