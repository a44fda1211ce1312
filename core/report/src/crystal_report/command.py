"""``crystal report RUN_DIR``: (re)build a run directory's ``report.html``.

Added to the command line by this package's ``register_commands`` hook; typer and the
light modules of crystal-core only at import, the report's modules inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

__all__ = ["report"]


def report(
    run_dir: Annotated[
        Path, typer.Argument(help="A run directory: of `crystal run`, relax, predict, train or train-potential.")
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Where to write: a directory (gets report.html, created if needed) or a file ending in .html "
            "(default: RUN_DIR/report.html).",
        ),
    ] = None,
    top: Annotated[
        int, typer.Option("--top", min=0, help="Top candidates shown with an XRD pattern and a 3-D view.")
    ] = 3,
    rows: Annotated[int, typer.Option("--rows", min=1, help="Rows of the ranked table shown on the page.")] = 50,
    xrd: Annotated[
        Literal["auto", "crystal-xrd", "pymatgen"],
        typer.Option(
            "--xrd", help="XRD simulator: auto (crystal-xrd when installed, else pymatgen), crystal-xrd, pymatgen."
        ),
    ] = "auto",
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            min=1,
            help="CPU threads for torch (default: $CRYSTAL_NUM_THREADS, else the idle cores: cores minus the load average).",
        ),
    ] = None,
) -> None:
    """Write RUN_DIR/report.html: counts, the ranked table with units, distributions, parity
    plots of training runs, XRD patterns and a 3-D view of the top candidates, the manifest.
    One self-contained file; it loads nothing from the network."""
    import os

    from crystal.device import set_num_threads
    from crystal.errors import ConfigError
    from crystal_report.page import write_report

    n = set_num_threads(threads)
    os.environ["CRYSTAL_NUM_THREADS"] = str(n)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: not a run directory (it does not exist or is not a folder)")
    path = write_report(run_dir, output, top=top, max_rows=rows, xrd=xrd)
    typer.echo(f"report → {path}")
