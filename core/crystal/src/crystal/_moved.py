"""Clear errors for what moved out of crystal-core into the battery distributions.

``import crystal.relax`` or ``from crystal import Pipeline`` (homes before the split of
crystal-core) raise an :class:`ImportError` that names the distribution to install and the
new import, instead of a bare ``ModuleNotFoundError``.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType

__all__ = ["MOVED_MODULES", "MOVED_NAMES", "install_moved_finder", "moved_error"]

# old module -> (new module, distribution)
MOVED_MODULES: dict[str, tuple[str, str]] = {
    "crystal.relax": ("crystal_sim.relax", "crystal-sim"),
    "crystal.md": ("crystal_sim.md", "crystal-sim"),
    "crystal.calculator": ("crystal_sim.calculator", "crystal-sim"),
    "crystal.training": ("crystal_train", "crystal-train"),
    "crystal.metrics": ("crystal_metrics", "crystal-metrics"),
    "crystal.xrd": ("crystal_xrd", "crystal-xrd"),
    "crystal.pipeline": ("crystal_pipeline", "crystal-pipeline"),
}

# old ``from crystal import NAME`` -> (new module, distribution)
MOVED_NAMES: dict[str, tuple[str, str]] = {
    "CrystalCalculator": ("crystal_sim.calculator", "crystal-sim"),
    "RelaxResult": ("crystal_sim.relax", "crystal-sim"),
    "Pipeline": ("crystal_pipeline", "crystal-pipeline"),
    "load_pipeline": ("crystal_pipeline", "crystal-pipeline"),
    "run_pipeline": ("crystal_pipeline", "crystal-pipeline"),
}


def moved_error(old: str, where: tuple[str, str]) -> ImportError:
    """The error for ``old``, which now lives in module ``where[0]`` of distribution ``where[1]``."""
    new, dist = where
    leaf = old.rsplit(".", 1)[-1]
    how = f"from {new} import {leaf}" if leaf in MOVED_NAMES else f"import {new}"
    return ImportError(
        f"{old} is no longer part of crystal-core: it moved to the {dist} distribution "
        f"(pip install {dist}); use `{how}`",
        name=old,
    )


class _MovedFinder(importlib.abc.MetaPathFinder):
    """Answers ``crystal.<moved>`` (and its submodules) with :func:`moved_error`."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith("crystal."):
            return None
        head = ".".join(fullname.split(".")[:2])
        where = MOVED_MODULES.get(head)
        if where is None:
            return None
        new = where[0] + fullname[len(head) :]
        raise moved_error(fullname, (new, where[1]))


def install_moved_finder() -> None:
    """Put the finder at the end of ``sys.meta_path`` once (real modules are found first)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
