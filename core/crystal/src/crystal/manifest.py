"""Static plugin manifests, read without importing plugin code or torch.

A plugin distribution declares one manifest through the ``crystal.manifests`` entry-point
group, whose value names a TOML file inside a package (the napari npe2 convention)::

    [project.entry-points."crystal.manifests"]
    crystal-chgnet = "crystal_chgnet:crystal_plugin.toml"

(setuptools validates entry-point values as dotted names, so the file name uses ``_``.)
The file is located with :func:`importlib.util.find_spec` on the top-level package, which
finds the package directory without executing it. Its schema is :class:`PluginManifest`
(strict: unknown keys are errors)::

    [plugin]
    description = "CHGNet universal potential"

    [[components]]
    kind = "potential"
    name = "chgnet"
    description = "..."
    consumes = "crystal"
    produces = "energy+forces+stress"
    devices = ["cpu", "cuda"]
    weights = ["chgnet-0.3.0"]

    [[weights]]
    name = "chgnet-0.3.0"
    file = "package:chgnet/pretrained/0.3.0/chgnet_0.3.0_e29f68s314m37.pth.tar"
    sha256 = "..."
    licence = "BSD-3-Clause"
    training_data = "MPtrj"
"""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from crystal.errors import PluginError

__all__ = [
    "ComponentManifest",
    "PluginManifest",
    "PluginMeta",
    "WeightsManifest",
    "locate_manifest",
    "read_manifest",
]

KindName = Literal["representation", "encoder", "generator", "characterizer", "potential"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WeightsManifest(_Strict):
    """One set of named weights."""

    name: str = Field(description="unique weights name, e.g. 'cgcnn-perov5-heat_ref'")
    file: str = Field(description="'package:<pkg>/<path>' (package resource), a local path, or an http(s) URL (cached)")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="hex sha256 of the file")
    licence: str = Field(description="SPDX licence of the weights")
    training_data: str = Field(description="data set (and split) the weights were trained on")
    metrics: dict[str, float | str] = Field(default_factory=dict, description="reported metrics, units in keys")
    description: str = ""


class ComponentManifest(_Strict):
    """One component (one entry point) of a plugin."""

    kind: KindName
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    description: str
    consumes: str = "crystal"
    produces: str = "crystal"
    devices: tuple[Literal["cpu", "cuda"], ...] = ("cpu", "cuda")
    weights: tuple[str, ...] = ()
    default_weights: str | None = None

    @field_validator("default_weights")
    @classmethod
    def _default_in_weights(cls, v: str | None, info):  # type: ignore[no-untyped-def]
        if v is not None and v not in info.data.get("weights", ()):
            raise ValueError(f"default_weights {v!r} is not listed in weights")
        return v


class PluginMeta(_Strict):
    description: str
    homepage: str | None = None
    licence: str | None = None


class PluginManifest(_Strict):
    """The whole ``crystal_plugin.toml`` file."""

    plugin: PluginMeta
    components: tuple[ComponentManifest, ...] = ()
    weights: tuple[WeightsManifest, ...] = ()

    def component(self, kind: str, name: str) -> ComponentManifest | None:
        for c in self.components:
            if c.kind == kind and c.name == name:
                return c
        return None


def locate_manifest(value: str) -> Path:
    """Path of the manifest named by an entry-point value ``"package:file.toml"``.

    Only the top-level package is located (``find_spec`` on a top-level name does not
    execute it); sub-packages in the value are resolved as directories.
    """
    if ":" not in value:
        raise PluginError(f"manifest entry point {value!r} must look like 'package:file.toml'")
    module, _, filename = value.partition(":")
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        raise PluginError(f"manifest entry point {value!r}: package {top!r} is not installed")
    for location in spec.submodule_search_locations:
        path = Path(location, *rest, filename)
        if path.is_file():
            return path
    raise PluginError(f"manifest entry point {value!r}: file {filename!r} not found in package {module!r}")


def read_manifest(path: Path) -> PluginManifest:
    """Parse and validate a manifest file; errors name the file and the field."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PluginError(f"{path}: cannot read plugin manifest: {exc}") from None
    try:
        return PluginManifest.model_validate(data)
    except ValidationError as exc:
        errs = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise PluginError(f"{path}: invalid plugin manifest: {errs}") from None
