"""Datasets and metrics contributed through the ``register_datasets`` and
``register_metrics`` hooks.

:class:`DatasetSpec` and :class:`MetricSpec` are defined next to the hooks that take them
(:mod:`crystal.hookspecs`) and re-exported here.
"""

from __future__ import annotations

from typing import Any

from crystal.errors import ConfigError
from crystal.hookspecs import DatasetSpec, MetricSpec

__all__ = ["DatasetSpec", "MetricSpec", "datasets", "metrics"]


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
