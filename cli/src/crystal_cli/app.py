"""The ``crystal`` Typer application and its global options; commands live in :mod:`crystal_cli.commands`."""

from __future__ import annotations

import os
from typing import Annotated

import typer

app = typer.Typer(
    name="crystal",
    help="AI-driven discovery of crystalline materials: compose generators, potentials, encoders and characterizers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
plugins_app = typer.Typer(help="List, inspect and check installed plugins.", no_args_is_help=True)
app.add_typer(plugins_app, name="plugins")
weights_app = typer.Typer(
    help="List, download, verify and import named weights (cache: $CRYSTAL_CACHE).", no_args_is_help=True
)
app.add_typer(weights_app, name="weights")

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
    offline: Annotated[
        bool,
        typer.Option(
            "--offline", help="Never download weights (as CRYSTAL_OFFLINE=1): only packaged and cached files are used."
        ),
    ] = False,
) -> None:
    _STATE["debug"] = debug or os.environ.get("CRYSTAL_DEBUG") == "1"
    if offline:
        os.environ["CRYSTAL_OFFLINE"] = "1"  # read by crystal.weights.is_offline() in this process
