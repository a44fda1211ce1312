"""The worker side of the ``ray`` executor: one actor per worker runs the map steps of a stage on
one block of crystals at a time and answers with a compact row per input.

A block's result is its checkpoint (``.state/<stage>-chunkBBBBB.pt``, written atomically) and a
sidecar with its compact rows (``.rows.json``, written after it). A task that finds the
checkpoint already there (a retry after its worker died, or ``--resume``) reuses it: a block's
steps run at most once to completion, and its rows are never duplicated.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crystal.batch import CrystalBatch
from crystal.components import Generator
from crystal.device import resolve_device, set_num_threads
from crystal.errors import CrystalError
from crystal.io import Failure, atomic_write
from crystal_pipeline.state import StageOutput, load_checkpoint, save_checkpoint
from crystal_pipeline.steps import StepContext

__all__ = ["StageWorker", "block_checkpoint", "compact_rows", "load_block_rows"]

_CPU = torch.device("cpu")


def block_checkpoint(state: Path, stage: str, block: int) -> Path:
    """``.state/<stage>-chunkBBBBB.pt``: the local runner's naming (``stageKK``), or ``source``
    for the source-only stage the ray executor adds when the first step is a global one."""
    return state / f"{stage}-chunk{block:05d}.pt"


def _rows_path(ckpt: Path) -> Path:
    return ckpt.with_name(ckpt.stem + ".rows.json")


def load_block_rows(ckpt: Path) -> list[dict[str, Any]] | None:
    """The compact rows of a finished block, or ``None`` when the block is not finished."""
    path = _rows_path(ckpt)
    if not path.is_file():
        return None
    rows: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
    return rows


def compact_rows(
    out: StageOutput, order: list[str] | None = None, origins: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """One row per input of a block: ``id, status, step, reason, source`` and, for a surviving
    crystal, ``formula`` and every 1-D column, plus private fields (``_pos``: position in the
    block's checkpoint, ``_rf``: reduced formula, ``_n``: atoms, ``_labels``, ``_origin``).

    ``order`` lists the ids in the order the rows should come (default: survivors, then
    failures); ``origins`` tags source failures ('read' or 'check') for the results order."""
    batch = out.batch
    structures = batch.to_structures() if len(batch) else []
    cols = {c: v.detach().cpu().tolist() for c, v in batch.crystal_properties.items() if v.ndim == 1}
    by_id: dict[str, dict[str, Any]] = {}
    for k, ident in enumerate(batch.ids):
        s = structures[k]
        row: dict[str, Any] = {
            "id": ident,
            "status": "ok",
            "step": "",
            "reason": "",
            "source": str(batch.info[k].get("source", "")),
            "formula": s.composition.formula.replace(" ", ""),
        }
        row.update({c: v[k] for c, v in cols.items()})
        row.update(
            _pos=k,
            _rf=s.composition.reduced_formula,
            _n=int(batch.num_atoms[k]),
            _labels=dict(batch.info[k].get("labels", {})),
        )
        by_id[ident] = row
    for f in out.failures:
        by_id[f.id] = {"id": f.id, "status": "failed", "step": f.step, "reason": f.reason, "source": f.source}
    for ident, origin in (origins or {}).items():
        if ident in by_id:
            by_id[ident]["_origin"] = origin
    if order is None:
        return list(by_id.values())
    rows = [by_id.pop(i) for i in order if i in by_id]
    return rows + list(by_id.values())


class StageWorker:
    """A Ray Data actor (``map_batches(StageWorker, batch_size=1, ...)``): loads the stage's
    components once, then runs one block per call. ``payload`` (JSON-able) holds the pipeline
    config, its origin and base directory, the run directory, the device, the stage name and
    step ids, and whether this stage reads the source."""

    def __init__(self, payload: dict[str, Any]) -> None:
        from crystal_pipeline.config import parse_pipeline_config
        from crystal_pipeline.runner import Pipeline, _seed_everything, _write_json

        threads = payload.get("threads")
        if threads is not None or os.environ.get("CRYSTAL_NUM_THREADS", "").strip():
            # `crystal run --threads N` / $CRYSTAL_NUM_THREADS (inherited by a local Ray's workers);
            # otherwise torch keeps Ray's per-actor default (OMP_NUM_THREADS = the actor's CPUs)
            set_num_threads(threads)
        config = parse_pipeline_config(payload["config"], payload["origin"])
        base_dir = Path(payload["base_dir"])
        self.pipeline = Pipeline(config, origin=payload["origin"], base_dir=base_dir)
        self.run_dir = Path(payload["run_dir"])
        self.state = self.run_dir / ".state"
        self.stage: str = payload["stage"]
        self.first: bool = payload["first"]
        wanted = list(payload["steps"])
        self.steps = [s for s in config.steps if s.id in wanted]
        self.dev = resolve_device(payload["device"])
        self.ctx = StepContext(run_dir=self.run_dir, seed=config.pipeline.seed, base_dir=base_dir)
        only = set(wanted) | ({"source"} if self.first else set())
        _seed_everything(config.pipeline.seed)
        plugins = self.pipeline._load_components(self.ctx, self.dev, only)
        _write_json(self.state / f"plugins-{self.stage}.json", {"plugins": plugins})
        try:
            import ray

            self.node = ray.get_runtime_context().get_node_id()
        except Exception:  # not inside Ray (unit use)
            self.node = ""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = []
        for task in batch["task"]:
            t = json.loads(str(task))
            try:
                rows = self.run_block(t)
            except CrystalError as exc:  # a run-level error (not one crystal's): the driver raises it
                error = {"type": type(exc).__name__, "message": str(exc)}
                results.append(json.dumps({"block": t["block"], "node": self.node, "error": error}))
                continue
            results.append(json.dumps({"block": t["block"], "node": self.node, "rows": rows}))
        return {"result": np.array(results, dtype=object)}

    def run_block(self, task: dict[str, Any]) -> list[dict[str, Any]]:
        """The block's compact rows; computes and checkpoints it unless its checkpoint exists."""
        from crystal_pipeline.runner import _run_chunk

        b = int(task["block"])
        ckpt = block_checkpoint(self.state, self.stage, b)
        done = load_block_rows(ckpt)
        if done is not None:
            return done
        order: list[str] | None = None
        origins: dict[str, str] = {}
        if ckpt.is_file():  # the worker died after the checkpoint, before its rows: no recompute
            out = load_checkpoint(ckpt, _CPU)
            if self.first:
                origins = {
                    f.id: "check" if f.step == "source" else "read"
                    for f in out.failures
                    if f.step not in self._step_ids
                }
        else:
            if self.first:
                batch, pre, origins = self._read(task)
            else:
                prev = load_checkpoint(Path(task["prev"]), _CPU)
                if task.get("renames"):
                    names = {int(p): n for p, n in task["renames"].items()}
                    prev.batch.ids = [names.get(k, i) for k, i in enumerate(prev.batch.ids)]
                batch, pre = prev.batch.select(torch.tensor(task["positions"], dtype=torch.long)), []
            order = list(batch.ids)
            self.ctx.chunk_index = b
            ran = _run_chunk(self.steps, batch.to(self.dev), self.ctx, b)
            out = StageOutput(ran.batch.to(_CPU), pre + ran.failures)
            save_checkpoint(ckpt, out)
            order += [f.id for f in pre if origins.get(f.id) == "read"]
            order += [f.id for f in pre if origins.get(f.id) == "check"]
        rows = compact_rows(out, order, origins)
        with atomic_write(_rows_path(ckpt)) as fh:
            json.dump(rows, fh)
        return rows

    @property
    def _step_ids(self) -> set[str]:
        return {s.id for s in self.steps}

    def _read(self, task: dict[str, Any]) -> tuple[CrystalBatch, list[Failure], dict[str, str]]:
        """Read one source block and check it (``[pipeline] min_distance``): the valid crystals,
        the source failures and their origins ('read' or 'check')."""
        from crystal_pipeline.runner import _validate_in_chunks
        from crystal_pipeline.sources import BlockSpec, read_block

        meta = self.pipeline.config.pipeline
        spec = BlockSpec.from_dict(task["spec"])
        gen = self.ctx.components.get("source", (None,))[0]
        assert gen is None or isinstance(gen, Generator)
        md = meta.min_distance if gen is not None else None  # generated: rejected samples are rows, count kept
        block = read_block(
            spec, self.pipeline.config.source, base_dir=self.pipeline.base_dir, generator=gen, min_distance=md
        )
        batch = block.batch  # ids unique within the block; across blocks the driver sees to it
        reasons = _validate_in_chunks(batch, meta.min_distance, meta.chunk_size)
        keep = torch.tensor([r is None for r in reasons], dtype=torch.bool)
        checked = [
            Failure(i, "source", r, str(inf.get("source", "")))
            for i, r, inf in zip(batch.ids, reasons, batch.info, strict=True)
            if r is not None
        ]
        origins = {f.id: "read" for f in block.failures} | {f.id: "check" for f in checked}
        return batch.select(keep), list(block.failures) + checked, origins
