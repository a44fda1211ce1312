"""The run writers every trainer uses: one place for the artefacts of a training run.

=====================  ==========================================================
``metrics.csv``        one row per epoch (:func:`write_metrics_csv`, by the engine)
``model-card.md``      facts, metrics per split, architecture (:func:`model_card`)
``summary.json``       the same facts, machine-readable
``predictions.csv``    held-out predictions against the truth (one row per item)
``parity.png``         predicted vs true (regression: scatter with MAE; classification:
                       confusion matrix), one panel per quantity
``failures.csv``       every input row that was skipped, and why
=====================  ==========================================================

:func:`write_run` writes all of them from a :class:`RunReport`, then announces the finished
run to the ``pipeline_event`` hook (``run_end``). matplotlib is imported
(with the Agg backend) only when a plot is drawn.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from crystal.io import Failure, atomic_write

__all__ = [
    "ParityPanel",
    "RunReport",
    "announce_run_end",
    "machine_name",
    "model_card",
    "parity_plot",
    "write_failures",
    "write_metrics_csv",
    "write_predictions",
    "write_run",
]


@dataclass
class ParityPanel:
    """One panel of the parity plot: ``true`` and ``pred`` are flat sequences of numbers."""

    name: str
    true: Sequence[float]
    pred: Sequence[float]
    unit: str | None = None
    kind: Literal["regression", "classification"] = "regression"
    title: str = ""


@dataclass
class RunReport:
    """What one training run writes besides its checkpoint and ``metrics.csv``."""

    title: str
    facts: list[str]
    metrics: dict[str, dict[str, float]]
    summary: dict[str, Any]
    architecture: Mapping[str, Any] | None = None
    prediction_header: list[str] = field(default_factory=list)
    prediction_rows: list[list[Any]] = field(default_factory=list)
    panels: list[ParityPanel] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)


def machine_name(device: str = "cpu") -> str:
    """``"NVIDIA H100 ..."`` or ``"CPU (x86_64, 16 cores, 8 threads)"``."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return (
        f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    )


def write_metrics_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rewrite ``metrics.csv`` atomically; columns are the union of every row's keys."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_write(path, newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def write_failures(path: Path, failures: Sequence[Failure]) -> None:
    """``failures.csv``: id, step, reason, source (a header only when nothing failed)."""
    with atomic_write(path, newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "step", "reason", "source"])
        for f in failures:
            w.writerow([f.id, f.step, f.reason, f.source])


def write_predictions(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """``predictions.csv``; non-scalar cells are written as JSON lists."""
    with atomic_write(path, newline="") as fh:
        w = csv.writer(fh)
        w.writerow(list(header))
        for row in rows:
            w.writerow([json.dumps(v) if isinstance(v, list | tuple) else v for v in row])


def parity_plot(path: Path, panels: Sequence[ParityPanel], title: str = "") -> bool:
    """Draw ``panels`` side by side into ``path`` (PNG, written atomically); False when there is nothing to draw."""
    panels = [p for p in panels if len(p.true)]
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 4.4), squeeze=False)
    for ax, p in zip(axes[0], panels, strict=True):
        t = np.asarray(p.true, dtype=float).reshape(-1)
        v = np.asarray(p.pred, dtype=float).reshape(-1)
        unit = f" ({p.unit})" if p.unit else ""
        if p.kind == "classification":
            classes = np.unique(np.concatenate([t, v])).astype(int)
            index = {c: i for i, c in enumerate(classes)}
            m = np.zeros((len(classes), len(classes)))
            for a, b in zip(t.astype(int), v.astype(int), strict=True):
                m[index[a], index[b]] += 1
            ax.imshow(m, cmap="Blues")
            if len(classes) <= 12:
                ax.set_xticks(range(len(classes)), [str(c) for c in classes])
                ax.set_yticks(range(len(classes)), [str(c) for c in classes])
            ax.set_xlabel(f"predicted {p.name}")
            ax.set_ylabel(f"true {p.name}")
        else:
            lo, hi = float(min(t.min(), v.min())), float(max(t.max(), v.max()))
            ax.plot([lo, hi], [lo, hi], color="0.6", lw=1)
            ax.scatter(t, v, s=4, alpha=0.5)
            ax.set_xlabel(f"true {p.name}{unit}")
            ax.set_ylabel(f"predicted {p.name}{unit}")
            ax.set_aspect("equal", adjustable="box")
        ax.set_title(p.title or f"{p.name} (n={len(t)})", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = path.with_suffix(".part.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return True


def model_card(
    title: str,
    facts: Sequence[str],
    metrics: Mapping[str, Mapping[str, float]],
    architecture: Mapping[str, Any] | None = None,
    sections: Sequence[str] = (),
) -> str:
    """Markdown: a title, bullet facts, a split/metric/value table, the architecture as JSON, extra sections."""
    lines = [f"# {title}", "", *(f"- {f}" for f in facts), "", "| split | metric | value |", "|---|---|---|"]
    for split, values in metrics.items():
        for k, v in values.items():
            lines.append(f"| {split} | {k} | {v:.6g} |" if isinstance(v, int | float) else f"| {split} | {k} | {v} |")
    if architecture is not None:
        lines += ["", "Architecture:", "", "```json", json.dumps(architecture, indent=2, default=str), "```"]
    for section in sections:
        lines += ["", section.rstrip()]
    return "\n".join(lines) + "\n"


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


def write_run(out: Path, report: RunReport) -> None:
    """Write ``model-card.md``, ``summary.json``, ``predictions.csv``, ``parity.png`` and ``failures.csv`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "summary.json") as fh:
        json.dump(report.summary, fh, indent=2, default=_json_default)
    with atomic_write(out / "model-card.md") as fh:
        fh.write(model_card(report.title, report.facts, report.metrics, report.architecture, report.sections))
    write_predictions(out / "predictions.csv", report.prediction_header, report.prediction_rows)
    write_failures(out / "failures.csv", report.failures)
    if not parity_plot(out / "parity.png", report.panels, report.title):
        (out / "parity.png").unlink(missing_ok=True)
    announce_run_end(out, report.title)


def announce_run_end(out: Path, title: str) -> None:
    """Tell the ``pipeline_event`` listeners that the training run in ``out`` is written
    (``run_end``, ``data={"run": "train"}``; crystal-report writes ``report.html`` on it).
    A listener that fails is logged and skipped, never raised."""
    from crystal.events import PipelineEvent
    from crystal.hooks import call_isolated

    event = PipelineEvent("run_end", str(out), message=f"{title}: written to {out}", data={"run": "train"})
    call_isolated("pipeline_event", event=event)
