"""What several commands share: ``KEY=VALUE`` options, running a pipeline with progress bars, the summary."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from crystal.errors import ConfigError

ThreadsOption = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        help="CPU threads for torch (default: $CRYSTAL_NUM_THREADS, else the idle cores: cores minus the load average).",
    ),
]
"""``--threads N`` for every command that computes; call :func:`apply_threads` first thing."""


def apply_threads(threads: int | None) -> int:
    """Set torch's CPU threads for this command (``--threads`` or the default policy of
    :func:`crystal.device.default_num_threads`) and export ``CRYSTAL_NUM_THREADS`` so that
    worker processes (Ray actors, DDP ranks) use the same number."""
    import os

    from crystal.device import set_num_threads

    n = set_num_threads(threads)
    os.environ["CRYSTAL_NUM_THREADS"] = str(n)
    return n


class Terminated(KeyboardInterrupt):
    """SIGTERM (what ``timeout``, ``kill`` and batch schedulers send), handled like Ctrl-C."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def run_interruptible(p: Any, run_dir: Path | None, listeners: list[Any], **kwargs: Any) -> Any:
    """Run ``p``; on Ctrl-C or SIGTERM mark the run interrupted, say how to resume, and exit
    130 (SIGINT) or 143 (SIGTERM). Finished chunks are checkpointed."""
    import signal
    import threading

    run_dir = Path(run_dir) if run_dir is not None else p.default_run_dir()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return p.run(run_dir, listeners=listeners, **kwargs)
    except KeyboardInterrupt as exc:
        for listener in listeners:
            listener.close()  # stop progress bars before printing
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        typer.echo(
            f"{what}; finished chunks are checkpointed: continue with `crystal run --resume --run-dir {run_dir}`",
            err=True,
        )
        raise typer.Exit(143 if isinstance(exc, Terminated) else 130) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        for listener in listeners:
            listener.close()


def _hull_line(manifest: dict[str, Any]) -> str | None:
    """One line naming the convex-hull references a hull step used, or None without one.

    ``manifest["hull"]["references"]`` (written by the hull step) is a list of
    ``{formula, source, energy_per_atom}`` records (or of names, or one summary string); the
    line groups the formulas by source, at most 8 per source."""
    hull = manifest.get("hull")
    refs = hull.get("references") if isinstance(hull, dict) else None
    if not refs:
        return None
    if isinstance(refs, str):
        return f"hull references: {refs}"
    groups: dict[str, list[str]] = {}
    for r in refs:
        if isinstance(r, dict):
            groups.setdefault(str(r.get("source") or "?"), []).append(str(r.get("formula", "?")))
        else:
            groups.setdefault("", []).append(str(r))

    def names(items: list[str]) -> str:
        return ", ".join(items[:8]) + (f" and {len(items) - 8} more" if len(items) > 8 else "")

    parts = [f"{src}: {names(items)}" if src else names(items) for src, items in groups.items()]
    where = ""
    if hull.get("step") and hull.get("potential"):
        where = f" (step {hull['step']!r}, potential {hull['potential']!r})"
    return f"hull references{where}, {len(refs)} phase(s): " + "; ".join(parts)


def print_summary(result: Any) -> None:
    """The counts, the first rows of the surviving crystals (with ``rank`` when a rank step ran,
    and every column's unit from the run's manifest in its header), the hull references used,
    and the first failures."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    manifest = result.manifest
    counts = manifest.get("counts", {})
    console.print(
        f"[bold]{counts.get('inputs', 0)}[/] inputs: {counts.get('ok', 0)} ok, {counts.get('failed', 0)} failed, "
        f"{counts.get('filtered', 0)} filtered, {counts.get('duplicate', 0)} duplicates "
        f"in {manifest['timings_s'].get('total', 0):.1f} s → {result.run_dir}"
    )
    hull = _hull_line(manifest)
    if hull:
        console.print(hull)
    batch = result.batch
    if len(batch):
        ranks = [s for s in (manifest.get("config") or {}).get("steps", []) if s.get("type") == "rank"]
        by = ranks[-1]["by"] if ranks else None
        preferred = (by, "e_above_hull", "formation_energy_per_atom", "energy_per_atom", "converged", "relax_steps")
        cols = [c for c in dict.fromkeys(preferred) if c is not None and c in batch.crystal_properties]
        cols += [c for c in batch.crystal_properties if c not in cols and c != "energy"]
        cols = cols[:4]  # the full table is in the run directory
        units = manifest.get("units") or {}
        order = f", ranked by {by}" + (" (descending)" if ranks[-1].get("descending") else "") if by else ""
        table = Table(title=f"first {min(10, len(batch))} of {len(batch)}{order} (all columns in results.csv)")
        heads = ["rank"] if by else []
        heads += ["id", "formula", *(f"{c} ({units[c]})" if units.get(c) else c for c in cols)]
        for h in heads:
            table.add_column(h, no_wrap=True, overflow="fold")
        formulas = batch.formulas()
        for k in range(min(10, len(batch))):
            values = [f"{float(batch.crystal_properties[c][k]):.4g}" for c in cols]
            table.add_row(*([str(k + 1)] if by else []), batch.ids[k], formulas[k], *values)
        console.print(table)
    for f in result.failures[:5]:
        console.print(f"[red]failed[/] {f.id} at {f.step}: {f.reason}")
    if len(result.failures) > 5:
        console.print(f"... and {len(result.failures) - 5} more in {result.run_dir / 'failures.csv'}")


class ProgressListener:
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
            label = "warning" if "shortfall" in event.data else "skipped"
            self.progress.console.print(f"[yellow]{label}[/] {event.message}")

    def close(self) -> None:
        if self.started:
            self.progress.stop()
            self.started = False


def shortcut(
    inputs: list[Path],
    steps: list[dict[str, Any]],
    sinks: list[dict[str, Any]],
    name: str,
    device: str | None,
    run_dir: Path | None,
    quiet: bool,
) -> None:
    source = {"type": "files", "paths": [str(p.resolve()) for p in inputs]}
    run_shortcut({"pipeline": {"name": name}, "source": source, "steps": steps, "sinks": sinks}, device, run_dir, quiet)


def run_shortcut(data: dict[str, Any], device: str | None, run_dir: Path | None, quiet: bool) -> Any:
    """Run the pipeline ``data`` built by a shortcut command (origin ``crystal <pipeline.name>``)
    with progress bars and the summary (``quiet``: only the run directory); returns the result."""
    from crystal_pipeline import Pipeline, parse_pipeline_config

    origin = f"crystal {data['pipeline']['name']}"
    p = Pipeline(parse_pipeline_config(data, origin), origin=origin)
    listeners = [] if quiet else [ProgressListener()]
    result = run_interruptible(p, run_dir, listeners, device=device)
    if quiet:
        typer.echo(str(result.run_dir))
    else:
        print_summary(result)
    return result


def component_config(items: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` options (values parsed as TOML, e.g. ``batch_size=32``, ``path='/x'``)."""
    from crystal.specs import parse_key_value

    config: dict[str, Any] = {}
    for item in items or []:
        try:
            key, value = parse_key_value(item, "--config")
        except ValueError as exc:
            raise ConfigError(f"{exc}, e.g. --config batch_size=32") from None
        config[key] = value
    return config
