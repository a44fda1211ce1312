"""``crystal evaluate``: generation metrics of generated structures against reference sets.

Registered by :mod:`crystal_cli.commands`; heavy imports happen inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from crystal.errors import ConfigError
from crystal_cli._common import ThreadsOption, apply_threads, component_config

__all__ = ["evaluate_cmd"]

_FORMATS = (".cif", ".csv", ".extxyz", ".xyz", ".json", ".vasp", ".poscar")


def _check_input(path: Path, what: str) -> None:
    if not path.exists():
        raise ConfigError(f"{what}: {path} does not exist")
    if path.is_file() and not (path.suffix.lower() in _FORMATS or path.name.lower().startswith(("poscar", "contcar"))):
        raise ConfigError(f"{what}: {path}: unsupported format; use .cif, .csv (with a 'cif' column), .extxyz or .json")


def evaluate_cmd(
    generated: Annotated[
        Path, typer.Argument(help="Generated structures: .cif, .csv (cif column), .extxyz or .json (or a folder).")
    ],
    task: Annotated[
        str, typer.Option("--task", "-t", help="csp (structure prediction) or generation (ab initio).")
    ] = "generation",
    reference: Annotated[
        Path | None, typer.Option("--reference", "-r", help="Test structures (e.g. perov_5/test.csv).")
    ] = None,
    k: Annotated[
        list[int] | None,
        typer.Option("--k", help="csp: samples per test structure to score (repeatable; default 1 and all)."),
    ] = None,
    group_by: Annotated[
        str | None,
        typer.Option(help="csp: pair samples with test structures by 'id', 'composition' or 'auto' (default)."),
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="generation: CDVAE coverage cut-offs of perov_5, carbon_24 or mp_20.")
    ] = None,
    struc_cutoff: Annotated[float | None, typer.Option(help="generation: structure-fingerprint cut-off.")] = None,
    comp_cutoff: Annotated[float | None, typer.Option(help="generation: composition-fingerprint cut-off.")] = None,
    n_samples: Annotated[
        int | None, typer.Option(help="generation: valid crystals drawn for the Wasserstein distances (CDVAE: 1000).")
    ] = None,
    train: Annotated[Path | None, typer.Option(help="Training structures for uniqueness and novelty.")] = None,
    sun: Annotated[
        bool, typer.Option("--sun", help="Also stability, uniqueness, novelty (needs a potential).")
    ] = False,
    potential: Annotated[str | None, typer.Option("--potential", "-p", help="Potential plugin for --sun.")] = None,
    config: Annotated[
        list[str] | None, typer.Option("--config", "-c", help="Potential config KEY=VALUE (repeatable).")
    ] = None,
    hull_reference: Annotated[
        Path | None, typer.Option(help="--sun: structures whose relaxed energies define the convex hull.")
    ] = None,
    stability_threshold: Annotated[
        float | None, typer.Option(help="--sun: stable when E_hull <= this, eV/atom (default 0.1).")
    ] = None,
    fmax: Annotated[float | None, typer.Option(help="--sun: relaxation force threshold, eV/Å (default 0.1).")] = None,
    max_steps: Annotated[
        int | None, typer.Option(help="--sun: FIRE steps per structure at most (default 500).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="--sun: auto (default), cpu, cuda or cuda:N.")] = None,
    limit: Annotated[int | None, typer.Option(help="Read at most this many reference structures.")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes for StructureMatcher and fingerprints.")] = 0,
    seed: Annotated[int, typer.Option(help="Seed for --n-samples.")] = 0,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "--run-dir",
            "-o",
            help="Output directory: metrics.json (the report) and failures.csv (unreadable generated entries); "
            "must not exist or be empty (default runs/evaluate-<time>). A path ending in .json names the "
            "report file itself (deprecated).",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the output directory.")] = False,
    threads: ThreadsOption = None,
) -> None:
    """Score generated crystals: CSP match rate/RMSE, validity, coverage, Wasserstein distances, S.U.N."""
    apply_threads(threads)
    from crystal_metrics.evaluate import TASKS

    if task not in TASKS:
        raise ConfigError(f"--task: unknown task {task!r}; allowed: {', '.join(TASKS)}")
    if reference is None:
        raise ConfigError("--reference is required (the test structures, e.g. perov_5/test.csv)")
    if k is not None and any(x < 1 for x in k):
        raise ConfigError(f"--k must be >= 1, got {', '.join(map(str, k))}")
    if group_by is not None and group_by not in ("auto", "id", "composition"):
        raise ConfigError(f"--group-by: unknown value {group_by!r}; allowed: auto, id, composition")
    task_options: dict[str, dict[str, object]] = {
        "csp": {"--k": k, "--group-by": group_by},
        "generation": {
            "--dataset": dataset,
            "--struc-cutoff": struc_cutoff,
            "--comp-cutoff": comp_cutoff,
            "--n-samples": n_samples,
            "--train": train,
            "--sun": sun or None,
        },
        "sun": {
            "--potential": potential,
            "--config": config,
            "--hull-reference": hull_reference,
            "--stability-threshold": stability_threshold,
            "--fmax": fmax,
            "--max-steps": max_steps,
            "--device": device,
        },
    }
    for owner, options in task_options.items():
        given = [name for name, value in options.items() if value is not None]
        if owner in ("csp", "generation") and owner != task and given:
            raise ConfigError(f"{', '.join(given)} cannot be used with --task {task}")
        if owner == "sun" and not sun and given:
            raise ConfigError(f"{', '.join(given)}: only used with --sun")
    if workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {workers}")
    if sun and (potential is None or hull_reference is None):
        raise ConfigError("--sun needs --potential and --hull-reference")
    for path, what in ((generated, "generated"), (reference, "--reference"), (train, "--train")):
        if path is not None:
            _check_input(path, what)
    if hull_reference is not None:
        _check_input(hull_reference, "--hull-reference")
    out_dir, target = _output(output)

    from crystal.io import read_structures
    from crystal_metrics.evaluate import evaluate, summary_rows, write_report

    res = read_structures(generated)
    if not res.structures:
        reasons = "; ".join(f"{f.id}: {f.reason}" for f in res.failures[:3])
        raise ConfigError(f"{generated}: no readable structure" + (f" ({reasons})" if reasons else ""))
    potential_config: dict[str, Any] | None = None
    if config:
        potential_config = component_config(config)
    progress = None if quiet else _Progress()
    try:
        report = evaluate(
            task,
            res.ids,
            res.structures,
            reference=reference,
            k=k,
            group_by=group_by or "auto",  # type: ignore[arg-type]
            dataset=dataset,
            struc_cutoff=struc_cutoff,
            comp_cutoff=comp_cutoff,
            n_samples=n_samples,
            train=train,
            sun=sun,
            potential=potential,
            potential_config=potential_config,
            hull_reference=hull_reference,
            stability_threshold=0.1 if stability_threshold is None else stability_threshold,
            fmax=0.1 if fmax is None else fmax,
            max_steps=500 if max_steps is None else max_steps,
            device=device or "auto",
            reference_limit=limit,
            workers=workers,
            seed=seed,
            progress=progress,
        )
    finally:
        if progress is not None:
            progress.close()
    report["generated"] = str(generated)
    report["generated_read_failures"] = [{"id": f.id, "reason": f.reason} for f in res.failures]
    write_report(target, report)
    if out_dir is not None:
        _write_failures(out_dir / "failures.csv", res.failures)
    if quiet:
        typer.echo(str(out_dir if out_dir is not None else target))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{task}: {generated.name} vs {reference.name}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = summary_rows(report)
    if res.failures:
        rows.insert(1, ("unreadable generated entries", str(len(res.failures))))
    for name, value in rows:
        table.add_row(name, value)
    console = Console()
    console.print(table)
    console.print(f"report: {target}")


def _output(output: Path | None) -> tuple[Path | None, Path]:
    """The output directory (None for a legacy ``-o report.json``) and the report file; refuses an
    existing non-empty directory (before anything is computed)."""
    if output is not None and output.suffix.lower() == ".json" and not output.is_dir():
        typer.echo(
            f"warning: -o {output}: a .json file is deprecated; -o names the output directory "
            "(the report is its metrics.json)",
            err=True,
        )
        return None, output
    if output is None:
        import datetime as dt

        output = Path("runs") / f"evaluate-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError(f"{output}: output directory exists and is not empty; choose another directory (-o DIR)")
    return output, output / "metrics.json"


def _write_failures(path: Path, failures: list[Any]) -> None:
    import csv

    from crystal.io import atomic_write

    with atomic_write(path, newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "status", "step", "reason", "source"])
        for f in failures:
            w.writerow([f.id, "failed", "read", f.reason, f.source])


class _Progress:
    """A rich progress bar per evaluation stage."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
        )
        self.tasks: dict[str, Any] = {}
        self.started = False

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.started:
            self.bar.start()
            self.started = True
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(stage, total=total)
        self.bar.update(self.tasks[stage], completed=done, total=total)

    def close(self) -> None:
        if self.started:
            self.bar.stop()
