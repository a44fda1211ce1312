"""``crystal relax`` and ``crystal md``: one-step pipelines over structure files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from crystal.errors import ConfigError
from crystal_cli._common import component_config, shortcut
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
            "config": component_config(config),
        }
    ]
    sinks = [
        {"type": "cif", "path": "relaxed"},
        {"type": "extxyz", "path": "relaxed.extxyz"},
        {"type": "csv", "path": "summary.csv"},
    ]
    shortcut(inputs, steps, sinks, "relax", device, run_dir, quiet)


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
    from crystal.plugins import load
    from crystal_sim.md import MDState, run_md

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
    pot = load("potential", potential, component_config(config), device=device)
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
