"""Map a function over tasks in worker processes, surviving exceptions and dead workers.

Every task's result is ``(value, error)``: an exception inside a task becomes its error
text (the other tasks go on); a worker process that dies (a segfault in a C extension,
the OOM killer) breaks the pool; the tasks it had not finished are then rerun one at a time,
each in a fresh process, and a task that kills that process too is reported as failed.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from crystal.errors import CrystalError

T = TypeVar("T")
R = TypeVar("R")

__all__ = ["guarded_map"]


def _guarded(fn: Callable[[Any], Any], task: Any) -> tuple[Any, str | None]:
    try:
        return fn(task), None
    except Exception as exc:  # a task must never stop the evaluation
        msg = str(exc).strip().splitlines()
        return None, f"{type(exc).__name__}: {msg[0] if msg else ''}"[:300]


def guarded_map(
    fn: Callable[[T], R],
    tasks: Sequence[T],
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> list[tuple[R | None, str | None]]:
    """``[(fn(task), None) or (None, error)]`` in task order; ``workers`` ≤ 1 runs in-process.

    ``fn`` must be a picklable top-level function when ``workers > 1`` (processes are
    started with ``spawn`` so no torch/OpenMP state is forked; a script using workers
    therefore needs the usual ``if __name__ == "__main__":`` guard). When worker processes
    die before finishing any task, :class:`~crystal.errors.CrystalError` is raised.
    """
    n = len(tasks)
    results: list[tuple[Any, str | None] | None] = [None] * n
    if workers <= 1 or n <= 1:
        for k, task in enumerate(tasks):
            results[k] = _guarded(fn, task)
            if progress is not None:
                progress(k + 1, n)
        return [r if r is not None else (None, "not run") for r in results]
    ctx = multiprocessing.get_context("spawn")
    retry: list[int] = []
    done = 0
    returned = 0  # tasks a worker process finished (with a value or a caught exception)
    with ProcessPoolExecutor(max_workers=min(workers, n), mp_context=ctx) as pool:
        futures = {pool.submit(_guarded, fn, task): k for k, task in enumerate(tasks)}
        for fut, k in futures.items():
            try:
                results[k] = fut.result()
                returned += 1
            except BrokenProcessPool:  # some task killed its worker: find out which, alone
                retry.append(k)
                continue
            done += 1
            if progress is not None:
                progress(done, n)
    for attempt, k in enumerate(retry):
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as solo:
            try:
                results[k] = solo.submit(_guarded, fn, tasks[k]).result()
                returned += 1
            except BrokenProcessPool:
                results[k] = (None, "the worker process died on this task")
                if returned == 0 and attempt == 2:
                    raise CrystalError(
                        "worker processes die before doing any work (a script that calls this with workers > 1 "
                        "needs an `if __name__ == '__main__':` guard, since workers are spawned); "
                        "use workers=0 to run in-process"
                    ) from None
        done += 1
        if progress is not None:
            progress(done, n)
    return [r if r is not None else (None, "not run") for r in results]
