"""crystal: one typed contract for AI-driven discovery of crystalline materials.

Importing ``crystal`` is cheap: it does not import torch, pymatgen or any plugin. The
public names below are resolved on first use (PEP 562), so ``crystal plugins list`` stays
fast while ``from crystal import CrystalBatch`` works as expected. The relaxer is
``crystal.relax.relax`` (not re-exported: the name would shadow its module).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # data
    "CrystalBatch": "crystal.batch",
    # components
    "Characterizer": "crystal.components",
    "Component": "crystal.components",
    "ComponentConfig": "crystal.components",
    "Encoder": "crystal.components",
    "GenerationConditions": "crystal.components",
    "Generator": "crystal.components",
    "Kind": "crystal.components",
    "Potential": "crystal.components",
    "PotentialOutput": "crystal.components",
    "Representation": "crystal.components",
    # devices
    "resolve_device": "crystal.device",
    # discovery
    "list_plugins": "crystal.plugins",
    "load": "crystal.plugins",
    "load_class": "crystal.plugins",
    # hooks
    "hookimpl": "crystal.hookspecs",
    # simulation
    "CrystalCalculator": "crystal.calculator",
    "RelaxResult": "crystal.relax",
    # io
    "read_structures": "crystal.io",
    "write_structures": "crystal.io",
    # pipelines
    "Pipeline": "crystal.pipeline",
    "load_pipeline": "crystal.pipeline",
    "run_pipeline": "crystal.pipeline",
    # errors
    "ConfigError": "crystal.errors",
    "CrystalError": "crystal.errors",
    "DuplicatePluginError": "crystal.errors",
    "PipelineError": "crystal.errors",
    "PluginError": "crystal.errors",
    "PluginLoadError": "crystal.errors",
    "PluginNotFoundError": "crystal.errors",
    "StructureError": "crystal.errors",
    "WeightsError": "crystal.errors",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'crystal' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from crystal.batch import CrystalBatch as CrystalBatch
    from crystal.calculator import CrystalCalculator as CrystalCalculator
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
        WeightsError as WeightsError,
    )
    from crystal.hookspecs import hookimpl as hookimpl
    from crystal.io import read_structures as read_structures, write_structures as write_structures
    from crystal.pipeline import Pipeline as Pipeline, load_pipeline as load_pipeline, run_pipeline as run_pipeline
    from crystal.plugins import list_plugins as list_plugins, load as load, load_class as load_class
    from crystal.relax import RelaxResult as RelaxResult
