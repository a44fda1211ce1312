"""Metrics of generated crystals, usable on any generator's output.

* :func:`csp_metrics` — crystal structure prediction: match rate and RMSE over ``k``
  samples per test structure (CDVAE / DiffCSP protocol, :mod:`crystal_metrics.csp`);
* :func:`generation_metrics` — ab initio generation: structural and compositional
  validity, Wasserstein distances of density and number of elements, coverage
  (:mod:`crystal_metrics.generation`);
* :func:`sun_metrics` — stability (energy above a hull built with the same potential),
  uniqueness and novelty (:mod:`crystal_metrics.sun`).

Names resolve on first use so ``import crystal_metrics`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crystal_metrics.coverage import COVERAGE_CUTOFFS, compute_coverage, coverage_cutoffs
    from crystal_metrics.csp import csp_metrics
    from crystal_metrics.generation import generation_metrics
    from crystal_metrics.sun import sun_metrics
    from crystal_metrics.validity import composition_validity, smact_validity, structure_validity

__all__ = [
    "COVERAGE_CUTOFFS",
    "composition_validity",
    "compute_coverage",
    "coverage_cutoffs",
    "csp_metrics",
    "generation_metrics",
    "smact_validity",
    "structure_validity",
    "sun_metrics",
]

_WHERE = {
    "COVERAGE_CUTOFFS": "coverage",
    "compute_coverage": "coverage",
    "coverage_cutoffs": "coverage",
    "csp_metrics": "csp",
    "generation_metrics": "generation",
    "sun_metrics": "sun",
    "composition_validity": "validity",
    "smact_validity": "validity",
    "structure_validity": "validity",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"crystal_metrics.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'crystal_metrics' has no attribute {name!r}")
