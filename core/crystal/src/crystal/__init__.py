"""crystal: one typed contract for AI-driven discovery of crystalline materials.

``crystal`` is the minimal core (distribution ``crystal-core``): the contract a plugin
author needs and nothing else. Importing it is cheap: it does not import torch, pymatgen or
any plugin. The public names below are resolved on first use (PEP 562), so ``crystal plugins
list`` stays fast while ``from crystal import CrystalBatch`` works as expected.

The batteries are distributions of their own: ``crystal-sim`` (``crystal_sim``: relax, MD,
ASE calculator), ``crystal-train`` (``crystal_train``), ``crystal-metrics``
(``crystal_metrics``), ``crystal-xrd`` (``crystal_xrd``) and ``crystal-pipeline``
(``crystal_pipeline``). Their old homes (``crystal.relax``, ``from crystal import Pipeline``,
...) raise an :class:`ImportError` naming the distribution and the new import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from crystal._moved import MOVED_NAMES, install_moved_finder, moved_error

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # data
    "CrystalBatch": "crystal.batch",
    # components
    "Characterizer": "crystal.components",
    "ConditionError": "crystal.components",
    "GenerationResult": "crystal.components",
    "RejectedSample": "crystal.components",
    "generate_valid": "crystal.generation",
    "Component": "crystal.components",
    "ComponentConfig": "crystal.components",
    "Encoder": "crystal.components",
    "GenerationConditions": "crystal.components",
    "Generator": "crystal.components",
    "Kind": "crystal.components",
    "Potential": "crystal.components",
    "PotentialOutput": "crystal.components",
    "Representation": "crystal.components",
    # settings models
    "StrictModel": "crystal.config",
    # devices
    "resolve_device": "crystal.device",
    # discovery
    "list_plugins": "crystal.plugins",
    "load": "crystal.plugins",
    "load_class": "crystal.plugins",
    # hooks
    "hookimpl": "crystal.hookspecs",
    # io
    "read_structures": "crystal.io",
    "write_structures": "crystal.io",
    # errors
    "ConfigError": "crystal.errors",
    "CrystalError": "crystal.errors",
    "DuplicatePluginError": "crystal.errors",
    "PipelineError": "crystal.errors",
    "PluginError": "crystal.errors",
    "PluginLoadError": "crystal.errors",
    "PluginNotFoundError": "crystal.errors",
    "StructureError": "crystal.errors",
    "UnknownWeightsError": "crystal.errors",
    "WeightsError": "crystal.errors",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

install_moved_finder()


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        if name in MOVED_NAMES:
            raise moved_error(f"crystal.{name}", MOVED_NAMES[name])
        raise AttributeError(f"module 'crystal' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from crystal.batch import CrystalBatch as CrystalBatch
    from crystal.components import (
        Characterizer as Characterizer,
        Component as Component,
        ComponentConfig as ComponentConfig,
        Encoder as Encoder,
        GenerationConditions as GenerationConditions,
        Generator as Generator,
        Kind as Kind,
        Potential as Potential,
        PotentialOutput as PotentialOutput,
        Representation as Representation,
    )
    from crystal.config import StrictModel as StrictModel
    from crystal.device import resolve_device as resolve_device
    from crystal.errors import (
        ConfigError as ConfigError,
        CrystalError as CrystalError,
        DuplicatePluginError as DuplicatePluginError,
        PipelineError as PipelineError,
        PluginError as PluginError,
        PluginLoadError as PluginLoadError,
        PluginNotFoundError as PluginNotFoundError,
        StructureError as StructureError,
        UnknownWeightsError as UnknownWeightsError,
        WeightsError as WeightsError,
    )
    from crystal.hookspecs import hookimpl as hookimpl
    from crystal.io import read_structures as read_structures, write_structures as write_structures
    from crystal.plugins import list_plugins as list_plugins, load as load, load_class as load_class
