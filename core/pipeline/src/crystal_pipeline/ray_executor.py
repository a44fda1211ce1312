"""The ``ray`` executor: the same pipeline, its map stages on a Ray cluster.

* The source is planned lazily into blocks of ``chunk_size`` inputs
  (:func:`crystal_pipeline.sources.plan_blocks`); only the block specs (paths, row ranges,
  seeds), never the structures, pass through the driver.
* Every map stage (consecutive map steps) is a Ray Data ``map_batches`` over those specs with a
  pool of :class:`~crystal_pipeline._ray_worker.StageWorker` actors (``workers`` of them, each
  reserving ``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs and loading its components
  once). A worker reads its block (first stage) or the previous stage's checkpoint of it, runs
  the steps with the local runner's per-crystal isolation, writes the block's checkpoint
  atomically and answers with one compact row per input (id, status, reason, formula,
  numeric columns). A worker process that dies is restarted and its block retried
  (``max_retries``); a block whose checkpoint exists is never recomputed (retry or
  ``--resume``), so no result is duplicated.
* Global steps run on the driver over the compact table: filter and rank read columns only;
  deduplicate loads only the structures of reduced formulas met more than once; evaluate
  collects the surviving structures (it scores them as one set). Their result is a selection
  per block that the next map stage applies.
* Outputs: ``results.csv`` and ``failures.csv`` as locally, one Parquet shard per block
  (``results/block-BBBBBBBB.parquet``: the rows of the block's inputs and the surviving
  structures as CIF), and the ``[[sinks]]`` written by streaming over the survivors block by
  block. :class:`~crystal_pipeline.runner.RunResult.batch` is empty: the structures stay on
  disk.
"""

from __future__ import annotations

import json
import operator
import os
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from crystal.batch import CrystalBatch
from crystal.errors import ConfigError, CrystalError, PipelineError
from crystal.io import Failure, atomic_write, json_default, write_structures
from crystal_pipeline._ray_worker import StageWorker, block_checkpoint, load_block_rows
from crystal_pipeline.config import MAP_STEPS, CsvSink, RayExecutorConfig, StructureSink
from crystal_pipeline.state import Dropped, load_checkpoint

if TYPE_CHECKING:
    from crystal_pipeline.runner import Pipeline, _Run
    from crystal_pipeline.steps import StepContext

__all__ = ["INSTALL_HINT", "execute_ray", "require_ray"]

INSTALL_HINT = "pip install 'crystal-pipeline[ray]'"
_CPU = torch.device("cpu")
_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne}
_BASE = ("id", "status", "step", "reason", "source", "formula")


def require_ray() -> Any:
    """The ``ray`` module with Ray Data, or a :class:`ConfigError` saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ConfigError(f"the ray executor needs Ray Data, which is not installed: {INSTALL_HINT} ({exc})") from None
    return ray


# ----------------------------------------------------------------------------- driver state
@dataclass
class _Table:
    """The compact table on the driver: one row per input, the surviving ids in order, and
    where each survivor's structure lives (its block's latest checkpoint, position)."""

    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    inputs: dict[str, list[str]] = field(default_factory=lambda: {"valid": [], "read": [], "check": []})
    blocks: dict[int, list[str]] = field(default_factory=dict)  # block -> its input ids
    ckpt: dict[int, Path] = field(default_factory=dict)  # block -> latest checkpoint
    renames: dict[int, dict[int, str]] = field(default_factory=dict)  # block -> {position: id} (first stage)
    raw: set[int] = field(default_factory=set)  # blocks whose latest checkpoint is the first stage's
    nodes: dict[str, int] = field(default_factory=dict)  # node id -> blocks computed there

    def survivors_by_block(self) -> dict[int, list[int]]:
        """Block -> positions (ascending) of its surviving crystals in its latest checkpoint."""
        out: dict[int, list[int]] = {}
        for i in self.order:
            r = self.rows[i]
            out.setdefault(r["_block"], []).append(r["_pos"])
        return {b: sorted(p) for b, p in sorted(out.items())}


class _Blocks:
    """Surviving crystals read back from block checkpoints (a few blocks cached at a time)."""

    def __init__(self, table: _Table, cache: int = 4) -> None:
        self.table = table
        self.cache: OrderedDict[int, CrystalBatch] = OrderedDict()
        self.size = cache

    def block(self, b: int) -> CrystalBatch:
        if b in self.cache:
            self.cache.move_to_end(b)
            return self.cache[b]
        batch = load_checkpoint(self.table.ckpt[b], _CPU).batch
        if b in self.table.raw and self.table.renames.get(b):
            names = self.table.renames[b]
            batch.ids = [names.get(k, i) for k, i in enumerate(batch.ids)]
        self.cache[b] = batch
        if len(self.cache) > self.size:
            self.cache.popitem(last=False)
        return batch

    def select(self, ids: list[str]) -> CrystalBatch:
        """The crystals ``ids`` (survivors), in that order."""
        parts: list[CrystalBatch] = []
        run_block = -1
        run_pos: list[int] = []
        for i in ids:
            r = self.table.rows[i]
            if r["_block"] != run_block and run_pos:
                parts.append(self.block(run_block).select(torch.tensor(run_pos, dtype=torch.long)))
                run_pos = []
            run_block = r["_block"]
            run_pos.append(r["_pos"])
        if run_pos:
            parts.append(self.block(run_block).select(torch.tensor(run_pos, dtype=torch.long)))
        return CrystalBatch.concat(parts) if parts else CrystalBatch.empty()


# ----------------------------------------------------------------------------- running
def execute_ray(pipeline: Pipeline, run: _Run, ctx: StepContext) -> list[dict[str, Any]]:
    """Run ``pipeline``'s stages on Ray into ``run``; the result rows (as ``results.csv``)."""
    from crystal_pipeline.runner import _group_stages

    ray = require_ray()
    cfg = pipeline.config.pipeline.ray
    started = _connect(ray, cfg)
    try:
        ctx.components.update(_driver_components(pipeline, ctx, run))
        stages = _group_stages(pipeline.config.steps)
        plan: list[tuple[str, list[Any]]] = [(f"stage{k:02d}", s) for k, s in enumerate(stages)]
        if not stages or stages[0][0].type not in MAP_STEPS:
            plan.insert(0, ("source", []))  # the source is read by the workers, in blocks
        table = _Table()
        workers = _workers(ray, cfg)
        run.manifest["executor"] = {
            "type": "ray",
            "address": cfg.address,
            "workers": workers,
            "cpus_per_worker": cfg.cpus_per_worker,
            "gpus_per_worker": cfg.gpus_per_worker,
            "nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
            "ray_version": ray.__version__,
        }
        plugins: dict[tuple[str, str], dict[str, Any]] = {}
        for j, (name, stage) in enumerate(plan):
            t0 = time.perf_counter()
            label = "+".join(s.id for s in stage) or "source"
            if not stage or stage[0].type in MAP_STEPS:
                _map_stage(pipeline, run, table, name, stage, first=j == 0, workers=workers)
                for rec in _stage_plugins(run, name):
                    plugins.setdefault((rec["step"], rec["name"]), rec)
            else:
                (step,) = stage
                _global_stage(pipeline, run, ctx, table, step)
            run.manifest["timings_s"][label] = round(time.perf_counter() - t0, 3)
            run.steps_done += 1
        run.manifest["plugins"] = list(plugins.values()) + run.manifest.get("plugins", [])
        run.manifest["executor"]["blocks_per_node"] = dict(table.nodes)
        t0 = time.perf_counter()
        rows = _write_outputs(pipeline, run, table)
        run.manifest["timings_s"]["sinks"] = round(time.perf_counter() - t0, 3)
        return rows
    finally:
        if started:
            ray.shutdown()


def _connect(ray: Any, cfg: RayExecutorConfig) -> bool:
    """Join (or start) Ray unless this process already did; whether we started it."""
    if ray.is_initialized():
        return False
    try:
        ray.init(address=cfg.address, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"pipeline.ray.address {cfg.address!r}: cannot connect to Ray: {exc}") from None
    return True


def _workers(ray: Any, cfg: RayExecutorConfig) -> int:
    if cfg.workers is not None:
        return cfg.workers
    res = ray.cluster_resources()
    if cfg.gpus_per_worker > 0:
        return max(1, int(res.get("GPU", 0) // cfg.gpus_per_worker))
    return max(1, int(res.get("CPU", 1) // cfg.cpus_per_worker))


def _driver_components(pipeline: Pipeline, ctx: StepContext, run: _Run) -> dict[str, Any]:
    """Components the driver itself needs (an evaluate step's potential); the map stages'
    components load in the workers."""
    wanted = {s.id for s in pipeline.config.steps if s.type == "evaluate"}
    if not wanted:
        return {}
    run.manifest["plugins"] = pipeline._load_components(ctx, run.dev, wanted)
    return dict(ctx.components)


def _stage_plugins(run: _Run, name: str) -> list[dict[str, Any]]:
    path = run.state / f"plugins-{name}.json"
    if not path.is_file():
        return []
    plugins: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))["plugins"]
    return plugins


def _map_stage(
    pipeline: Pipeline, run: _Run, table: _Table, name: str, stage: list[Any], *, first: bool, workers: int
) -> None:
    """One map stage over every block with survivors, on the worker pool."""
    import ray.data

    cfg = pipeline.config.pipeline
    ids = [s.id for s in stage] or ["source"]
    for s in ids:
        run.emit("step_start", s, f"{name} on ray ({workers} workers)")
    tasks: list[dict[str, Any]] = []
    done: dict[int, list[dict[str, Any]]] = {}
    if first:
        from crystal_pipeline.sources import plan_blocks

        specs = plan_blocks(
            pipeline.config.source,
            base_dir=pipeline.base_dir,
            chunk_size=cfg.chunk_size,
            seed=cfg.seed,
            run_id=str(run.manifest.get("run_id", "")),
        )
        for spec in specs:
            tasks.append({"block": spec.index, "spec": spec.to_dict()})
    else:
        for b, positions in table.survivors_by_block().items():
            task: dict[str, Any] = {"block": b, "prev": str(table.ckpt[b]), "positions": positions}
            if b in table.raw and table.renames.get(b):
                task["renames"] = {str(p): n for p, n in table.renames[b].items()}
            tasks.append(task)
    todo = []
    for t in tasks:  # finished blocks (resume) are not sent again
        rows = load_block_rows(block_checkpoint(run.state, name, t["block"])) if run.resume else None
        if rows is None:
            todo.append(t)
        else:
            done[t["block"]] = rows
    n_total = len(tasks)
    for s in ids:
        run.emit("progress", s, f"{len(done)}/{n_total} blocks done before this run", done=len(done), total=n_total)
    if todo:
        payload = {
            "config": pipeline.config.model_dump(mode="json"),
            "origin": pipeline.origin,
            "base_dir": str(pipeline.base_dir.resolve()),
            "run_dir": str(run.run_dir.resolve()),
            "device": run.device_spec,
            "stage": name,
            "steps": [s.id for s in stage],
            "first": first,
            # remote nodes do not inherit the driver's environment: pass --threads/CRYSTAL_NUM_THREADS on
            "threads": int(os.environ["CRYSTAL_NUM_THREADS"]) if os.environ.get("CRYSTAL_NUM_THREADS") else None,
        }
        rcfg = cfg.ray
        data_ctx = ray.data.DataContext.get_current()
        data_ctx.enable_progress_bars = False
        ds = ray.data.from_items([{"task": json.dumps(t)} for t in todo])
        with warnings.catch_warnings():  # the actors' restart limits are only passed this way (Ray <= 2.6x)
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*is deprecated")
            out = ds.map_batches(
                StageWorker,
                fn_constructor_kwargs={"payload": payload},
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=max(1, min(workers, len(todo)))),
                num_cpus=rcfg.cpus_per_worker,
                num_gpus=rcfg.gpus_per_worker,
                max_restarts=rcfg.max_retries,
                max_task_retries=rcfg.max_retries,
            )
        try:
            for rec in out.iter_rows():
                res = json.loads(rec["result"])
                if "error" in res:
                    raise _crystal_error(res["error"], int(res["block"]))
                done[int(res["block"])] = res["rows"]
                table.nodes[res["node"]] = table.nodes.get(res["node"], 0) + 1
                for s in ids:
                    run.emit("progress", s, f"block {res['block']} done", done=len(done), total=n_total)
        except CrystalError:
            raise
        except Exception as exc:
            raise _unwrap(exc) from None
    for b in sorted(done):
        _merge_block(table, b, done[b], block_checkpoint(run.state, name, b), first=first)
    if not first:
        table.order = [i for i in table.order if table.rows[i]["status"] == "ok"]
    for s in ids:
        run.emit("step_end", s, f"{len(table.order)} crystals remain", done=len(table.order), total=len(table.order))


def _merge_block(table: _Table, b: int, rows: list[dict[str, Any]], ckpt: Path, *, first: bool) -> None:
    """Fold one block's compact rows into the table (first stage: the block's inputs, with ids
    made unique across blocks)."""
    table.ckpt[b] = ckpt
    if not first:
        table.raw.discard(b)
        for r in rows:
            r["_block"] = b
            table.rows[r["id"]] = r
        return
    table.raw.add(b)
    names: dict[int, str] = {}
    block_ids = {r["id"] for r in rows}
    for r in rows:
        ident = r["id"]
        if ident in table.rows:  # the same id in an earlier block: id#1, id#2, ...
            n = 1
            while f"{ident}#{n}" in table.rows or f"{ident}#{n}" in block_ids:
                n += 1
            r["id"] = f"{ident}#{n}"
            if r["status"] == "ok":
                names[r["_pos"]] = r["id"]
        r["_block"] = b
        table.rows[r["id"]] = r
        table.inputs[r.get("_origin", "valid")].append(r["id"])
        if r["status"] == "ok":
            table.order.append(r["id"])
    table.blocks[b] = [r["id"] for r in rows]
    if names:
        table.renames[b] = names


def _crystal_error(error: dict[str, str], block: int) -> CrystalError:
    """The error a worker reported for ``block``, as the same crystal error class."""
    import crystal.errors

    cls = getattr(crystal.errors, error["type"], None)
    if not (isinstance(cls, type) and issubclass(cls, CrystalError)):
        cls = PipelineError
    return cls(error["message"])


def _unwrap(exc: BaseException) -> BaseException:
    """The crystal error inside a Ray task error (so that ``crystal run`` exits as locally)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, CrystalError):
            return cur
        cause = getattr(cur, "cause", None)
        cur = cause if isinstance(cause, BaseException) else (cur.__cause__ or cur.__context__)
    return exc


# ----------------------------------------------------------------------------- global steps
def _column(table: _Table, step_id: str, name: str) -> list[float]:
    rows = [table.rows[i] for i in table.order]
    if any(name not in r for r in rows):
        available = sorted(
            {k for r in rows for k in r if not k.startswith("_") and k not in _BASE and all(k in x for x in rows)}
        )
        raise PipelineError(
            f"step {step_id!r}: no column {name!r} (available columns: {', '.join(available) or 'none'})"
        )
    return [float(r[name]) for r in rows]


def _drop(table: _Table, ident: str, step_id: str, status: str, reason: str) -> None:
    old = table.rows[ident]
    table.rows[ident] = {
        "id": ident,
        "status": status,
        "step": step_id,
        "reason": reason,
        "source": old.get("source", ""),
        "_block": old["_block"],
    }


def _global_stage(pipeline: Pipeline, run: _Run, ctx: StepContext, table: _Table, step: Any) -> None:
    """A global step on the driver, over the compact table (and, for deduplicate and
    evaluate, the structures they need)."""
    from crystal_pipeline.steps import run_global_step

    n = len(table.order)
    run.emit("step_start", step.id, f"{step.type} on {n} crystals", done=0, total=n)
    if step.type == "filter" and n:
        keep = [True] * n
        for cond in step.where:
            values = _column(table, step.id, cond.column)
            keep = [k and bool(_OPS[cond.op](v, cond.value)) for k, v in zip(keep, values, strict=True)]
        text = " and ".join(f"{c.column} {c.op} {c.value:g}" for c in step.where)
        for i, k in zip(list(table.order), keep, strict=True):
            if not k:
                _drop(table, i, step.id, "filtered", f"not ({text})")
        table.order = [i for i, k in zip(table.order, keep, strict=True) if k]
    elif step.type == "rank" and n:
        values = _column(table, step.id, step.by)
        nan = [v != v for v in values]
        idx = sorted(range(n), key=lambda k: (nan[k], values[k] if not nan[k] else 0.0), reverse=step.descending)
        cut = idx if step.top is None else idx[: step.top]
        for j in idx[len(cut) :]:
            _drop(table, table.order[j], step.id, "filtered", f"not in the top {step.top} by {step.by}")
        table.order = [table.order[j] for j in cut]
    elif step.type == "deduplicate" and n:
        _deduplicate(table, step)
    elif step.type == "evaluate":
        batch = _Blocks(table).select(table.order)  # evaluate scores the survivors as one set
        run_global_step(step, batch, ctx)
    elif step.type not in ("filter", "rank", "deduplicate"):
        raise PipelineError(f"unknown global step type {step.type!r}")
    m = len(table.order)
    run.emit("step_end", step.id, f"{m} crystals remain", done=m, total=m)


def _deduplicate(table: _Table, step: Any) -> None:
    """The local deduplicate, on the structures of repeated reduced formulas only."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    groups: dict[str, list[str]] = {}
    for i in table.order:
        groups.setdefault(table.rows[i]["_rf"], []).append(i)
    repeated = [i for i in table.order if len(groups[table.rows[i]["_rf"]]) > 1]
    if not repeated:
        return
    blocks = _Blocks(table)
    by_block: dict[int, list[str]] = {}
    for i in repeated:
        by_block.setdefault(table.rows[i]["_block"], []).append(i)
    structures: dict[str, Any] = {}
    for b in sorted(by_block):  # each block read once
        sub = blocks.select(by_block[b])
        structures.update(zip(sub.ids, sub.to_structures(), strict=True))
    matcher = StructureMatcher(ltol=step.ltol, stol=step.stol, angle_tol=step.angle_tol)
    reps: dict[str, list[str]] = {}
    dropped: set[str] = set()
    for i in repeated:
        formula = table.rows[i]["_rf"]
        s = structures[i]
        match = next((j for j in reps.get(formula, []) if matcher.fit(structures[j], s)), None)
        if match is None:
            reps.setdefault(formula, []).append(i)
        else:
            dropped.add(i)
            _drop(table, i, step.id, "duplicate", f"same structure as {match}")
    table.order = [i for i in table.order if i not in dropped]


# ----------------------------------------------------------------------------- outputs
def _public(row: dict[str, Any]) -> dict[str, Any]:
    from crystal_pipeline.runner import _fmt

    return {k: _fmt(v) for k, v in row.items() if not k.startswith("_")}


def _write_outputs(pipeline: Pipeline, run: _Run, table: _Table) -> list[dict[str, Any]]:
    from crystal_pipeline.runner import _result_fields, _units_path, _write_rows

    all_ids = table.inputs["valid"] + table.inputs["read"] + table.inputs["check"]
    run.all_ids = all_ids
    rows = [_public(table.rows[i]) for i in all_ids]
    run.failures = [Failure(r["id"], r["step"], r["reason"], r["source"]) for r in rows if r["status"] == "failed"]
    source = pipeline.config.source
    if source.type == "generate":  # what was asked, delivered, rejected (as the local runner reports it)
        from crystal_pipeline.sources import generation_report

        report = generation_report(source, len(table.inputs["valid"]), run.failures)
        run.manifest["generation"] = report
        if report["shortfall"]:
            run.emit("failure", "source", report["shortfall"], data={"shortfall": report})
    run.dropped = [
        Dropped(r["id"], r["step"], r["status"], r["reason"]) for r in rows if r["status"] in ("filtered", "duplicate")
    ]
    fields = _result_fields(rows)
    units = pipeline.column_units(fields, run.manifest.get("plugins"))
    run.manifest["units"] = dict(units)
    _write_rows(run.run_dir / "results.csv", rows, fields, units=units)
    _write_rows(
        run.run_dir / "failures.csv",
        [r for r in rows if r["status"] == "failed"],
        fields=["id", "status", "step", "reason", "source"],
    )
    run.outputs = ["results.csv", _units_path(Path("results.csv")).name, "failures.csv", *_write_shards(run, table)]
    for sink in pipeline.config.sinks:
        run.outputs += _write_sink(pipeline, run, table, sink)
    return rows


def _write_shards(run: _Run, table: _Table) -> list[str]:
    """``results/block-BBBBBBBB.parquet``: each block's rows and its surviving structures."""
    from crystal_pipeline.shards import shard_path, write_shard

    blocks = _Blocks(table, cache=1)
    alive = set(table.order)
    for b in sorted(table.blocks):
        rows = [_public(table.rows[i]) for i in table.blocks[b]]
        keep = [i for i in table.blocks[b] if i in alive]
        batch = blocks.select(keep) if keep else None
        write_shard(shard_path(run.run_dir / "results", b), rows, batch, structure_format="cif")
    return ["results"]


def _write_sink(pipeline: Pipeline, run: _Run, table: _Table, sink: Any) -> list[str]:
    """One ``[[sinks]]`` entry, streamed over the survivors ``chunk_size`` at a time, in order."""
    from crystal_pipeline.runner import _fmt, _units_path, _write_rows

    target = run.run_dir / sink.path
    if isinstance(sink, CsvSink):
        surv = [table.rows[i] for i in table.order]
        numeric = [k for k in (surv[0] if surv else {}) if not k.startswith("_") and k not in _BASE]
        available = [k for k in numeric if all(k in r for r in surv)]
        cols = sink.columns if sink.columns is not None else available
        missing = [c for c in cols if c not in available]
        if missing:
            raise CrystalError(f"csv sink {sink.path!r}: unknown columns {missing}; available: {sorted(available)}")
        heads = sorted({h for r in surv for h in r.get("_labels", {})})
        out = []
        for k, r in enumerate(surv):
            row: dict[str, Any] = {"rank": k + 1, "id": r["id"], "formula": r["formula"], "num_atoms": r["_n"]}
            row.update(r.get("_labels", {}))
            row.update({c: _fmt(r[c]) for c in cols})
            out.append(row)
        fields = [*(["rank"] if pipeline.ranked else []), "id", "formula", "num_atoms", *heads, *cols]
        units = pipeline.column_units(fields, run.manifest.get("plugins"))
        run.manifest.setdefault("units", {}).update(units)
        _write_rows(target, out, fields=fields, units=units, units_mode=sink.units)
        return [sink.path] + ([str(_units_path(Path(sink.path)))] if sink.units == "sidecar" else [])
    assert isinstance(sink, StructureSink)
    blocks = _Blocks(table)
    size = pipeline.config.pipeline.chunk_size
    groups = (table.order[k : k + size] for k in range(0, len(table.order), size))
    if sink.type in ("cif", "poscar"):
        target.mkdir(parents=True, exist_ok=True)
        for g in groups:
            write_structures(blocks.select(g), target, sink.type, symprec=sink.symprec)
        return [sink.path]
    with atomic_write(target) as fh:
        if sink.type == "json":
            fh.write("[")
        first = True
        for g in groups:
            batch = blocks.select(g)
            structures = batch.to_structures()
            if sink.type == "extxyz":
                from ase.io import write
                from pymatgen.io.ase import AseAtomsAdaptor

                frames = []
                for ident, s in zip(batch.ids, structures, strict=True):
                    atoms = AseAtomsAdaptor.get_atoms(s)
                    atoms.info["id"] = ident
                    frames.append(atoms)
                write(fh, frames, format="extxyz")
            else:
                for ident, s in zip(batch.ids, structures, strict=True):
                    fh.write(
                        ("" if first else ", ")
                        + json.dumps({"id": ident, "structure": s.as_dict()}, default=json_default)
                    )
                    first = False
        if sink.type == "json":
            fh.write("]")
    return [sink.path]
