"""``crystal plugins list|info|check|hooks|manifest``: installed plugins (listing imports no plugin code)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Annotated

import typer

from crystal.errors import PluginError
from crystal_cli.app import plugins_app


@plugins_app.command("list")
def plugins_list(
    kind: Annotated[str | None, typer.Option(help="Only this kind (potential, encoder, ...).")] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Include plugins disabled by CRYSTAL_PLUGINS/CRYSTAL_DISABLE_PLUGINS.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List installed components from their manifests (imports no plugin code, no torch)."""
    from crystal.plugins import list_plugins

    infos = list_plugins(kind, include_disabled=all_)
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "kind": i.kind,
                        "name": i.name,
                        "distribution": i.distribution,
                        "version": i.version,
                        "description": i.description,
                        "enabled": i.enabled,
                        "entry_point": i.value,
                        "consumes": i.manifest.consumes if i.manifest else None,
                        "produces": i.manifest.produces if i.manifest else None,
                        "devices": list(i.manifest.devices) if i.manifest else None,
                        "weights": list(i.manifest.weights) if i.manifest else [],
                        "problem": i.manifest_error
                        or (f"also claimed by {', '.join(i.also_claimed_by)}" if i.also_claimed_by else None),
                    }
                    for i in infos
                ],
                indent=2,
            )
        )
        return
    if not infos:
        typer.echo("no plugins installed" + (f" of kind {kind}" if kind else ""))
        return
    width = max(len(i.name) for i in infos)
    for i in infos:
        flag = "" if i.enabled else " [disabled]"
        problem = ""
        if i.also_claimed_by:
            problem = f"  !! also claimed by {', '.join(i.also_claimed_by)}"
        elif i.manifest_error:
            problem = f"  !! {i.manifest_error}"
        weights = f"  weights: {', '.join(i.manifest.weights)}" if i.manifest and i.manifest.weights else ""
        typer.echo(
            f"{i.kind:<14} {i.name:<{width}}  {i.distribution} {i.version}{flag}  {i.description}{weights}{problem}"
        )


@plugins_app.command("info")
def plugins_info(
    name: Annotated[str, typer.Argument(help="Component name.")],
    kind: Annotated[str | None, typer.Option(help="Kind, when the name exists for several kinds.")] = None,
    config: Annotated[bool, typer.Option("--config", help="Also list the config fields (imports the plugin).")] = False,
) -> None:
    """Show one component's manifest, entry point and weights (no import unless --config)."""
    from crystal.plugins import list_plugins
    from crystal.weights import list_weights

    matches = [i for i in list_plugins(kind, include_disabled=True) if i.name == name]
    if not matches:
        import difflib

        names = sorted({i.name for i in list_plugins(kind, include_disabled=True)})
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise PluginError(f"no plugin named {name!r}{hint}")
    weights = None
    for i in matches:
        m = i.manifest
        typer.echo(f"{i.kind} {i.name}\n  distribution: {i.distribution} {i.version}\n  entry point:  {i.value}")
        typer.echo(f"  enabled:      {i.enabled}")
        if m is not None:
            typer.echo(f"  description:  {m.description}\n  consumes:     {m.consumes}\n  produces:     {m.produces}")
            typer.echo(f"  devices:      {', '.join(m.devices)}")
            if m.weights:
                weights = weights if weights is not None else list_weights()
                typer.echo(f"  weights:      (default: {m.default_weights})")
                for w in m.weights:
                    entry = weights.get(w)
                    if entry is None:
                        typer.echo(f"    {w}: NOT DECLARED in any manifest")
                        continue
                    e = entry[1]
                    typer.echo(
                        f"    {w}: {e.file}\n      sha256 {e.sha256}\n      licence {e.licence}; data: {e.training_data}"
                    )
                    if e.metrics:
                        typer.echo("      metrics: " + ", ".join(f"{k}={v}" for k, v in e.metrics.items()))
        if i.manifest_error:
            typer.echo(f"  problem:      {i.manifest_error}")
        if config:
            _echo_config_fields(i.kind, i.name)


def _choices(schema: dict[str, object]) -> str | None:
    """``one of 'a', 'b'[ or None]`` for a JSON-schema property restricted to an enum."""
    options = [schema, *(schema.get("anyOf") or [])]  # type: ignore[list-item]
    enum = next(
        (o.get("enum", [o.get("const")]) for o in options if isinstance(o, dict) and ("enum" in o or "const" in o)),
        None,
    )
    if enum is None:
        return None
    nullable = any(isinstance(o, dict) and o.get("type") == "null" for o in options)
    return "one of " + ", ".join(map(repr, enum)) + (" or None" if nullable else "")


def _echo_config_fields(kind: str, name: str) -> None:
    """``name = default  (type): description`` for every field of the component's Config;
    fields restricted to a set of values (named weights, Literals) list their choices."""
    from crystal.plugins import load_class

    cls = load_class(kind, name)
    try:
        properties = cls.Config.model_json_schema().get("properties", {})
    except Exception:  # a field type without a JSON schema: fall back to the annotations
        properties = {}
    typer.echo("  config:")
    for field, info in cls.Config.model_fields.items():
        default = "required" if info.is_required() else repr(info.get_default(call_default_factory=True))
        annotation = _choices(properties.get(info.alias or field, {})) or (
            getattr(info.annotation, "__name__", None) or str(info.annotation).replace("typing.", "")
        )
        typer.echo(f"    {field} = {default}  ({annotation})" + (f": {info.description}" if info.description else ""))


@plugins_app.command("check")
def plugins_check(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Only these components (plugin names); their contracts are run by default."),
    ] = None,
    contracts: Annotated[
        bool | None,
        typer.Option(
            "--contracts/--no-contracts",
            help="Also load each component and run crystal.testing's contract suite (potentials: forces and "
            "stress against finite differences of the energy, symmetries). Default: on when NAMES are given.",
        ),
    ] = None,
) -> None:
    """Import every component, validate it against its manifest, load every hook module; with
    NAMES or --contracts, also run the contract suite (crystal.testing.contracts.check_plugin)."""
    from crystal.hooks import hook_load_errors, plugin_manager
    from crystal.plugins import check_plugins

    results = check_plugins()
    if names:
        unknown = sorted(set(names) - {r.info.name for r in results})
        if unknown:
            raise PluginError(f"plugins check: no component named {', '.join(map(repr, unknown))}")
        results = [r for r in results if r.info.name in names]
    run_contracts = bool(names) if contracts is None else contracts
    bad = 0
    for r in results:
        problems = list(r.problems)
        if run_contracts and r.ok:
            problems += _contract_problems(r.info.kind, r.info.name)
        ok = r.ok and not problems
        status = "ok" if ok else "FAIL"
        typer.echo(f"{status:<4} {r.info.kind} {r.info.name} ({r.info.distribution} {r.info.version})")
        for p in problems:
            typer.echo(f"       {p}")
        bad += not ok
    from crystal.weights import weights_clashes

    for wname, dists in sorted(weights_clashes().items()):
        typer.echo(f"FAIL weights {wname!r}: declared by {', '.join(dists)} (components using it will fail)")
        bad += 1
    pm = plugin_manager()
    for name, dist, err in hook_load_errors():
        typer.echo(f"FAIL hooks {name} ({dist}): {err}")
        bad += 1
    try:
        pm.check_pending()
    except Exception as exc:
        typer.echo(f"FAIL hooks: {exc}")
        bad += 1
    typer.echo(f"{len(results)} components checked, {bad} problem(s)")
    if bad:
        raise typer.Exit(1)


def _contract_problems(kind: str, name: str) -> list[str]:
    """The contract suite's failures for one component, one line each (empty when it passes)."""
    from crystal.testing.contracts import check_plugin

    try:
        check_plugin(kind, name)
    except AssertionError as exc:
        return [f"contract: {' '.join(str(exc).split())}"]
    except Exception as exc:  # a component that cannot even be loaded or run
        return [f"contract: {type(exc).__name__}: {' '.join(str(exc).split())}"]
    return []


@plugins_app.command("hooks")
def plugins_hooks() -> None:
    """List hook modules and the datasets and metrics they register."""
    from crystal.hooks import hook_load_errors, plugin_manager
    from crystal.registries import datasets, metrics

    pm = plugin_manager()
    typer.echo("hook modules:")
    for name, plugin in pm.list_name_plugin():
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        typer.echo(f"  {name}: {', '.join(hooks) or '(no hooks)'}")
    for name, dist, err in hook_load_errors():
        typer.echo(f"  {name} ({dist}): FAILED TO LOAD: {err}")
    typer.echo("datasets:")
    for spec in sorted(datasets().values(), key=lambda d: d.name):
        typer.echo(f"  {spec.name}: {spec.description}")
    typer.echo("metrics:")
    for m in sorted(metrics().values(), key=lambda m: m.name):
        typer.echo(f"  {m.name} [{m.unit}]: {m.description}")


def _project_distribution(start: Path) -> tuple[str, Path]:
    """``(distribution name, project folder)`` of the nearest ``pyproject.toml`` at or above ``start``."""
    for folder in (start, *start.parents):
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file():
            try:
                name = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {}).get("name")
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise PluginError(f"{pyproject}: cannot read: {exc}") from None
            if not name:
                raise PluginError(f"{pyproject} has no [project] name; give the distribution name")
            return str(name), folder
    raise PluginError(
        f"no pyproject.toml at or above {start}: give a distribution name (crystal plugins manifest DIST)"
    )


@plugins_app.command("manifest")
def plugins_manifest(
    distributions: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[DIST]...",
            help="Installed distributions (default: the project whose pyproject.toml is in or above the current folder).",
        ),
    ] = None,
    write: Annotated[
        bool, typer.Option("--write", help="Write crystal_plugin.toml where the entry point names it.")
    ] = False,
    check: Annotated[
        bool, typer.Option("--check", help="Exit 1, with a diff, when a manifest differs from the classes.")
    ] = False,
    all_: Annotated[
        bool, typer.Option("--all", help="Every installed distribution that declares a crystal.manifests entry point.")
    ] = False,
) -> None:
    """Generate the static manifest (crystal_plugin.toml) from the component classes.

    Imports the distribution's components through its entry points and compiles their
    declarations (description, consumes/produces, devices, weights, default_weights) and the
    distribution's metadata (pyproject.toml) into the manifest that `crystal plugins list`
    reads without importing anything. Prints it; --write writes it; --check fails on drift.
    """
    from importlib import metadata

    from crystal.manifest import compile_manifest, manifest_diff, manifest_file, render_manifest
    from crystal.plugins import MANIFEST_GROUP

    if write and check:
        raise typer.BadParameter("give --write or --check, not both")
    targets: list[tuple[str, Path | None]]
    if all_:
        if distributions:
            raise typer.BadParameter("give distributions or --all, not both")
        names = {str(ep.dist.metadata["Name"]) for ep in metadata.entry_points(group=MANIFEST_GROUP) if ep.dist}
        targets = [(n, None) for n in sorted(names)]
    elif distributions:
        targets = [(d, None) for d in distributions]
    else:
        name, project = _project_distribution(Path.cwd())
        targets = [(name, project)]
    drifted = []
    for name, project in targets:
        dist = metadata.distribution(name) if _installed(name) else None
        if dist is None:
            hint = f" (pip install -e {project})" if project else ""
            raise PluginError(f"distribution {name!r} is not installed{hint}; its classes are read from the install")
        canonical = str(dist.metadata["Name"])
        path = manifest_file(dist, project)
        if check:
            diff = manifest_diff(dist, path)
            if diff:
                drifted.append(canonical)
                typer.echo(diff, nl=False)
                typer.echo(
                    f"DRIFT {canonical}: {path} differs from the classes; run: crystal plugins manifest {canonical} --write"
                )
            else:
                typer.echo(f"ok    {canonical}: {path}")
            continue
        text = render_manifest(compile_manifest(dist), canonical)
        if write:
            old = path.read_text(encoding="utf-8") if path.is_file() else None
            if old != text:
                path.write_text(text, encoding="utf-8")
            typer.echo(f"{'unchanged' if old == text else 'wrote'} {path}")
        else:
            if len(targets) > 1:
                typer.echo(f"# ===== {canonical}: {path}")
            typer.echo(text, nl=False)
    if drifted:
        raise typer.Exit(1)


def _installed(name: str) -> bool:
    from importlib import metadata

    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True
