"""Datasets and metrics contributed through the ``register_datasets`` and
``register_metrics`` hooks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crystal.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from pymatgen.core import Structure

    from crystal.batch import CrystalBatch

__all__ = ["DatasetSpec", "MetricSpec", "datasets", "metrics"]


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset. ``load(limit)`` returns ``(ids, structures)`` (at most ``limit``)."""

    name: str
    description: str
    load: Callable[[int | None], tuple[Sequence[str], Sequence[Structure]]]
    licence: str = ""
    source: str = ""


@dataclass(frozen=True)
class MetricSpec:
    """A named per-crystal metric: ``compute(batch)`` → ``(B,)`` tensor in ``unit``."""

    name: str
    unit: str
    description: str
    compute: Callable[[CrystalBatch], torch.Tensor]


def _collect(hook_name: str, kind: str) -> dict[str, Any]:
    from crystal.hooks import plugin_manager

    found: dict[str, Any] = {}

    def register(spec: Any) -> None:
        if spec.name in found:
            raise ConfigError(f"{kind} {spec.name!r} is registered twice")
        found[spec.name] = spec

    getattr(plugin_manager().hook, hook_name)(register=register)
    return found


def datasets() -> dict[str, DatasetSpec]:
    """Every registered dataset by name."""
    return _collect("register_datasets", "dataset")


def metrics() -> dict[str, MetricSpec]:
    """Every registered metric by name."""
    return _collect("register_metrics", "metric")
