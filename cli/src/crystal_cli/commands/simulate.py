"""``crystal relax`` (a one-step pipeline over structure files) and ``crystal md``.

``crystal md`` runs :func:`crystal_sim.md.run_md` itself (the pipeline's ``md`` step keeps no
trajectory) but follows the run-directory conventions of ``crystal run``/``relax``: the
directory must not exist (or be empty), ``manifest.json`` is written before anything runs
(status ``running``) and completed at the end (``finished``, ``failed`` or ``interrupted``),
unreadable or unsupported structures are rows of ``failures.csv``, progress is shown.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from crystal.errors import ConfigError
from crystal_cli._common import ThreadsOption, apply_threads, component_config, shortcut
from crystal_cli.app import app


@app.command("relax")
def relax_cmd(
    inputs: Annotated[
        list[Path], typer.Argument(help="Structure files, folders or globs (CIF, POSCAR, extxyz, JSON, CSV).")
    ],
    potential: Annotated[str, typer.Option("--potential", "-p", help="Potential plugin name.")] = "chgnet",
    fmax: Annotated[float, typer.Option(help="Force convergence, eV/Å.")] = 0.1,
    max_steps: Annotated[int, typer.Option(help="FIRE steps per structure at most.")] = 500,
    fix_cell: Annotated[bool, typer.Option("--fix-cell", help="Relax positions only.")] = False,
    max_volume_factor: Annotated[
        float | None,
        typer.Option(
            help="Stop a crystal (failure row) whose volume changes by more than this factor (default 4; 0: no bound)."
        ),
    ] = None,
    config: Annotated[
        list[str] | None, typer.Option("--config", "-c", help="Potential config KEY=VALUE (repeatable).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    run_dir: Annotated[
        Path | None,
        typer.Option(
            "--run-dir",
            "--output",
            "-o",
            help="Run directory; must not exist or be empty (default runs/relax-<time>).",
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress output; print only the run directory.")
    ] = False,
    threads: ThreadsOption = None,
) -> None:
    """Relax structures with a potential (batched FIRE); writes CIFs, extxyz and a summary."""
    apply_threads(threads)
    steps = [
        {
            "id": "relax",
            "type": "relax",
            "potential": potential,
            "fmax": fmax,
            "max_steps": max_steps,
            "relax_cell": not fix_cell,
            "config": component_config(config),
            **({} if max_volume_factor is None else {"max_volume_factor": max_volume_factor or None}),
        }
    ]
    sinks = [
        {"type": "cif", "path": "relaxed"},
        {"type": "extxyz", "path": "relaxed.extxyz"},
        {"type": "csv", "path": "summary.csv"},
    ]
    shortcut(inputs, steps, sinks, "relax", device, run_dir, quiet)


_MD_PACKAGES = ("crystal-core", "crystal-cli", "crystal-sim", "torch", "numpy", "pymatgen", "ase", "pydantic")


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    import json

    from crystal.io import atomic_write

    with atomic_write(path) as fh:
        json.dump(data, fh, indent=2, default=str)
        fh.write("\n")


def _write_rows(path: Path, fields: list[str], rows: list[dict[str, Any]]) -> None:
    import csv

    from crystal.io import atomic_write

    with atomic_write(path, newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _weights_record(name: str) -> dict[str, Any]:
    from crystal.weights import find_weights

    entry = find_weights(name)
    return {"name": name, "sha256": entry.sha256, "file": entry.file, "licence": entry.licence}


class _MDProgress:
    """A rich progress bar over crystal-steps (groups of crystals that fit in memory run one
    after another, each for every step)."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.progress: Any = None
        self.last = 0
        if quiet:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]{task.fields[step]:<12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
        )
        self.task = self.progress.add_task("", step="md", total=total)
        self.progress.start()

    def update(self, step: int, crystals: int, temperature: float) -> None:
        if step < self.last:  # the next group of crystals starts again at step 0
            self.last = 0
        done, self.last = (step - self.last) * crystals, step
        if self.progress is not None:
            self.progress.update(self.task, advance=done, description=f"step {step}, mean T {temperature:.0f} K")

    def note(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(f"[yellow]skipped[/] {text}")
        else:
            typer.echo(f"skipped {text}", err=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


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
    run_dir: Annotated[
        Path | None,
        typer.Option(
            "--run-dir",
            "--output",
            "-o",
            help="Run directory; must not exist or be empty (default runs/md-<time>).",
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress output; print only the run directory.")
    ] = False,
    threads: ThreadsOption = None,
) -> None:
    """Batched molecular dynamics of every input structure at once (fixed cell).

    Writes into the run directory ``trajectory.extxyz`` (a frame of every crystal every
    --log-every steps, with energy and temperature in the frame info), ``energies.csv`` (step,
    id, total, potential and kinetic energy in eV, temperature in K), ``final.extxyz``,
    ``summary.csv`` (per crystal, units in the column names), ``failures.csv`` and
    ``manifest.json``.
    """
    import datetime as dt
    import platform
    import time

    from pydantic import ValidationError

    from crystal.config import format_validation_error

    n_threads = apply_threads(threads)
    from crystal_sim.md import MDConfig

    opts: dict[str, Any] = {
        "ensemble": ensemble, "timestep": timestep, "steps": steps, "temperature": temperature,
        "log_every": log_every, "seed": seed,
    }  # fmt: skip
    if friction is not None:
        opts["friction"] = friction
    try:
        md_config = MDConfig(**opts)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "crystal md")) from None
    if log_every > steps:
        raise ConfigError(f"crystal md: --log-every ({log_every}) is larger than --steps ({steps}): nothing to record")
    out = run_dir if run_dir is not None else Path("runs") / f"md-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out}: run directory exists and is not empty; choose another directory (-o DIR)")

    import torch

    from crystal.components import Potential
    from crystal.errors import StructureError
    from crystal.io import read_structures
    from crystal.plugins import list_plugins, load

    read = read_structures(inputs)  # a missing file: ConfigError, nothing written
    if not read.structures:
        reasons = "; ".join(f"{f.id}: {f.reason}" for f in read.failures[:3])
        raise ConfigError("crystal md: no readable structures in the inputs" + (f" ({reasons})" if reasons else ""))
    pot = load("potential", potential, component_config(config), device=device)  # bad plugin/config: exit 2
    assert isinstance(pot, Potential)

    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    info = next((p for p in list_plugins(include_disabled=True) if (p.kind, p.name) == ("potential", pot.name)), None)
    manifest: dict[str, Any] = {
        "command": "crystal md",
        "crystal_version": _version("crystal-core"),
        "origin": "crystal md",
        "inputs": [str(p.resolve()) for p in inputs],
        "config": {
            "potential": potential,
            "potential_config": pot.config.model_dump(mode="json"),
            "md": md_config.model_dump(mode="json"),
        },
        "seed": seed,
        "device": str(pot.device),
        "device_name": torch.cuda.get_device_name(pot.device)
        if pot.device.type == "cuda"
        else platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {p: _version(p) for p in _MD_PACKAGES},
        "torch_threads": torch.get_num_threads(),
        "plugins": [
            {
                "step": "md",
                "device": str(pot.device),
                "kind": "potential",
                "name": pot.name,
                "component_version": pot.version,
                "distribution": info.distribution if info else None,
                "distribution_version": info.version if info else None,
                "config": pot.config.model_dump(mode="json"),
                "weights": [_weights_record(w) for w in pot.weights_in_use()],
            }
        ],
        "started": dt.datetime.now(dt.UTC).isoformat(),
        "status": "running",
        "resumed": False,
        "timings_s": {},
    }
    _write_json(out / "manifest.json", manifest)
    failure_fields = ["id", "status", "step", "reason", "source"]
    failures: list[dict[str, Any]] = [
        {"id": f.id, "status": "failed", "step": "read", "reason": f.reason, "source": f.source} for f in read.failures
    ]
    bar: _MDProgress | None = None
    try:
        batch = read.to_batch()
        # crystals with elements the potential does not cover are failures, not a failed run
        uncovered = torch.zeros(len(batch), dtype=torch.bool)
        if pot.elements is not None:
            covered = torch.zeros(max(int(batch.atomic_numbers.max()), *pot.elements) + 1, dtype=torch.bool)
            covered[list(pot.elements)] = True
            bad_atoms = (~covered[batch.atomic_numbers]).long()
            uncovered = torch.zeros(len(batch), dtype=torch.long).index_add_(0, batch.batch, bad_atoms) > 0
        keep = [k for k in range(len(batch)) if not uncovered[k]]
        for k in torch.nonzero(uncovered).flatten().tolist():
            try:
                pot.check_elements(batch.select(torch.tensor([k])))  # raises, naming the elements
            except StructureError as exc:
                failures.append(
                    {
                        "id": batch.ids[k],
                        "status": "failed",
                        "step": "md",
                        "reason": str(exc),
                        "source": read.sources[k],
                    }
                )
        if not keep:
            raise StructureError(f"crystal md: no crystal left to simulate ({failures[-1]['reason']})")
        batch = batch.select(torch.tensor(keep)).to(pot.device)
        bar = _MDProgress(len(batch) * steps, quiet)
        for f in failures:
            bar.note(f"{f['id']} ({f['source']}): {f['reason']}")
        result, frames, drift, t_md = _run_md(pot, batch, md_config, bar)
        bar.close()
        _write_md_outputs(out, result, frames, drift, read.sources, keep)
        _write_rows(out / "failures.csv", failure_fields, failures)
    except BaseException as exc:
        if bar is not None:
            bar.close()
        interrupted = isinstance(exc, KeyboardInterrupt)
        manifest["status"] = "interrupted" if interrupted else "failed"
        manifest["error"] = f"{type(exc).__name__}: {exc}"
        manifest["timings_s"]["total"] = round(time.perf_counter() - t_start, 3)
        _write_rows(out / "failures.csv", failure_fields, failures)
        _write_json(out / "manifest.json", manifest)
        if interrupted:
            typer.echo(f"interrupted (MD keeps no checkpoints; run again into a new directory): {out}", err=True)
            raise typer.Exit(130) from None
        raise
    n_in = len(read.ids) + len(read.failures)
    manifest["timings_s"] = {"md": round(t_md, 3), "total": round(time.perf_counter() - t_start, 3)}
    manifest["counts"] = {"inputs": n_in, "ok": len(result.batch), "failed": len(failures)}
    manifest["outputs"] = ["trajectory.extxyz", "final.extxyz", "energies.csv", "summary.csv", "failures.csv"]
    manifest["status"] = "finished"
    manifest["finished"] = dt.datetime.now(dt.UTC).isoformat()
    _write_json(out / "manifest.json", manifest)
    if quiet:
        typer.echo(str(out))
        return
    typer.echo(
        f"{len(result.batch)} crystals, {steps} steps of {timestep} fs ({ensemble}) in {t_md:.1f} s "
        f"({n_threads} thread(s)); {len(failures)} failed"
    )
    if drift is not None:
        typer.echo(f"NVE energy drift: max {float(drift.abs().max()) * 1000:.3g} meV/atom")
    for f in failures[:5]:
        typer.echo(f"failed {f['id']} at {f['step']}: {f['reason']}", err=True)
    typer.echo(f"output: {out}")


def _run_md(pot: Any, batch: Any, cfg: Any, bar: _MDProgress) -> tuple[Any, list[Any], Any, float]:
    """Integrate; the frames every ``log_every`` steps, the NVE drift per atom from step 0 (or
    None) and the time spent."""
    import time

    import torch
    from ase.data import atomic_masses
    from ase.units import fs as ase_fs

    from crystal_sim.md import MDState, maxwell_boltzmann_velocities, run_md

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
        bar.update(state.step, len(state.batch), float(state.temperature.mean()))

    velocities = kinetic0 = None
    if cfg.ensemble == "nve":  # the drift from step 0: draw the start velocities run_md would draw
        t0 = cfg.temperature if cfg.init_temperature is None else cfg.init_temperature
        velocities = maxwell_boltzmann_velocities(batch, t0, cfg.seed)
        masses = torch.as_tensor(atomic_masses, dtype=batch.dtype, device=batch.device)[batch.atomic_numbers]
        v = velocities / ase_fs
        kinetic0 = torch.zeros(len(batch), dtype=batch.dtype, device=batch.device).index_add_(
            0, batch.batch, 0.5 * masses * (v * v).sum(dim=1)
        )
    start = time.perf_counter()
    result = run_md(pot, batch, cfg, velocities=velocities, callback=record)
    elapsed = time.perf_counter() - start
    drift = None
    if kinetic0 is not None and len(result.steps):
        n_atoms = result.batch.num_atoms.to(batch.dtype)
        drift = (result.total_energy[-1] - (result.initial_potential_energy + kinetic0)) / n_atoms
    return result, frames, drift, elapsed


def _write_md_outputs(
    out: Path, result: Any, frames: list[Any], drift: Any, sources: list[str], keep: list[int]
) -> None:
    import csv

    from ase.io import write as ase_write

    from crystal.io import atomic_write, write_structures

    with atomic_write(out / "trajectory.extxyz") as fh:
        ase_write(fh, frames, format="extxyz")
    write_structures(result.batch, out / "final.extxyz", "extxyz")
    ids = result.batch.ids
    with atomic_write(out / "energies.csv", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["step", "id", "total_energy_eV", "potential_energy_eV", "kinetic_energy_eV", "temperature_K"])
        for t, step in enumerate(result.steps.tolist()):
            for b, ident in enumerate(ids):
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
    energy = result.batch.crystal_properties["energy"]
    n_atoms = result.batch.num_atoms
    formulas = result.batch.formulas()
    t_mean = result.temperature.mean(dim=0) if len(result.steps) else None
    rows = []
    for b, ident in enumerate(ids):
        rows.append(
            {
                "id": ident,
                "formula": formulas[b],
                "source": sources[keep[b]],
                "num_atoms": int(n_atoms[b]),
                "final_energy_eV": float(energy[b]),
                "final_energy_per_atom_eV": float(energy[b]) / int(n_atoms[b]),
                "md_temperature_mean_K": "" if t_mean is None else float(t_mean[b]),
                "md_energy_drift_per_atom_eV": "" if drift is None else float(drift[b]),
            }
        )
    fields = [
        "id",
        "formula",
        "source",
        "num_atoms",
        "final_energy_eV",
        "final_energy_per_atom_eV",
        "md_temperature_mean_K",
        "md_energy_drift_per_atom_eV",
    ]
    _write_rows(out / "summary.csv", fields, rows)
