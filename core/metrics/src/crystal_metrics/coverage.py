"""Coverage (COV-R, COV-P) of a reference set by generated crystals (CDVAE, Xie et al. 2022).

With structure fingerprints ``s`` (61-d CrystalNN, :mod:`crystal_metrics.fingerprints`) and
standardised composition fingerprints ``c`` (132-d Magpie), the distance matrices
``D^s_ij = ‖s_i − s^ref_j‖`` and ``D^c_ij = ‖c_i − c^ref_j‖`` (generated ``i``, reference ``j``):

.. math::
    \\text{COV-R} = \\frac{1}{M}\\sum_j [\\min_i D^s_{ij} \\le δ_s \\wedge \\min_i D^c_{ij} \\le δ_c], \\qquad
    \\text{COV-P} = \\frac{1}{N_\\text{gen}}\\sum_i [\\min_j D^s_{ij} \\le δ_s \\wedge \\min_j D^c_{ij} \\le δ_c]

(the structure and composition minima are taken separately, as in CDVAE's ``compute_cov``).
``N_gen`` counts every generated crystal, including those whose fingerprint could not be
computed (they are left out of the distance matrices). AMSD/AMCD are the mean minimum
structure/composition distances. Cut-offs ``(δ_s, δ_c)`` per data set are CDVAE's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from crystal.errors import ConfigError

__all__ = ["COVERAGE_CUTOFFS", "compute_coverage", "coverage_cutoffs"]

# CDVAE's COV_Cutoffs (scripts/compute_metrics.py), reused by DiffCSP
COVERAGE_CUTOFFS: dict[str, dict[str, float]] = {
    "perov_5": {"struc": 0.2, "comp": 4.0},
    "carbon_24": {"struc": 0.2, "comp": 4.0},
    "mp_20": {"struc": 0.4, "comp": 10.0},
}
_ALIASES = {
    "perov5": "perov_5",
    "perovskite": "perov_5",
    "perov-5": "perov_5",
    "carbon": "carbon_24",
    "carbon24": "carbon_24",
    "carbon-24": "carbon_24",
    "mp20": "mp_20",
    "mp-20": "mp_20",
}


def coverage_cutoffs(dataset: str) -> dict[str, float]:
    """CDVAE's ``{"struc", "comp"}`` cut-offs for ``dataset`` (perov_5, carbon_24, mp_20)."""
    key = _ALIASES.get(dataset.lower(), dataset.lower())
    if key not in COVERAGE_CUTOFFS:
        raise ConfigError(
            f"unknown data set {dataset!r} for coverage cut-offs; allowed: {', '.join(COVERAGE_CUTOFFS)} "
            "(or give struc_cutoff and comp_cutoff)"
        )
    return dict(COVERAGE_CUTOFFS[key])


def compute_coverage(
    struct_fps: np.ndarray,
    comp_fps: np.ndarray,
    ref_struct_fps: np.ndarray,
    ref_comp_fps: np.ndarray,
    *,
    struc_cutoff: float | None,
    comp_cutoff: float | None,
    num_generated: int | None = None,
) -> dict[str, Any]:
    """COV-R/COV-P and AMSD/AMCD from fingerprints (``(N, 61)``, ``(N, 132)`` scaled, ``(M, ·)``).

    Without cut-offs only the mean distances are reported (COV values are ``None``).
    ``num_generated`` (default ``N``) is the denominator of COV-P.
    """
    n = int(struct_fps.shape[0])
    n_gen = n if num_generated is None else num_generated
    if ref_struct_fps.shape[0] == 0:
        raise ConfigError("coverage: the reference set is empty")
    if n == 0:
        return {
            "cov_recall": 0.0 if struc_cutoff is not None else None,
            "cov_precision": 0.0 if struc_cutoff is not None else None,
            "amsd_recall": None,
            "amsd_precision": None,
            "amcd_recall": None,
            "amcd_precision": None,
        }
    s = torch.cdist(
        torch.as_tensor(struct_fps, dtype=torch.float64), torch.as_tensor(ref_struct_fps, dtype=torch.float64)
    )
    c = torch.cdist(torch.as_tensor(comp_fps, dtype=torch.float64), torch.as_tensor(ref_comp_fps, dtype=torch.float64))
    s_recall, s_precision = s.min(dim=0).values, s.min(dim=1).values  # (M,), (N,)
    c_recall, c_precision = c.min(dim=0).values, c.min(dim=1).values
    out: dict[str, Any] = {"cov_recall": None, "cov_precision": None}
    if struc_cutoff is not None and comp_cutoff is not None:
        out["cov_recall"] = float(((s_recall <= struc_cutoff) & (c_recall <= comp_cutoff)).double().mean())
        out["cov_precision"] = float(((s_precision <= struc_cutoff) & (c_precision <= comp_cutoff)).sum()) / n_gen
    out.update(
        amsd_recall=float(s_recall.mean()),
        amsd_precision=float(s_precision.mean()),
        amcd_recall=float(c_recall.mean()),
        amcd_precision=float(c_precision.mean()),
    )
    return out
