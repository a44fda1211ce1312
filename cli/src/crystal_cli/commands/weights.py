"""``crystal weights list|info|download|verify|import``: the named-weights registry and its cache.

Listing reads the plugins' manifests only (no plugin code, no torch); downloads show a rich
progress bar; ``--offline`` (or ``CRYSTAL_OFFLINE=1``) never touches the network.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from crystal_cli.app import weights_app

if TYPE_CHECKING:
    from crystal.weights import ProgressCallback, WeightsStatus

_WHERE = {
    "package": "package",
    "local": "local file",
    "cached": "cached",
    "remote": "remote (not cached)",
    "missing": "MISSING",
}


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _where(s: WeightsStatus) -> str:
    text = _WHERE[s.where]
    if s.converted is False and s.present:
        text += ", not converted (--trust-pickle)"
    elif s.converted:
        text += ", converted"
    return text


def _sha(s: WeightsStatus) -> str:
    from crystal.weights import expected_sha256

    if s.entry.sha256 is not None:
        return s.entry.sha256
    pinned = expected_sha256(s.entry) if s.entry.remote else None
    return f"{pinned} (pinned at first download)" if pinned else "unpinned (the authors publish none)"


def _file_size(s: WeightsStatus) -> int | None:
    if s.entry.size is not None:
        return s.entry.size
    return s.path.stat().st_size if s.present and s.path is not None else None


@weights_app.command("list")
def weights_list(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List every registered weights entry: plugin, where it is (package / cached / remote), size, licence."""
    from crystal.weights import weights_status

    rows = weights_status()
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "name": s.name,
                        "distribution": s.distribution,
                        "where": s.where,
                        "format": s.entry.format,
                        "converted": s.converted,
                        "usable": s.usable,
                        "sha256": s.entry.sha256,
                        "path": str(s.path) if s.path else None,
                        "size_bytes": _file_size(s),
                        "licence": s.entry.licence,
                        "file": s.entry.file,
                    }
                    for s in rows
                ],
                indent=2,
            )
        )
        return
    if not rows:
        typer.echo("no weights registered")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for col in ("name", "plugin", "where", "size", "licence"):
        table.add_column(col, justify="right" if col == "size" else "left", no_wrap=col == "name")
    for s in rows:
        table.add_row(s.name, s.distribution or "-", _where(s), _size(_file_size(s)), s.entry.licence)
    Console(width=200).print(table)


@weights_app.command("info")
def weights_info(name: Annotated[str, typer.Argument(help="Weights name.")]) -> None:
    """Show every field of one weights entry, its local path and whether it is present."""
    from crystal.weights import weights_status

    s = weights_status([name])[0]
    e = s.entry
    lines = [
        f"{e.name}",
        f"  plugin:        {s.distribution or '-'}",
        f"  file:          {e.file}",
        f"  sha256:        {_sha(s)}",
        f"  format:        {e.format}" + (f" (converter {e.converter})" if e.converter else ""),
        f"  size:          {_size(_file_size(s))}" + (f" ({e.size} bytes)" if e.size is not None else ""),
        f"  licence:       {e.licence}",
        f"  training data: {e.training_data}",
    ]
    if e.citation:
        lines.append(f"  citation:      {e.citation}")
    if e.description:
        lines.append(f"  description:   {e.description}")
    if e.metrics:
        lines.append("  metrics:       " + ", ".join(f"{k}={v}" for k, v in e.metrics.items()))
    lines.append(f"  local path:    {s.path if s.path is not None else '-'}")
    lines.append(f"  where:         {_where(s)}")
    if e.format == "pickled-module":
        from crystal.weights import converted_path

        lines.append(f"  converted:     {converted_path(e)}" + ("" if s.converted else " (not yet)"))
    lines.append(
        f"  cached:        {'yes' if s.where == 'cached' else 'no' if s.where == 'remote' else 'n/a (not remote)'}"
    )
    typer.echo("\n".join(lines))


@contextmanager
def _progress_bar(label: str, quiet: bool) -> Iterator[ProgressCallback | None]:
    if quiet:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), transient=False
    ) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@weights_app.command("download")
def weights_download(
    names: Annotated[list[str] | None, typer.Argument(help="Weights names.", show_default=False)] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every remote weights entry not yet cached.")] = False,
    offline: Annotated[
        bool, typer.Option("--offline", help="Never touch the network (also CRYSTAL_OFFLINE=1).")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Download again even when cached.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Download remote weights into the cache (atomic, resumable, sha256-checked)."""
    from crystal.weights import converted_path, download_weights, is_offline, weights_status

    if all_ and names:
        raise typer.BadParameter("give names or --all, not both")
    if not all_ and not names:
        raise typer.BadParameter("give weights names or --all")
    statuses = weights_status(None if all_ else names)
    if all_:
        statuses = [s for s in statuses if s.entry.remote]
    off = offline or is_offline()
    for s in statuses:
        if s.where == "cached" and not force:
            path = download_weights(s.entry, offline=True)  # verifies, never downloads
            typer.echo(f"{s.name}: cached at {path}")
            continue
        with _progress_bar(s.name, quiet or not s.entry.remote) as progress:
            path = download_weights(s.entry, progress=progress, offline=off, force=force)
        typer.echo(f"{s.name}: {'verified' if not s.entry.remote else 'downloaded and verified'} at {path}")
        if s.entry.format == "pickled-module" and not converted_path(s.entry).is_file():
            typer.echo(
                f"{s.name}: a pickled module; convert it once, where its reference package is installed: "
                f"crystal weights import --trust-pickle {path} --name {s.name}"
            )


@weights_app.command("verify")
def weights_verify(
    names: Annotated[list[str] | None, typer.Argument(help="Weights names (default: all).", show_default=False)] = None,
) -> None:
    """Recompute the sha256 of the weights files present; exit 1 on a mismatch."""
    from crystal.weights import verify_weights

    bad = 0
    for c in verify_weights(names or None):
        if c.ok is None:
            typer.echo(f"{c.name}: not present" + (f" ({c.path})" if c.path else ""))
        elif c.ok:
            typer.echo(f"{c.name}: ok ({c.path})")
        else:
            bad += 1
            typer.echo(f"{c.name}: MISMATCH {c.path}: sha256 {c.actual}, expected {c.expected}", err=True)
    if bad:
        raise typer.Exit(1)


@weights_app.command("import")
def weights_import(
    file: Annotated[Path, typer.Argument(help="A weights file downloaded elsewhere.")],
    name: Annotated[
        str | None, typer.Option("--name", help="The weights it is (default: found by its sha256).")
    ] = None,
    trust_pickle: Annotated[
        bool,
        typer.Option(
            "--trust-pickle",
            help="For a pickled module (e.g. a mace-torch .model): unpickle it ONCE, here, and convert it to a "
            "weights-only file. Unpickling runs code from the file; the reference package must be installed.",
        ),
    ] = False,
) -> None:
    """Copy a file into the weights cache after checking its sha256 against the registry
    (with --trust-pickle: also convert a pickled module into a weights-only file)."""
    import warnings

    from crystal.weights import import_weights

    if trust_pickle:
        typer.secho(
            f"WARNING: --trust-pickle unpickles {file}, which runs code stored in the file. crystal does this only "
            "for a file whose sha256 matches the registry's entry, and only now; loaders then read the "
            "weights-only conversion.",
            err=True,
            fg="yellow",
            bold=True,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the banner above says it
        entry, path = import_weights(file, name, trust_pickle=trust_pickle)
    if trust_pickle:
        typer.echo(f"{entry.name}: unpickled {file} and wrote the weights-only conversion {path}")
    else:
        typer.echo(f"{entry.name}: imported {file} -> {path}")
        if entry.format == "pickled-module":
            typer.echo(
                f"{entry.name}: a pickled module; loaders need its conversion: rerun with --trust-pickle where "
                "its reference package is installed"
            )
