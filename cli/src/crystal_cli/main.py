"""The ``crystal`` command line.

Errors print one line (``error: ...``) and exit non-zero: 2 for invalid input or
configuration (nothing ran), 1 when a run failed. ``--debug`` shows tracebacks.
Heavy imports (torch, pymatgen, plugins) happen inside commands, never at start-up.
"""

from __future__ import annotations

import json
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer

from crystal.errors import ConfigError, CrystalError, PluginError

app = typer.Typer(
    name="crystal",
    help="AI-driven discovery of crystalline materials: compose generators, potentials, encoders and characterizers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
plugins_app = typer.Typer(help="List, inspect and check installed plugins.", no_args_is_help=True)
app.add_typer(plugins_app, name="plugins")

_STATE: dict[str, bool] = {"debug": False}
DEFAULT_PIPELINE = "default-discovery.toml"


def _version_callback(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"crystal {version('crystal-core')} (cli {version('crystal-cli')})")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Show versions and exit.")
    ] = False,
) -> None:
    _STATE["debug"] = debug or os.environ.get("CRYSTAL_DEBUG") == "1"


# --------------------------------------------------------------------------- plugins
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


def _echo_config_fields(kind: str, name: str) -> None:
    """``name = default  (type): description`` for every field of the component's Config."""
    from crystal.plugins import load_class

    cls = load_class(kind, name)
    typer.echo("  config:")
    for field, info in cls.Config.model_fields.items():
        default = "required" if info.is_required() else repr(info.get_default(call_default_factory=True))
        annotation = getattr(info.annotation, "__name__", None) or str(info.annotation).replace("typing.", "")
        typer.echo(f"    {field} = {default}  ({annotation})" + (f": {info.description}" if info.description else ""))


@plugins_app.command("check")
def plugins_check() -> None:
    """Import every component, validate it against its manifest, load every hook module."""
    from crystal.hooks import hook_load_errors, plugin_manager
    from crystal.plugins import check_plugins

    results = check_plugins()
    bad = 0
    for r in results:
        status = "ok" if r.ok else "FAIL"
        typer.echo(f"{status:<4} {r.info.kind} {r.info.name} ({r.info.distribution} {r.info.version})")
        for p in r.problems:
            typer.echo(f"       {p}")
        bad += not r.ok
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


# --------------------------------------------------------------------------- pipelines
def _pipeline_path(pipeline: Path | None) -> tuple[Path | None, str]:
    if pipeline is not None:
        return pipeline, str(pipeline)
    return None, f"<default pipeline {DEFAULT_PIPELINE}>"


def _load(pipeline: Path | None, overrides: list[str]) -> Any:
    from crystal.pipeline import Pipeline
    from crystal.pipeline.config import apply_overrides, parse_pipeline_config

    if pipeline is not None:
        return Pipeline.from_toml(pipeline, overrides)
    import tomllib

    text = resources.files("crystal_cli").joinpath(DEFAULT_PIPELINE).read_text(encoding="utf-8")
    origin = f"<default pipeline {DEFAULT_PIPELINE}>"
    data = apply_overrides(tomllib.loads(text), overrides, origin)
    return Pipeline(parse_pipeline_config(data, origin), origin=origin)


@app.command("validate")
def validate(
    pipeline: Annotated[
        Path | None, typer.Argument(help="Pipeline TOML (default: the embedded default pipeline).")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a field: STEP.field=value (TOML value).")
    ] = None,
) -> None:
    """Validate a pipeline (schema, plugins, component configs) without running it."""
    p = _load(pipeline, set_ or [])
    p.check()
    cfg = p.config
    typer.echo(
        f"{p.origin}: valid — source {cfg.source.type}, {len(cfg.steps)} step(s) "
        f"({', '.join(s.id for s in cfg.steps) or 'none'}), {len(cfg.sinks)} sink(s)"
    )


@app.command("run")
def run(
    pipeline: Annotated[
        Path | None, typer.Argument(help="Pipeline TOML (default: the embedded default discovery pipeline).")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a field: STEP.field=value (TOML value).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N (overrides the pipeline's).")] = None,
    run_dir: Annotated[
        Path | None, typer.Option("--run-dir", "-o", help="Run directory (default runs/<name>-<time>).")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Resume the interrupted run in --run-dir.")] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress output; print only the run directory.")
    ] = False,
) -> None:
    """Run a pipeline: source → steps → sinks, into a run directory with a manifest."""
    if resume and run_dir is None:
        raise ConfigError("--resume needs --run-dir DIR (the interrupted run's directory)")
    p = _load(pipeline, set_ or [])
    listeners = [] if quiet else [_ProgressListener()]
    result = _run_interruptible(p, run_dir, listeners, resume=resume, device=device)
    if quiet:
        typer.echo(str(result.run_dir))
        return
    _print_summary(result)


def _run_interruptible(p: Any, run_dir: Path | None, listeners: list[Any], **kwargs: Any) -> Any:
    """Run ``p``; on Ctrl-C say how to resume and exit 130 (checkpoints are kept)."""
    try:
        return p.run(run_dir, listeners=listeners, **kwargs)
    except KeyboardInterrupt:
        for listener in listeners:
            listener.close()  # stop progress bars before printing
        where = f"--run-dir {run_dir} " if run_dir else "--run-dir <the run directory> "
        typer.echo(
            f"interrupted; finished chunks are checkpointed: continue with `crystal run ... {where}--resume`", err=True
        )
        raise typer.Exit(130) from None
    finally:
        for listener in listeners:
            listener.close()


def _print_summary(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    counts = result.manifest.get("counts", {})
    console.print(
        f"[bold]{counts.get('inputs', 0)}[/] inputs: {counts.get('ok', 0)} ok, {counts.get('failed', 0)} failed, "
        f"{counts.get('filtered', 0)} filtered, {counts.get('duplicate', 0)} duplicates "
        f"in {result.manifest['timings_s'].get('total', 0):.1f} s → {result.run_dir}"
    )
    batch = result.batch
    if len(batch):
        cols = [c for c in ("energy_per_atom", "converged", "relax_steps") if c in batch.crystal_properties]
        cols += [c for c in batch.crystal_properties if c not in cols and c != "energy"]
        cols = cols[:4]  # the full table is in the run directory
        table = Table(title=f"first {min(10, len(batch))} of {len(batch)} (all columns in results.csv)")
        for h in ("id", "formula", *cols):
            table.add_column(h, no_wrap=True, overflow="fold")
        formulas = batch.formulas()
        for k in range(min(10, len(batch))):
            table.add_row(batch.ids[k], formulas[k], *(f"{float(batch.crystal_properties[c][k]):.4g}" for c in cols))
        console.print(table)
    for f in result.failures[:5]:
        console.print(f"[red]failed[/] {f.id} at {f.step}: {f.reason}")
    if len(result.failures) > 5:
        console.print(f"... and {len(result.failures) - 5} more in {result.run_dir / 'failures.csv'}")


class _ProgressListener:
    """Rich progress bars driven by pipeline events."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]{task.fields[step]:<12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            transient=False,
        )
        self.tasks: dict[str, Any] = {}
        self.started = False

    def __call__(self, event: Any) -> None:
        if not self.started:
            self.progress.start()
            self.started = True
        step = event.step or "run"
        if event.kind == "step_start":
            self.tasks[step] = self.progress.add_task(event.message, step=step, total=event.total or None)
        elif event.kind in ("progress", "step_end") and step in self.tasks:
            kwargs: dict[str, Any] = {"description": event.message}
            if event.done is not None:
                kwargs["completed"] = event.done
            if event.kind == "step_end" and event.total is not None:
                kwargs["total"] = event.total
                kwargs["completed"] = event.total
            self.progress.update(self.tasks[step], **kwargs)
        elif event.kind == "failure":
            self.progress.console.print(f"[yellow]skipped[/] {event.message}")

    def close(self) -> None:
        if self.started:
            self.progress.stop()
            self.started = False


# --------------------------------------------------------------------------- shortcuts
def _shortcut(
    inputs: list[Path],
    steps: list[dict[str, Any]],
    sinks: list[dict[str, Any]],
    name: str,
    device: str | None,
    run_dir: Path | None,
    quiet: bool,
) -> None:
    from crystal.pipeline import Pipeline, parse_pipeline_config

    data = {
        "pipeline": {"name": name},
        "source": {"type": "files", "paths": [str(p.resolve()) for p in inputs]},
        "steps": steps,
        "sinks": sinks,
    }
    p = Pipeline(parse_pipeline_config(data, f"crystal {name}"), origin=f"crystal {name}")
    listeners = [] if quiet else [_ProgressListener()]
    result = _run_interruptible(p, run_dir, listeners, device=device)
    if quiet:
        typer.echo(str(result.run_dir))
    else:
        _print_summary(result)


def _component_config(items: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` options (values parsed as TOML, e.g. ``batch_size=32``, ``path='/x'``)."""
    from crystal.pipeline.config import _parse_value

    config: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--config {item!r}: expected KEY=VALUE, e.g. --config batch_size=32")
        config[key.strip()] = _parse_value(raw)
    return config


@app.command("relax")
def relax_cmd(
    inputs: Annotated[
        list[Path], typer.Argument(help="Structure files, folders or globs (CIF, POSCAR, extxyz, JSON, CSV).")
    ],
    potential: Annotated[str, typer.Option("--potential", "-p", help="Potential plugin name.")] = "chgnet",
    fmax: Annotated[float, typer.Option(help="Force convergence, eV/Å.")] = 0.1,
    max_steps: Annotated[int, typer.Option(help="FIRE steps per structure at most.")] = 500,
    fix_cell: Annotated[bool, typer.Option("--fix-cell", help="Relax positions only.")] = False,
    config: Annotated[
        list[str] | None, typer.Option("--config", "-c", help="Potential config KEY=VALUE (repeatable).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", "-o")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Relax structures with a potential (batched FIRE); writes CIFs, extxyz and a summary."""
    steps = [
        {
            "id": "relax",
            "type": "relax",
            "potential": potential,
            "fmax": fmax,
            "max_steps": max_steps,
            "relax_cell": not fix_cell,
            "config": _component_config(config),
        }
    ]
    sinks = [
        {"type": "cif", "path": "relaxed"},
        {"type": "extxyz", "path": "relaxed.extxyz"},
        {"type": "csv", "path": "summary.csv"},
    ]
    _shortcut(inputs, steps, sinks, "relax", device, run_dir, quiet)


@app.command("predict")
def predict_cmd(
    inputs: Annotated[list[Path], typer.Argument(help="Structure files, folders or globs.")],
    encoder: Annotated[str, typer.Option("--encoder", "-e", help="Encoder plugin name.")],
    weights: Annotated[str | None, typer.Option(help="Named weights (see `crystal plugins info ENCODER`).")] = None,
    config: Annotated[
        list[str] | None, typer.Option("--config", "-c", help="Encoder config KEY=VALUE (repeatable).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", "-o")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Predict properties of structures with an encoder; writes predictions.csv."""
    encoder_config = _component_config(config)
    if weights:
        encoder_config["weights"] = weights
    steps = [{"id": "predict", "type": "predict", "encoder": encoder, "config": encoder_config}]
    _shortcut(inputs, steps, [{"type": "csv", "path": "predictions.csv"}], "predict", device, run_dir, quiet)


@app.command("md")
def md_cmd(
    inputs: Annotated[
        list[Path], typer.Argument(help="Structure files, folders or globs (CIF, POSCAR, extxyz, JSON, CSV).")
    ],
    potential: Annotated[str, typer.Option("--potential", "-p", help="Potential plugin name.")] = "chgnet",
    ensemble: Annotated[str, typer.Option(help="nve (velocity Verlet) or nvt-langevin (BAOAB).")] = "nve",
    timestep: Annotated[float, typer.Option(help="Time step, fs.")] = 1.0,
    steps: Annotated[int, typer.Option(help="Number of steps.")] = 100,
    temperature: Annotated[float, typer.Option(help="K: Langevin bath and initial velocities.")] = 300.0,
    friction: Annotated[float | None, typer.Option(help="Langevin friction, 1/fs (nvt-langevin only).")] = None,
    log_every: Annotated[int, typer.Option(help="Record energies and a frame every N steps.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the initial velocities and the Langevin noise.")] = 0,
    config: Annotated[
        list[str] | None, typer.Option("--config", "-c", help="Potential config KEY=VALUE (repeatable).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    output: Annotated[Path, typer.Option("--output", "-o", help="Output directory.")] = Path("runs/md"),
) -> None:
    """Batched molecular dynamics of every input structure at once (fixed cell).

    Writes ``trajectory.extxyz`` (a frame of every crystal every --log-every steps, with
    energy and temperature in the frame info), ``energies.csv`` (step, id, total, potential
    and kinetic energy in eV, temperature in K) and ``final.extxyz``.
    """
    import csv as csv_mod

    from crystal.io import atomic_write, read_structures, write_structures
    from crystal.md import MDState, run_md
    from crystal.plugins import load

    opts: dict[str, Any] = {
        "ensemble": ensemble, "timestep": timestep, "steps": steps, "temperature": temperature,
        "log_every": log_every, "seed": seed,
    }  # fmt: skip
    if friction is not None:
        opts["friction"] = friction
    read = read_structures(inputs)
    for f in read.failures:
        typer.echo(f"skipped {f.id} ({f.source}): {f.reason}", err=True)
    if not read.structures:
        raise ConfigError("md: no readable structures in the inputs")
    pot = load("potential", potential, _component_config(config), device=device)
    batch = read.to_batch().to(pot.device)
    frames: list[Any] = []

    def record(state: MDState) -> None:
        atoms = state.batch.to_atoms()
        for b, a in enumerate(atoms):
            a.info.update(
                step=state.step,
                energy=float(state.potential_energy[b] + state.kinetic_energy[b]),
                temperature=float(state.temperature[b]),
            )
        frames.extend(atoms)

    result = run_md(pot, batch, callback=record, **opts)
    output.mkdir(parents=True, exist_ok=True)
    from ase.io import write as ase_write

    with atomic_write(output / "trajectory.extxyz") as fh:
        ase_write(fh, frames, format="extxyz")
    write_structures(result.batch, output / "final.extxyz", "extxyz")
    with atomic_write(output / "energies.csv", newline="") as fh:
        w = csv_mod.writer(fh)
        w.writerow(["step", "id", "total_energy_eV", "potential_energy_eV", "kinetic_energy_eV", "temperature_K"])
        for t, step in enumerate(result.steps.tolist()):
            for b, ident in enumerate(result.batch.ids):
                w.writerow(
                    [
                        step,
                        ident,
                        float(result.total_energy[t, b]),
                        float(result.potential_energy[t, b]),
                        float(result.kinetic_energy[t, b]),
                        float(result.temperature[t, b]),
                    ]
                )
    drift = (
        (result.total_energy[-1] - result.total_energy[0]).abs() / result.batch.num_atoms if len(result.steps) else None
    )
    typer.echo(f"{len(result.batch)} crystals, {steps} steps of {timestep} fs ({ensemble})")
    if drift is not None and ensemble == "nve":
        typer.echo(f"NVE energy drift: max {float(drift.max()) * 1000:.3g} meV/atom")
    typer.echo(f"output: {output}")


def _target_option(item: str) -> dict[str, Any]:
    """``NAME[:classification|:atom|:unit=eV]`` -> a TargetSpec dict."""
    name, *mods = item.split(":")
    spec: dict[str, Any] = {"name": name.strip()}
    for m in mods:
        m = m.strip()
        if m in ("classification", "regression"):
            spec["task"] = m
        elif m in ("atom", "structure"):
            spec["level"] = m
        elif m.startswith("unit="):
            spec["unit"] = m[len("unit=") :]
        elif m.startswith("classes="):
            spec["task"], spec["num_classes"] = "classification", int(m[len("classes=") :])
        else:
            raise ConfigError(
                f"--target {item!r}: unknown modifier {m!r} (use classification, atom, unit=..., classes=N)"
            )
    return spec


@app.command("train")
def train_cmd(
    config_file: Annotated[Path | None, typer.Argument(help="Training TOML file (see docs/training.md).")] = None,
    encoder: Annotated[str | None, typer.Option("--encoder", "-e", help="Encoder plugin name.")] = None,
    train_data: Annotated[list[str] | None, typer.Option("--train", help="Training data (repeatable).")] = None,
    val_data: Annotated[
        list[str] | None, typer.Option("--val", help="Validation data (default: a fraction of --train).")
    ] = None,
    test_data: Annotated[list[str] | None, typer.Option("--test", help="Test data.")] = None,
    target: Annotated[
        list[str] | None,
        typer.Option("--target", "-t", help="Target NAME[:classification][:atom][:unit=eV] (repeatable)."),
    ] = None,
    model: Annotated[
        list[str] | None, typer.Option("--config", "-c", help="Encoder config KEY=VALUE (repeatable).")
    ] = None,
    sets: Annotated[list[str] | None, typer.Option("--set", help="Override SECTION.FIELD=VALUE (repeatable).")] = None,
    epochs: Annotated[int | None, typer.Option(help="trainer.max_epochs")] = None,
    batch_size: Annotated[int | None, typer.Option(help="trainer.batch_size")] = None,
    lr: Annotated[float | None, typer.Option(help="optim.lr")] = None,
    devices: Annotated[int | None, typer.Option(help="trainer.devices (>1 = DDP)")] = None,
    accelerator: Annotated[str | None, typer.Option(help="trainer.accelerator: auto, cpu, gpu")] = None,
    strategy: Annotated[str | None, typer.Option(help="trainer.strategy: auto, ddp, ddp_spawn")] = None,
    seed: Annotated[int | None, typer.Option(help="trainer.seed")] = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Run directory.")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --output from its last checkpoint.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Train an encoder on labelled structures (PyTorch Lightning; DDP with --devices N)."""
    from crystal.training.config import apply_train_overrides, load_train_config, parse_train_config
    from crystal.training.engine import train

    options: list[str] = []
    for key, value in (
        ("trainer.max_epochs", epochs),
        ("trainer.batch_size", batch_size),
        ("optim.lr", lr),
        ("trainer.devices", devices),
        ("trainer.seed", seed),
    ):
        if value is not None:
            options.append(f"{key}={value}")
    for key, text in (("trainer.accelerator", accelerator), ("trainer.strategy", strategy)):
        if text is not None:
            options.append(f"{key}={json.dumps(text)}")
    options += list(sets or [])
    extra: dict[str, Any] = {}
    if encoder:
        extra["encoder"] = encoder
    if output:
        extra["output"] = str(Path(output).resolve())
    if target:
        extra["targets"] = [_target_option(t) for t in target]
    data_extra = {
        k: [str(Path(p).resolve()) for p in v]
        for k, v in (("train", train_data), ("val", val_data), ("test", test_data))
        if v
    }
    if config_file is not None:
        cfg = load_train_config(config_file, options)
        raw = cfg.model_dump(mode="json", exclude_unset=True)
        raw.update(extra)
        if data_extra:
            raw["data"] = {**raw.get("data", {}), **data_extra}
        if model:
            raw["model"] = {**raw.get("model", {}), **_component_config(model)}
        cfg = parse_train_config(raw, str(config_file))
    else:
        missing = [o for o, v in (("--encoder", encoder), ("--train", train_data), ("--target", target)) if not v]
        if missing:
            raise ConfigError(f"crystal train: give a training TOML file or {', '.join(missing)}")
        raw = {**extra, "data": data_extra, "model": _component_config(model)}
        raw.setdefault("output", str(Path("runs") / f"train-{encoder}"))
        cfg = parse_train_config(apply_train_overrides(raw, options), "crystal train")
    result = train(cfg, resume=resume, quiet=quiet)
    if result.output is None:  # a DDP worker process: rank 0 reports
        return
    if not quiet:
        for split, metrics in result.metrics.items():
            shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            typer.echo(f"{split}: {shown}")
        typer.echo(f"model: {result.checkpoint} (sha256 {result.sha256})")
        typer.echo(f"run directory: {result.output}")


@app.command("train-potential")
def train_potential_cmd(
    config_file: Annotated[Path | None, typer.Argument(help="Potential-training TOML file (docs/training.md).")] = None,
    potential: Annotated[str | None, typer.Option("--potential", "-p", help="Trainable potential plugin.")] = None,
    train_data: Annotated[list[str] | None, typer.Option("--train", help="Training data (repeatable).")] = None,
    val_data: Annotated[list[str] | None, typer.Option("--val", help="Validation data.")] = None,
    test_data: Annotated[list[str] | None, typer.Option("--test", help="Test data.")] = None,
    init: Annotated[str | None, typer.Option("--init", help="Fine-tune from named weights or a checkpoint.")] = None,
    model: Annotated[list[str] | None, typer.Option("--config", "-c", help="Model config KEY=VALUE.")] = None,
    sets: Annotated[list[str] | None, typer.Option("--set", help="Override SECTION.FIELD=VALUE (repeatable).")] = None,
    epochs: Annotated[int | None, typer.Option(help="fit.max_epochs")] = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Run directory.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Train (or fine-tune) an interatomic potential on energies, forces and stress."""
    from crystal.training.config import apply_train_overrides
    from crystal.training.potential import load_potential_config, parse_potential_config, train_potential

    options = list(sets or []) + ([f"fit.max_epochs={epochs}"] if epochs is not None else [])
    extra: dict[str, Any] = {}
    if potential:
        extra["potential"] = potential
    if init:
        extra["init"] = str(Path(init).resolve()) if Path(init).exists() else init
    if output:
        extra["output"] = str(Path(output).resolve())
    data_extra = {
        k: [str(Path(p).resolve()) for p in v]
        for k, v in (("train", train_data), ("val", val_data), ("test", test_data))
        if v
    }
    if config_file is not None:
        raw = load_potential_config(config_file, options).model_dump(mode="json", exclude_unset=True)
        origin = str(config_file)
    else:
        missing = [o for o, v in (("--potential", potential), ("--train", train_data)) if not v]
        if missing:
            raise ConfigError(f"crystal train-potential: give a training TOML file or {', '.join(missing)}")
        raw = apply_train_overrides({"output": str(Path("runs") / f"train-{potential}")}, options)
        origin = "crystal train-potential"
    raw.update(extra)
    if data_extra:
        raw["data"] = {**raw.get("data", {}), **data_extra}
    if model:
        raw["model"] = {**raw.get("model", {}), **_component_config(model)}
    result = train_potential(parse_potential_config(raw, origin), quiet=quiet)
    if not quiet:
        for split, metrics in result.metrics.items():
            typer.echo(f"{split}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        typer.echo(f"model: {result.checkpoint} (sha256 {result.sha256})")
        typer.echo(f"run directory: {result.output}")


# --------------------------------------------------------------------------- evaluate
from crystal_cli.evaluate import evaluate_cmd  # noqa: E402  (typer only; metrics are imported when it runs)

app.command("evaluate")(evaluate_cmd)

# --------------------------------------------------------------------------- characterize
from crystal_cli.characterize import characterize_cmd  # noqa: E402  (typer only; torch is imported when it runs)

app.command("characterize")(characterize_cmd)


# --------------------------------------------------------------------------- entry
def _register_plugin_commands() -> None:
    from crystal.hooks import call_isolated

    for plugin, exc in call_isolated("register_commands", cli=app):  # a broken plugin must not take the CLI down
        typer.echo(f"warning: plugin {plugin!r} could not register its commands: {exc}", err=True)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit status."""
    _register_plugin_commands()
    debug = "--debug" in (argv if argv is not None else sys.argv[1:]) or os.environ.get("CRYSTAL_DEBUG") == "1"
    try:
        app(args=argv, prog_name="crystal")  # standalone mode: usage errors exit 2 by themselves
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except (ConfigError, PluginError) as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        return 2
    except CrystalError as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        return 1
    except Exception as exc:
        if debug:
            raise
        typer.echo(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
        return 1
    return 0


def entry() -> None:
    sys.exit(main())
