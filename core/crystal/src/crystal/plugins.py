"""Plugin discovery and lazy loading.

* One entry-point group per kind: ``crystal.representations``, ``crystal.encoders``,
  ``crystal.generators``, ``crystal.characterizers``, ``crystal.potentials``; the entry
  point's name is the component's name, its value the class (``pkg.module:Class``).
* Listing reads entry-point metadata and the static manifests only (no plugin code, no
  torch). Loading one component imports only that component, through stevedore.
* ``CRYSTAL_PLUGINS`` (allowlist) and ``CRYSTAL_DISABLE_PLUGINS`` (blocklist) take
  comma-separated entries, each a component name, ``kind:name`` or a distribution name.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any, cast

from crystal.errors import DuplicatePluginError, PluginError, PluginLoadError, PluginNotFoundError
from crystal.manifest import (
    ComponentManifest,
    NamedWeights,
    PluginManifest,
    component_class_problem,
    component_manifest,
    locate_manifest,
    read_manifest,
)

if TYPE_CHECKING:
    from crystal.components import Component

__all__ = [
    "ENV_ALLOW",
    "ENV_DISABLE",
    "KINDS",
    "MANIFEST_GROUP",
    "PluginInfo",
    "check_plugins",
    "is_enabled",
    "kind_group",
    "list_plugins",
    "load",
    "load_class",
    "manifests",
]

KINDS = ("representation", "encoder", "generator", "characterizer", "potential")
MANIFEST_GROUP = "crystal.manifests"
ENV_ALLOW = "CRYSTAL_PLUGINS"
ENV_DISABLE = "CRYSTAL_DISABLE_PLUGINS"


def kind_group(kind: str) -> str:
    """Entry-point group of a kind (``"potential"`` → ``"crystal.potentials"``)."""
    k = kind.strip().lower().rstrip("s")
    if k not in KINDS:
        raise PluginNotFoundError(f"unknown component kind {kind!r}; allowed: {', '.join(KINDS)}")
    return f"crystal.{k}s"


@dataclass(frozen=True)
class PluginInfo:
    """What is known about one installed component without importing it."""

    kind: str
    name: str
    value: str
    distribution: str
    version: str
    manifest: ComponentManifest | None = None
    manifest_error: str | None = None
    enabled: bool = True
    also_claimed_by: tuple[str, ...] = field(default=())

    @property
    def description(self) -> str:
        return self.manifest.description if self.manifest else ""


def _split_env(var: str) -> set[str]:
    return {p.strip().lower() for p in os.environ.get(var, "").split(",") if p.strip()}


def is_enabled(kind: str, name: str, dist: str) -> bool:
    """Whether ``CRYSTAL_PLUGINS`` / ``CRYSTAL_DISABLE_PLUGINS`` let plugin ``name`` through.

    ``kind`` is the component kind (or ``"hooks"`` for a hook module), ``dist`` the
    distribution that provides it; each env entry may name the component, ``kind:name`` or
    the distribution (case-insensitive). The allowlist, when set, must match; the blocklist
    must not.
    """
    keys = {name.lower(), f"{kind}:{name}".lower(), dist.lower()}
    allow, deny = _split_env(ENV_ALLOW), _split_env(ENV_DISABLE)
    if allow and not (keys & allow):
        return False
    return not (keys & deny)


def _dist_of(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return ("<unknown>", "")
    return (dist.metadata["Name"] or "<unknown>", dist.version or "")


def manifests() -> dict[str, tuple[PluginManifest | None, str | None]]:
    """Manifests of installed distributions: ``{distribution: (manifest, error)}``."""
    out: dict[str, tuple[PluginManifest | None, str | None]] = {}
    for ep in metadata.entry_points(group=MANIFEST_GROUP):
        dist, _ = _dist_of(ep)
        if dist in out:
            continue
        try:
            out[dist] = (read_manifest(locate_manifest(ep.value)), None)
        except PluginError as exc:
            out[dist] = (None, str(exc))
    return out


def list_plugins(kind: str | None = None, *, include_disabled: bool = False) -> list[PluginInfo]:
    """Every installed component (of ``kind``), from metadata only; sorted by kind, name."""
    mans = manifests()
    infos: list[PluginInfo] = []
    for k in KINDS if kind is None else (kind_group(kind).split(".")[1][:-1],):
        seen: dict[str, list[tuple[metadata.EntryPoint, str, str]]] = {}
        for ep in metadata.entry_points(group=kind_group(k)):
            dist, version = _dist_of(ep)
            claims = seen.setdefault(ep.name, [])
            if all(d != dist for _, d, _ in claims):
                claims.append((ep, dist, version))
        for name, claims in sorted(seen.items()):
            ep, dist, version = claims[0]
            manifest, error = mans.get(dist, (None, f"distribution {dist} declares no crystal.manifests entry point"))
            comp = manifest.component(k, name) if manifest else None
            if manifest is not None and comp is None:
                error = f"manifest of {dist} has no [[components]] entry for {k} {name!r}"
            info = PluginInfo(
                kind=k,
                name=name,
                value=ep.value,
                distribution=dist,
                version=version,
                manifest=comp,
                manifest_error=error,
                enabled=is_enabled(k, name, dist),
                also_claimed_by=tuple(d for _, d, _ in claims[1:]),
            )
            if info.enabled or include_disabled:
                infos.append(info)
    return infos


def _find(kind: str, name: str) -> PluginInfo:
    k = kind_group(kind).split(".")[1][:-1]
    every = list_plugins(k, include_disabled=True)
    for info in every:
        if info.name == name:
            if info.also_claimed_by:
                raise DuplicatePluginError(
                    f"{k} {name!r} is claimed by several distributions: "
                    f"{', '.join((info.distribution, *info.also_claimed_by))}; uninstall one of them"
                )
            if not info.enabled:
                raise PluginNotFoundError(
                    f"{k} {name!r} (from {info.distribution}) is disabled by {ENV_ALLOW}/{ENV_DISABLE}"
                )
            return info
    names = [i.name for i in every if i.enabled]
    close = difflib.get_close_matches(name, names, n=3)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    available = f" (installed: {', '.join(names)})" if names else " (none installed)"
    raise PluginNotFoundError(f"no {k} plugin named {name!r}{hint}{available}")


def load_class(kind: str, name: str) -> type[Component]:
    """Import and return the component class ``kind``/``name`` (stevedore, lazily).

    Raises :class:`PluginNotFoundError` (with a did-you-mean), :class:`DuplicatePluginError`
    or :class:`PluginLoadError` (naming the plugin, the distribution and the error).
    """
    from stevedore import DriverManager, ExtensionManager
    from stevedore.exception import NoMatches

    info = _find(kind, name)
    failures: list[BaseException] = []

    def on_failure(_manager: Any, _ep: Any, err: BaseException) -> None:
        failures.append(err)

    # stevedore memoises entry points per namespace for the process' lifetime; drop that
    # memo so plugins installed while the process runs are seen (its on-disk cache is keyed
    # on sys.path and file mtimes, so it stays correct).
    ExtensionManager.ENTRY_POINT_CACHE.pop(kind_group(info.kind), None)
    try:
        manager = DriverManager(
            namespace=kind_group(info.kind),
            name=name,
            invoke_on_load=False,
            on_load_failure_callback=on_failure,
            on_missing_entrypoints_callback=lambda _names: None,
        )
        cls = manager.driver
    except NoMatches:
        cls = None
    if failures or cls is None:
        err = failures[0] if failures else "entry point could not be loaded"
        raise PluginLoadError(
            f"{info.kind} {name!r} from {info.distribution} {info.version} failed to load "
            f"({info.value}): {type(err).__name__ if failures else ''}{': ' if failures else ''}{err}"
        )
    problem = component_class_problem(cls, info.kind, name)
    if problem is not None:
        raise PluginLoadError(f"{info.kind} {name!r} from {info.distribution}: entry point {info.value}: {problem}")
    return cast("type[Component]", cls)


def load(kind: str, name: str, config: Any = None, *, device: str = "auto", **overrides: Any) -> Component:
    """Load and instantiate a component: ``load("potential", "chgnet", device="cpu")``."""
    cls = load_class(kind, name)
    return cls(config, device=device, **overrides)


@dataclass(frozen=True)
class CheckResult:
    info: PluginInfo
    ok: bool
    problems: tuple[str, ...]


def check_plugins(infos: Iterable[PluginInfo] | None = None) -> list[CheckResult]:
    """Import every component and compare it with its manifest; never raises.

    Every field of the component's ``[[components]]`` entry and of the ``[[weights]]`` it
    declares must equal what :func:`crystal.manifest.compile_manifest` makes of the class.
    """
    results = []
    mans = manifests()
    for info in list_plugins() if infos is None else infos:
        problems: list[str] = []
        if info.manifest_error:
            problems.append(info.manifest_error)
        try:
            cls = load_class(info.kind, info.name)
            expected = component_manifest(cls)
        except PluginError as exc:
            problems.append(str(exc))
        else:
            m = info.manifest
            drift: list[str] = []
            if m is not None:
                for attr, want in expected:
                    have = getattr(m, attr)
                    if have != want:
                        drift.append(f"{attr}: class says {want!r}, manifest says {have!r}")
                manifest = mans.get(info.distribution, (None, None))[0]
                declared = {w.name: w for w in manifest.weights} if manifest else {}
                for entry in cls.weights.entries if isinstance(cls.weights, NamedWeights) else ():
                    if declared.get(entry.name) != entry:
                        what = "is missing from" if entry.name not in declared else "differs from"
                        drift.append(f"weights {entry.name!r}: the class's declaration {what} the manifest")
            if drift:
                drift.append(f"regenerate the manifest: crystal plugins manifest {info.distribution} --write")
            problems += drift
        results.append(CheckResult(info, not problems, tuple(problems)))
    return results
