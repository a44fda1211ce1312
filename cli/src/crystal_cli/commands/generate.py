"""``crystal generate``: crystals from a generator plugin, without writing a pipeline TOML.

A one-source pipeline (source ``type = "generate"``) with a ``cif`` sink (``structures/``)
and a ``csv`` sink (``summary.csv``); rejected samples are rows of ``failures.csv``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from crystal.errors import ConfigError
from crystal_cli._common import ThreadsOption, apply_threads, component_config, run_shortcut
from crystal_cli.app import app

__all__ = ["generate_cmd", "parse_chemical_system"]


def parse_chemical_system(text: str) -> list[str]:
    """``"Li-Mn-O"`` (or ``"Li,Mn,O"``, ``"Li Mn O"``) -> ``["Li", "Mn", "O"]``, each a known element."""
    from crystal.elements import atomic_number

    parts = [p for p in text.replace(",", "-").replace(" ", "-").split("-") if p]
    if not parts:
        raise ConfigError(f"--chemical-system {text!r}: no elements; e.g. --chemical-system Li-Mn-O")
    for el in parts:
        try:
            atomic_number(el)
        except ValueError:
            raise ConfigError(
                f"--chemical-system {text!r}: {el!r} is not an element symbol; e.g. --chemical-system Li-Mn-O"
            ) from None
    if len(set(parts)) != len(parts):
        raise ConfigError(f"--chemical-system {text!r}: an element is repeated")
    return parts


@app.command("generate")
def generate_cmd(
    generator: Annotated[
        str, typer.Option("--generator", "-g", help="Generator plugin name (`crystal plugins list`).")
    ],
    composition: Annotated[
        str | None, typer.Option("--composition", help="Formula unit to generate, e.g. SrTiO3.")
    ] = None,
    chemical_system: Annotated[
        str | None,
        typer.Option("--chemical-system", help="Elements to draw compositions from, e.g. Li-Mn-O."),
    ] = None,
    space_group: Annotated[
        list[int] | None,
        typer.Option("--space-group", min=1, max=230, help="International space-group number 1-230 (repeatable)."),
    ] = None,
    formula_units: Annotated[
        list[int] | None,
        typer.Option("--formula-units", "-z", min=1, help="Formula units Z per cell (repeatable: sampled among)."),
    ] = None,
    num: Annotated[int, typer.Option("--num", "-n", min=1, help="Number of valid crystals to generate.")] = 8,
    max_attempts: Annotated[
        float | None,
        typer.Option(
            "--max-attempts",
            min=1.0,
            help="Attempt budget: samples drawn per requested crystal at most (default: the source's, 4).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the run (generator sampling is reproducible).")] = 0,
    weights: Annotated[
        str | None,
        typer.Option(help="Named weights of the generator (default: its default weights), or a checkpoint file."),
    ] = None,
    config: Annotated[
        list[str] | None, typer.Option("--config", "-c", help="Generator config KEY=VALUE (repeatable).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    run_dir: Annotated[
        Path | None,
        typer.Option("--run-dir", "--output", "-o", help="Run directory (must not exist; default runs/generate-TIME)."),
    ] = None,
    threads: ThreadsOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the run directory.")] = False,
) -> None:
    """Generate crystals with a generator plugin; writes structures/*.cif, summary.csv and
    failures.csv (one row per rejected sample, with its reason) in the run directory."""
    apply_threads(threads)
    from crystal.plugins import load_class
    from crystal_cli.commands.predict import weights_option

    gen_config = component_config(config)
    if weights is not None:
        given = weights_option(load_class("generator", generator), weights)
        clash = sorted(k for k in ("weights", "checkpoint") if gen_config.get(k) is not None)
        if clash:
            raise ConfigError(f"crystal generate: --weights and -c {clash[0]}= both choose the weights; give one")
        gen_config.update(given)
    source: dict[str, Any] = {"type": "generate", "generator": generator, "num_samples": num, "config": gen_config}
    if max_attempts is not None:
        source["max_attempts"] = max_attempts
    if composition is not None:
        source["composition"] = composition
    if chemical_system is not None:
        source["chemical_system"] = parse_chemical_system(chemical_system)
    if space_group:
        source["space_groups"] = list(space_group)
    if formula_units:
        source["formula_units"] = list(formula_units)
    data = {
        "pipeline": {"name": "generate", "seed": seed},
        "source": source,
        "sinks": [{"type": "cif", "path": "structures"}, {"type": "csv", "path": "summary.csv"}],
    }
    run_shortcut(data, device, run_dir, quiet)
