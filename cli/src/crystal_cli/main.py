"""The ``crystal`` command line.

Errors print one line (``error: ...``) and exit non-zero: 2 for invalid input or
configuration (nothing ran), 1 when a run failed. ``--debug`` shows tracebacks.
Heavy imports (torch, pymatgen, plugins) happen inside commands, never at start-up.
"""

from __future__ import annotations

import os
import sys

import typer

from crystal.errors import ConfigError, CrystalError, PluginError
from crystal_cli import commands as _commands  # noqa: F401  (registers every command on the app)
from crystal_cli.app import app

__all__ = ["app", "entry", "main"]


def _register_plugin_commands() -> None:
    from crystal.hooks import call_isolated

    for plugin, exc in call_isolated("register_commands", cli=app):  # a broken plugin must not take the CLI down
        typer.echo(f"warning: plugin {plugin!r} could not register its commands: {exc}", err=True)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit status."""
    _register_plugin_commands()
    debug = "--debug" in (argv if argv is not None else sys.argv[1:]) or os.environ.get("CRYSTAL_DEBUG") == "1"
    try:
        app(args=argv, prog_name="crystal")  # standalone mode: usage errors exit 2 by themselves
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except (ConfigError, PluginError) as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        return 2
    except CrystalError as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        return 1
    except Exception as exc:
        if debug:
            raise
        typer.echo(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
        return 1
    return 0


def entry() -> None:
    sys.exit(main())
