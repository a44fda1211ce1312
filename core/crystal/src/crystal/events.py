"""Pipeline events, delivered to the ``pipeline_event`` hook."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["EventKind", "PipelineEvent"]

EventKind = Literal["run_start", "step_start", "progress", "step_end", "failure", "run_end"]


@dataclass(frozen=True)
class PipelineEvent:
    """One thing that happened in a run.

    ``kind``      what happened
    ``run_dir``   the run directory (a string path)
    ``step``      step id (``None`` for run-level events)
    ``message``   a human-readable line
    ``done``/``total``  progress counters in structures (``progress``/``step_end``)
    ``data``      extra fields (e.g. ``{"id": ..., "reason": ...}`` for failures)
    """

    kind: EventKind
    run_dir: str
    step: str | None = None
    message: str = ""
    done: int | None = None
    total: int | None = None
    data: dict[str, Any] = field(default_factory=dict)
