"""Testing helpers for crystal and for plugin authors (in the spirit of ``e3nn.util.test``).

* :mod:`crystal.testing.transforms` — random rotations, translations, permutations,
  supercells and alternative cell choices of a :class:`~crystal.CrystalBatch`.
* :func:`assert_invariant` / :func:`assert_equivariant_forces` /
  :func:`assert_forces_match_finite_differences` — symmetry and consistency checks for any
  component.
* :class:`LennardJones` — a small, exact, differentiable reference potential.
* :mod:`crystal.testing.contracts` — the contract every installed plugin must honour, as
  functions to call from a test: ``check_plugin("potential", "my-potential")``.
"""

from __future__ import annotations

from crystal.testing.checks import (
    assert_equivariant_forces,
    assert_forces_match_finite_differences,
    assert_invariant,
    assert_stress_matches_finite_differences,
)
from crystal.testing.potentials import LennardJones
from crystal.testing.transforms import permute, random_rotation, rotate, supercell, translate, unimodular_recell

__all__ = [
    "LennardJones",
    "assert_equivariant_forces",
    "assert_forces_match_finite_differences",
    "assert_invariant",
    "assert_stress_matches_finite_differences",
    "permute",
    "random_rotation",
    "rotate",
    "supercell",
    "translate",
    "unimodular_recell",
]
