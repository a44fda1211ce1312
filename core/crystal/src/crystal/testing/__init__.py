"""Testing helpers for crystal and for plugin authors (in the spirit of ``e3nn.util.test``).

* :mod:`crystal.testing.transforms` — random rotations, translations, permutations,
  supercells and alternative cell choices of a :class:`~crystal.CrystalBatch`.
* :func:`assert_invariant` / :func:`assert_equivariant_forces` /
  :func:`assert_forces_match_finite_differences` — symmetry and consistency checks for any
  component.
* :func:`check_potential_symmetries` — every symmetry of a potential in one call (rotation,
  translation, permutation, supercell extensivity, float32/float64), built from
  :func:`assert_translation_invariant`, :func:`assert_permutation_invariant`,
  :func:`assert_supercell_extensive`, :func:`assert_dtype_follows_input` and
  :func:`assert_outputs_close`.
* :class:`LennardJones` — a small, exact, differentiable reference potential.
* :mod:`crystal.testing.contracts` — the contract every installed plugin must honour, as
  functions to call from a test: ``check_plugin("potential", "my-potential")``.
* :mod:`crystal.testing.pytest_plugin` — pytest fixtures for plugin authors
  (``fake_distribution``: throw-away installed distributions with entry points), loaded by
  pytest through the ``pytest11`` entry point.

The names below are imported on first use, so ``import crystal.testing`` (which pytest does
when it loads the plugin) imports neither torch nor pytest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "assert_close": "crystal.testing.checks",
    "assert_dtype_follows_input": "crystal.testing.checks",
    "assert_equivariant_forces": "crystal.testing.checks",
    "assert_forces_match_finite_differences": "crystal.testing.checks",
    "assert_invariant": "crystal.testing.checks",
    "assert_outputs_close": "crystal.testing.checks",
    "assert_permutation_invariant": "crystal.testing.checks",
    "assert_stress_matches_finite_differences": "crystal.testing.checks",
    "assert_supercell_extensive": "crystal.testing.checks",
    "assert_translation_invariant": "crystal.testing.checks",
    "check_potential_symmetries": "crystal.testing.checks",
    "LennardJones": "crystal.testing.potentials",
    "permute": "crystal.testing.transforms",
    "random_rotation": "crystal.testing.transforms",
    "rotate": "crystal.testing.transforms",
    "supercell": "crystal.testing.transforms",
    "translate": "crystal.testing.transforms",
    "unimodular_recell": "crystal.testing.transforms",
}

__all__ = [
    "LennardJones",
    "assert_close",
    "assert_dtype_follows_input",
    "assert_equivariant_forces",
    "assert_forces_match_finite_differences",
    "assert_invariant",
    "assert_outputs_close",
    "assert_permutation_invariant",
    "assert_stress_matches_finite_differences",
    "assert_supercell_extensive",
    "assert_translation_invariant",
    "check_potential_symmetries",
    "permute",
    "random_rotation",
    "rotate",
    "supercell",
    "translate",
    "unimodular_recell",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'crystal.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from crystal.testing.checks import (
        assert_close,
        assert_dtype_follows_input,
        assert_equivariant_forces,
        assert_forces_match_finite_differences,
        assert_invariant,
        assert_outputs_close,
        assert_permutation_invariant,
        assert_stress_matches_finite_differences,
        assert_supercell_extensive,
        assert_translation_invariant,
        check_potential_symmetries,
    )
    from crystal.testing.potentials import LennardJones
    from crystal.testing.transforms import permute, random_rotation, rotate, supercell, translate, unimodular_recell
