"""pluggy hook specifications: the cross-cutting extension points of crystal.

Plugins implement hooks in a module named by the ``crystal.hooks`` entry-point group::

    [project.entry-points."crystal.hooks"]
    crystal-foo = "crystal_foo.hooks"

and decorate functions with :data:`hookimpl`. Hook modules are imported when the CLI starts,
so they must stay light: import torch or model code inside the hook body, not at the top.
Each hook is documented with its exact signature and an example in ``docs/hooks.md``; a
meta-test fails when a hook here lacks that documentation or a test.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import torch
    import typer
    from pymatgen.core import Structure

    from crystal.batch import CrystalBatch
    from crystal.events import PipelineEvent

__all__ = ["PROJECT", "DatasetSpec", "MetricSpec", "hookimpl", "hookspec"]

PROJECT = "crystal"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset. ``load(limit)`` returns ``(ids, structures)`` (at most ``limit``)."""

    name: str
    description: str
    load: Callable[[int | None], tuple[Sequence[str], Sequence[Structure]]]
    licence: str = ""
    source: str = ""


@dataclass(frozen=True)
class MetricSpec:
    """A named per-crystal metric: ``compute(batch)`` → ``(B,)`` tensor in ``unit``."""

    name: str
    unit: str
    description: str
    compute: Callable[[CrystalBatch], torch.Tensor]


@hookspec
def register_commands(cli: typer.Typer) -> None:
    """Add commands to the ``crystal`` CLI.

    ``cli`` is the root :class:`typer.Typer` application; call ``cli.command()`` or
    ``cli.add_typer()`` on it.
    """


@hookspec
def register_datasets(register: Callable[[DatasetSpec], None]) -> None:
    """Make named datasets available to pipelines (``[source] type = "dataset", name = "..."``).

    Call ``register(DatasetSpec(name=..., description=..., load=...))`` once per dataset;
    ``load(limit)`` returns ``(ids, structures)``.
    """


@hookspec
def register_metrics(register: Callable[[MetricSpec], None]) -> None:
    """Make named per-crystal metrics available to the pipeline's ``metrics`` step.

    Call ``register(MetricSpec(name=..., unit=..., description=..., compute=...))``;
    ``compute(batch)`` returns a ``(B,)`` tensor.
    """


@hookspec
def pipeline_event(event: PipelineEvent) -> None:
    """Observe a running pipeline: run/step start and end, progress and failures.

    Called synchronously in the pipeline's process; keep it fast. Exceptions raised here
    are reported and do not stop the run.
    """
