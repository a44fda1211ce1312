"""Named exception types raised by crystal.

Every error a user can trigger derives from :class:`CrystalError`, so that the CLI can
print one clean line (and exit non-zero) while ``--debug`` shows the traceback.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "CrystalError",
    "DuplicatePluginError",
    "PipelineError",
    "PluginError",
    "PluginLoadError",
    "PluginNotFoundError",
    "StructureError",
    "UnknownWeightsError",
    "WeightsError",
]


class CrystalError(Exception):
    """Base class of every error raised on purpose by crystal."""


class ConfigError(CrystalError, ValueError):
    """A configuration (pipeline file, component config, ``--set`` override) is invalid.

    The message names the file, the step id and the field, and lists allowed values.
    """


class PipelineError(CrystalError):
    """A pipeline failed while running (not while validating: that is ConfigError)."""


class StructureError(CrystalError, ValueError):
    """A structure is unusable: unparseable file, NaN coordinates, overlapping atoms,
    disordered sites, empty cell, elements a model does not cover ..."""


class PluginError(CrystalError):
    """Base class for plugin discovery and loading errors."""


class PluginNotFoundError(PluginError, LookupError):
    """No installed plugin of that kind has that name (the message suggests close names)."""


class PluginLoadError(PluginError, ImportError):
    """A plugin's entry point is declared but its code failed to import or is invalid."""


class DuplicatePluginError(PluginError):
    """Two distributions claim the same plugin name for the same kind."""


class WeightsError(CrystalError):
    """Named weights are unknown, missing, or fail their sha256 checksum."""


class UnknownWeightsError(WeightsError, ConfigError):
    """No registered weights have this name (a usage error: the CLI exits 2)."""
