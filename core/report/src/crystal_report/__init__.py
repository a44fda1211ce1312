"""crystal-report: ``report.html`` for a run directory (``crystal report RUN_DIR``).

>>> from crystal_report import write_report
>>> write_report("runs/discovery-2026...")          # doctest: +SKIP
PosixPath('runs/discovery-2026.../report.html')

The report is written at the end of every pipeline run (the ``pipeline_event`` hook, on
``run_end``) and of every training run; :func:`build_report` returns the HTML. Importing
this package is light: the report's modules load when a report is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crystal_report.page import build_report, write_report

__all__ = ["build_report", "write_report"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from crystal_report import page

        return getattr(page, name)
    raise AttributeError(name)
