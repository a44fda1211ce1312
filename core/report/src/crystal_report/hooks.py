"""crystal-report's hooks: the ``crystal report`` command, and ``report.html`` at the end of
every run (``pipeline_event`` on ``run_end``).

Imported when the CLI starts: nothing heavy here; the report's modules load when one is built.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from crystal.hookspecs import hookimpl

if TYPE_CHECKING:
    import typer

    from crystal.events import PipelineEvent

__all__ = ["pipeline_event", "register_commands"]


@hookimpl
def register_commands(cli: typer.Typer) -> None:
    """Add ``crystal report RUN_DIR [-o PATH]`` to the command line."""
    from crystal_report.command import report

    if any(c.name == "report" for c in cli.registered_commands):
        return  # registered by an earlier call in this process (main() called twice, tests)
    cli.command("report")(report)


@hookimpl
def pipeline_event(event: PipelineEvent) -> None:
    """On ``run_end``, write ``report.html`` into the run directory. A report that cannot be
    built is a warning on stderr; the run's own result never depends on it."""
    if event.kind != "run_end":
        return
    try:
        from crystal_report.page import write_report

        write_report(event.run_dir)
    except Exception as exc:
        print(
            f"warning: crystal-report could not write {event.run_dir}/report.html "
            f"({type(exc).__name__}: {exc}); rebuild it with: crystal report {event.run_dir}",
            file=sys.stderr,
        )
