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

The file is **generated** from the component classes (the single source of truth, as napari
npe2 compiles its manifests): :func:`compile_manifest` imports a distribution's components
through its entry points and reads their declarations (``description``, ``consumes``,
``produces``, ``devices``, ``weights`` as a :class:`NamedWeights`, ``default_weights``); the
``[plugin]`` table comes from the distribution's metadata (``pyproject.toml``: ``description``,
``license``, ``[project.urls] Homepage``). ``crystal plugins manifest DIST --write`` writes it,
``--check`` fails on drift.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import re
import tomllib
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import Field, ValidationError, field_validator, model_validator

from crystal.config import StrictModel
from crystal.errors import PluginError, PluginLoadError, PluginNotFoundError

if TYPE_CHECKING:
    from pydantic import GetCoreSchemaHandler
    from pydantic_core import CoreSchema

    from crystal.components import Component

__all__ = [
    "MANIFEST_FILE",
    "ComponentManifest",
    "NamedWeights",
    "PluginManifest",
    "PluginMeta",
    "WeightsManifest",
    "compile_manifest",
    "component_class_problem",
    "component_manifest",
    "locate_manifest",
    "manifest_diff",
    "manifest_file",
    "read_manifest",
    "render_manifest",
]

#: the conventional file name (setuptools only accepts identifier characters in entry-point values)
MANIFEST_FILE = "crystal_plugin.toml"

KindName = Literal["representation", "encoder", "generator", "characterizer", "potential"]
_KIND_ORDER: tuple[str, ...] = get_args(KindName)


class WeightsManifest(StrictModel):
    """One set of named weights."""

    name: str = Field(description="unique weights name, e.g. 'cgcnn-perov5-heat_ref'")
    file: str = Field(
        description="where the file is: 'package:<pkg>/<path>' (package resource), a local path, or a remote "
        "http(s):// or file:// URL (the authors' own release location), downloaded once into the weights "
        "cache ($CRYSTAL_CACHE)"
    )
    sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="hex sha256 of the file; None only for a remote file whose authors publish no digest: it is "
        "then pinned at first download (trust on first use, shown as 'unpinned' until then)",
    )
    size: int | None = Field(
        None, ge=0, description="size of the file in bytes (checked after a download; shown by crystal weights list)"
    )
    licence: str = Field(description="SPDX licence of the weights")
    training_data: str = Field(description="data set (and split) the weights were trained on")
    citation: str | None = Field(None, description="the paper (or DOI) to cite when using the weights")
    metrics: dict[str, int | float | str] = Field(default_factory=dict, description="reported metrics, units in keys")
    description: str = ""
    format: Literal["weights-only", "pickled-module"] = Field(
        "weights-only",
        description="'weights-only': loaded with torch.load(weights_only=True) (or the loader's own safe reader); "
        "'pickled-module': a whole pickled torch module (e.g. mace-torch's .model), never unpickled by a loader: "
        "`crystal weights import --trust-pickle FILE` converts it once, with `converter`, into a weights-only file",
    )
    converter: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="'package.module:function' turning the unpickled object of a 'pickled-module' file into a "
        "weights-only payload (tensors, str, numbers, lists, dicts)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> WeightsManifest:
        if self.sha256 is None and not self.remote:
            raise ValueError(f"weights {self.name!r}: sha256 may only be omitted for a remote (URL) file")
        if self.format == "pickled-module" and self.converter is None:
            raise ValueError(f"weights {self.name!r}: format 'pickled-module' needs a converter ('module:function')")
        if self.format == "weights-only" and self.converter is not None:
            raise ValueError(f"weights {self.name!r}: a converter only applies to format 'pickled-module'")
        return self

    @property
    def remote(self) -> bool:
        """Whether :attr:`file` is a URL (downloaded into the cache) rather than a package resource or path."""
        return self.file.startswith(("http://", "https://", "file://"))

    @property
    def pinned(self) -> bool:
        """Whether the registry knows the file's sha256 (else it is pinned at first download)."""
        return self.sha256 is not None


class NamedWeights(tuple[str, ...]):
    """The named weights a component can load, declared once, on the component class.

    A tuple of the weights names (so ``"x" in cls.weights``, ``", ".join(cls.weights)`` and
    ``tuple(cls.weights) == ("a", "b")`` work as for a plain tuple) that also carries each
    name's :class:`WeightsManifest`, from which ``crystal plugins manifest`` writes the
    ``[[weights]]`` tables. As pydantic metadata it restricts a config field to its names, with
    the error and JSON-schema ``enum`` of a ``Literal``, while type checkers see a ``str``::

        WEIGHTS = NamedWeights(WeightsManifest(name="foo-mp", file="package:crystal_foo/weights/foo-mp.pt", ...))

        class FooConfig(ComponentConfig):
            weights: Annotated[str, WEIGHTS] | None = Field(None, description="shipped weights")

        class FooEncoder(Encoder):
            weights = WEIGHTS
    """

    _entries: dict[str, WeightsManifest]

    def __new__(cls, *entries: WeightsManifest) -> NamedWeights:
        table: dict[str, WeightsManifest] = {}
        for entry in entries:
            if not isinstance(entry, WeightsManifest):
                raise TypeError(f"NamedWeights takes WeightsManifest entries, got {entry!r}")
            if entry.name in table:
                raise ValueError(f"weights {entry.name!r} are declared twice")
            table[entry.name] = entry
        self = super().__new__(cls, tuple(table))
        self._entries = table
        return self

    def __getnewargs__(self) -> tuple[WeightsManifest, ...]:  # type: ignore[override]
        return self.entries

    @property
    def entries(self) -> tuple[WeightsManifest, ...]:
        """The declarations, in order."""
        return tuple(self._entries.values())

    def entry(self, name: str) -> WeightsManifest:
        """The declaration of ``name``."""
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"no weights named {name!r} here (declared: {', '.join(self) or 'none'})") from None

    def __repr__(self) -> str:
        return f"NamedWeights({', '.join(map(repr, self))})"

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        from pydantic_core import core_schema

        if not self:
            raise TypeError("a config field cannot choose among no weights (NamedWeights is empty)")
        # a str checked against the names (not a literal schema), so that a typo gets a
        # "did you mean" hint; the JSON schema still lists the names as an enum
        return core_schema.no_info_after_validator_function(
            self._validate, core_schema.str_schema(), metadata={"pydantic_js_updates": {"enum": list(self)}}
        )

    def _validate(self, value: str) -> str:
        if value in self._entries:
            return value
        import difflib

        from pydantic_core import PydanticCustomError

        from crystal.weights import checkpoint_hint

        close = difflib.get_close_matches(value, list(self), n=2, cutoff=0.6)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        hint += checkpoint_hint(value)
        raise PydanticCustomError(
            "unknown_weights",
            "unknown weights {value}{hint} (choose from {choices})",
            {"value": repr(value), "hint": hint, "choices": ", ".join(map(repr, self))},
        )


class ComponentManifest(StrictModel):
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


class PluginMeta(StrictModel):
    description: str
    homepage: str | None = None
    licence: str | None = None


class PluginManifest(StrictModel):
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


# --------------------------------------------------------------------------- generation
def component_class_problem(cls: Any, kind: str, name: str) -> str | None:
    """Why ``cls`` cannot be the ``kind`` component named ``name`` (``None`` when it can)."""
    from crystal.components import Component, Kind

    base = Kind.parse(kind)
    if not (isinstance(cls, type) and issubclass(cls, Component) and cls.kind is base):
        return f"{cls!r} is not a subclass of crystal.{base.singular.capitalize()}"
    if getattr(cls, "name", None) != name:
        return f"class {cls.__qualname__} declares name {getattr(cls, 'name', None)!r}, but its entry point is named {name!r}"
    return None


def component_manifest(cls: type[Component]) -> ComponentManifest:
    """The ``[[components]]`` entry of a component class, from its declarations.

    ``description`` falls back to the first line of the class docstring.
    """
    description = cls.description.strip() or (cls.__doc__ or "").strip().split("\n", 1)[0].strip()
    if not description:
        raise PluginError(f"{cls.__module__}.{cls.__qualname__}: declare a `description` (one line, for listings)")
    try:
        return ComponentManifest(
            kind=cls.kind.singular,  # type: ignore[arg-type]
            name=cls.name,
            description=description,
            consumes=cls.consumes,
            produces=cls.produces,
            devices=tuple(cls.devices),  # type: ignore[arg-type]
            weights=tuple(cls.weights),
            default_weights=cls.default_weights,
        )
    except ValidationError as exc:
        errs = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise PluginError(f"{cls.__module__}.{cls.__qualname__}: invalid declarations: {errs}") from None


def _distribution(distribution: str | metadata.Distribution) -> metadata.Distribution:
    if isinstance(distribution, metadata.Distribution):
        return distribution
    try:
        return metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        raise PluginNotFoundError(f"distribution {distribution!r} is not installed") from None


def _dist_name(dist: metadata.Distribution) -> str:
    return str(dist.metadata["Name"] or "<unknown>")


def _meta_value(dist: metadata.Distribution, key: str) -> str | None:
    values = [str(v).strip() for v in dist.metadata.get_all(key) or []]
    values = [v for v in values if v and v.upper() != "UNKNOWN"]
    return values[0] if values else None


def _plugin_meta(dist: metadata.Distribution) -> PluginMeta:
    name = _dist_name(dist)
    description = _meta_value(dist, "Summary")
    if description is None:
        raise PluginError(
            f"{name}: the distribution has no description: set `description` in [project] of pyproject.toml"
        )
    homepage = None
    for url in dist.metadata.get_all("Project-URL") or []:
        label, _, value = str(url).partition(",")
        if re.sub(r"[^a-z]", "", label.lower()) == "homepage" and value.strip():
            homepage = value.strip()
            break
    homepage = homepage or _meta_value(dist, "Home-page")
    licence = _meta_value(dist, "License-Expression") or _meta_value(dist, "License")
    return PluginMeta(description=" ".join(description.split()), homepage=homepage, licence=licence)


def _kind_of_group(group: str) -> str | None:
    if group.startswith("crystal.") and group.endswith("s"):
        kind = group[len("crystal.") : -1]
        if kind in _KIND_ORDER:
            return kind
    return None


def compile_manifest(distribution: str | metadata.Distribution) -> PluginManifest:
    """The manifest of an installed distribution, compiled from its component classes.

    Imports every component the distribution registers under ``crystal.<kind>s`` and reads
    its declarations (:func:`component_manifest`); the ``[[weights]]`` tables are the
    :class:`NamedWeights` entries of their ``weights``; ``[plugin]`` comes from the
    distribution's metadata. Components are sorted by kind and name, weights follow the
    components' order, so the result is deterministic.
    """
    dist = _distribution(distribution)
    name = _dist_name(dist)
    found: list[tuple[int, str, type[Component]]] = []
    for ep in dist.entry_points:
        kind = _kind_of_group(ep.group)
        if kind is None:
            continue
        try:
            cls = ep.load()
        except Exception as exc:
            raise PluginLoadError(
                f"{name}: {kind} {ep.name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}"
            ) from None
        problem = component_class_problem(cls, kind, ep.name)
        if problem is not None:
            raise PluginLoadError(f"{name}: {kind} {ep.name!r} ({ep.value}): {problem}")
        found.append((_KIND_ORDER.index(kind), ep.name, cls))
    if not found:
        groups = ", ".join(f"crystal.{k}s" for k in _KIND_ORDER)
        raise PluginError(f"{name} registers no component (no entry point in {groups})")
    components: list[ComponentManifest] = []
    weights: dict[str, WeightsManifest] = {}
    for _, _, cls in sorted(found, key=lambda t: (t[0], t[1])):
        comp = component_manifest(cls)
        declared = cls.weights.entries if isinstance(cls.weights, NamedWeights) else ()
        for entry in declared:
            if entry.name in weights and weights[entry.name] != entry:
                raise PluginError(f"{name}: weights {entry.name!r} are declared differently by two components")
            weights.setdefault(entry.name, entry)
        missing = [w for w in comp.weights if w not in weights]
        if missing:
            raise PluginError(
                f"{name}: {comp.kind} {comp.name!r} lists weights {missing} without declaring them: "
                "set `weights = NamedWeights(WeightsManifest(name=..., file=..., sha256=..., ...), ...)` on the class"
            )
        components.append(comp)
    return PluginManifest(plugin=_plugin_meta(dist), components=tuple(components), weights=tuple(weights.values()))


def _toml_string(value: str) -> str:
    out = ['"']
    for ch in value:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


def _toml_table(data: Mapping[str, Any], skip_none: bool = True) -> list[str]:
    return [
        f"{k if _BARE_KEY.match(k) else _toml_string(k)} = {_toml_value(v)}"
        for k, v in data.items()
        if not (skip_none and v is None)
    ]


def render_manifest(manifest: PluginManifest, distribution: str) -> str:
    """The TOML text of ``manifest`` as ``crystal plugins manifest --write`` writes it.

    Deterministic: fixed key order (the schema's), a header naming the generator.
    """
    lines = [
        f"# Static manifest of {distribution}, GENERATED from its component classes by",
        f"#     crystal plugins manifest {distribution} --write",
        "# Do not edit: change the classes (description, devices, weights, ...) or pyproject.toml",
        "# ([plugin]: description, license, [project.urls] Homepage) and regenerate.",
        "# `crystal plugins list` reads this file without importing the package or torch.",
        "",
        "[plugin]",
        *_toml_table(manifest.plugin.model_dump()),
    ]
    for comp in manifest.components:
        data = comp.model_dump()
        lines += ["", "[[components]]", *_toml_table(data)]
    for entry in manifest.weights:
        data = entry.model_dump()
        metrics = data.pop("metrics")
        if not data["description"]:
            data.pop("description")
        if data["format"] == "weights-only":
            data.pop("format")
        lines += ["", "[[weights]]", *_toml_table(data)]
        if metrics:
            lines += ["", "[weights.metrics]", *_toml_table(metrics)]
    return "\n".join(lines) + "\n"


def _manifest_entry_point(dist: metadata.Distribution) -> str:
    values = [ep.value for ep in dist.entry_points if ep.group == "crystal.manifests"]
    if not values:
        name = _dist_name(dist)
        package = name.replace("-", "_")
        raise PluginError(
            f"{name} declares no crystal.manifests entry point; add to pyproject.toml:\n"
            f'[project.entry-points."crystal.manifests"]\n{name} = "{package}:{MANIFEST_FILE}"\n'
            f'[tool.setuptools.package-data]\n{package} = ["{MANIFEST_FILE}"]\n'
            "and reinstall (pip install -e .)"
        )
    return values[0]


def manifest_file(distribution: str | metadata.Distribution, project: Path | None = None) -> Path:
    """Where the manifest of ``distribution`` lives (the file need not exist yet).

    The ``crystal.manifests`` entry point names it; the package is found with ``find_spec``
    (an editable install resolves to the source tree), or, when ``project`` (a folder with
    ``pyproject.toml``) is given, under ``project/src/`` or ``project/``.
    """
    dist = _distribution(distribution)
    value = _manifest_entry_point(dist)
    module, _, filename = value.partition(":")
    parts = module.split(".")
    if not filename:
        raise PluginError(f"manifest entry point {value!r} must look like 'package:file.toml'")
    if project is not None:
        for base in (project / "src", project):
            if base.joinpath(*parts).is_dir():
                return base.joinpath(*parts, filename)
        raise PluginError(f"package {module!r} (entry point {value!r}) not found under {project}/src or {project}")
    spec = importlib.util.find_spec(parts[0])
    if spec is None or not spec.submodule_search_locations:
        raise PluginError(f"manifest entry point {value!r}: package {parts[0]!r} is not installed")
    locations = [Path(loc, *parts[1:]) for loc in spec.submodule_search_locations]
    for location in locations:
        if (location / filename).is_file():
            return location / filename
    return locations[0] / filename


def manifest_diff(distribution: str | metadata.Distribution, path: Path | None = None) -> str:
    """Unified diff from the manifest file (``path``, default :func:`manifest_file`) to the
    one compiled from the classes; empty when they agree."""
    dist = _distribution(distribution)
    target = manifest_file(dist) if path is None else path
    expected = render_manifest(compile_manifest(dist), _dist_name(dist))
    try:
        current = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        current = ""
    if current == expected:
        return ""
    return "".join(
        difflib.unified_diff(
            current.splitlines(keepends=True),
            expected.splitlines(keepends=True),
            fromfile=f"{target} (on disk)",
            tofile=f"{target} (from the classes)",
        )
    )
