"""crystal-xrd's hooks: the ``crystal xrd`` command group (``register_commands``).

Imported when the CLI starts: only typer and the command module's light imports here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crystal.hookspecs import hookimpl

if TYPE_CHECKING:
    import typer

__all__ = ["register_commands"]


@hookimpl
def register_commands(cli: typer.Typer) -> None:
    """Add ``crystal xrd`` (``crystal xrd simulate STRUCTURES... -o DIR``) to the command line."""
    from crystal_xrd.cli import xrd_app

    if any(group.typer_instance is xrd_app for group in cli.registered_groups):
        return  # registered by an earlier call in this process (main() called twice, tests)
    cli.add_typer(xrd_app, name="xrd")
