"""``crystal predict``: properties of structure files with an encoder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crystal_cli._common import component_config, shortcut
from crystal_cli.app import app


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
    encoder_config = component_config(config)
    if weights:
        encoder_config["weights"] = weights
    steps = [{"id": "predict", "type": "predict", "encoder": encoder, "config": encoder_config}]
    shortcut(inputs, steps, [{"type": "csv", "path": "predictions.csv"}], "predict", device, run_dir, quiet)
