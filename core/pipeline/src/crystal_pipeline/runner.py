"""Running a pipeline: run directory, manifest, checkpoints, resume, accounting.

A run directory holds::

    manifest.json     config, seeds, package and plugin versions, weight checksums,
                      device, timings, counts, status
    results.csv       one row per input: id, status (ok | failed | filtered | duplicate),
                      step, reason, source, formula and every computed column
    failures.csv      the failed inputs only
    <sinks>           whatever the [[sinks]] ask for
    .state/           checkpoints used by --resume

Steps are grouped into stages: consecutive map steps run chunk by chunk (``chunk_size``
crystals at a time, each chunk checkpointed), and every global step (filter, rank,
deduplicate) is a stage of its own. ``resume=True`` reloads every finished checkpoint and
redoes nothing that was finished.

The source is read in blocks (:mod:`crystal_pipeline.sources`). With ``[pipeline] executor =
"ray"`` the map stages run block by block on a Ray cluster and the global steps on a compact
table (:mod:`crystal_pipeline.ray_executor`); the outputs are the same.
"""

from __future__ import annotations

import csv
import datetime as _dt
import functools
import hashlib
import json
import platform
import random
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crystal.batch import CrystalBatch
from crystal.components import Component, Generator
from crystal.device import resolve_device
from crystal.errors import ConfigError, CrystalError, PluginError, WeightsError
from crystal.events import EventKind, PipelineEvent
from crystal.io import Failure, atomic_write, write_structures
from crystal_pipeline import sources as _sources
from crystal_pipeline.config import (
    MAP_STEPS,
    CsvSink,
    DatasetSource,
    FilesSource,
    GenerateSource,
    PipelineConfig,
    StructureSink,
    load_pipeline_config,
    parse_pipeline_config,
)
from crystal_pipeline.state import Dropped, StageOutput, load_checkpoint, resume_conflict, save_checkpoint, stage_hashes
from crystal_pipeline.steps import (
    StepContext,
    free_memory,
    is_out_of_memory,
    out_of_memory_reason,
    run_global_step,
    run_map_step,
)

__all__ = ["Pipeline", "RunResult", "load_pipeline", "run_pipeline"]

Listener = Callable[[PipelineEvent], None]


@dataclass
class RunResult:
    """What a run produced: the surviving crystals (with columns), and the accounting."""

    run_dir: Path
    batch: CrystalBatch
    rows: list[dict[str, Any]]
    failures: list[Failure]
    dropped: list[Dropped]
    manifest: dict[str, Any] = field(default_factory=dict)


def _config_hash(config: PipelineConfig) -> str:
    """The config's identity for ``--resume``: everything but where the ray executor runs (a run
    may resume on another cluster, with another number of workers)."""
    blob = json.dumps(config.model_dump(mode="json", exclude={"pipeline": {"ray"}}), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


class Pipeline:
    """A validated pipeline, ready to :meth:`run`.

    >>> Pipeline.from_dict({"source": {"type": "dataset", "name": "dcdft", "limit": 4},
    ...                     "steps": [{"id": "m", "type": "metrics", "names": ["density"]}]}).run()
    """

    def __init__(self, config: PipelineConfig, *, origin: str = "<pipeline>", base_dir: Path | None = None) -> None:
        self.config = config
        self.origin = origin
        self.base_dir = base_dir or Path.cwd()

    # ------------------------------------------------------------------ building
    @classmethod
    def from_toml(cls, path: str | Path, overrides: list[str] | None = None) -> Pipeline:
        config, _ = load_pipeline_config(path, overrides)
        return cls(config, origin=str(path), base_dir=Path(path).resolve().parent)

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], overrides: list[str] | None = None, *, base_dir: Path | None = None
    ) -> Pipeline:
        from crystal_pipeline.config import apply_overrides

        data = apply_overrides(data, overrides or [])
        return cls(parse_pipeline_config(data), base_dir=base_dir)

    @classmethod
    def from_run_dir(cls, run_dir: str | Path) -> Pipeline:
        """The pipeline an interrupted run in ``run_dir`` ran (from its manifest: config, origin,
        base directory), so that ``Pipeline.from_run_dir(d).run(d, resume=True)`` continues it."""
        manifest_path = Path(run_dir) / "manifest.json"
        if not manifest_path.is_file():
            raise ConfigError(f"{run_dir}: nothing to resume (no manifest.json)")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            data, origin = manifest["config"], str(manifest.get("origin", "<pipeline>"))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{manifest_path}: not a crystal run manifest ({exc})") from None
        base = manifest.get("base_dir")
        return cls(parse_pipeline_config(data, origin), origin=origin, base_dir=Path(base) if base else None)

    def default_run_dir(self) -> Path:
        """``runs/<name>-<timestamp>``: where :meth:`run` writes when given no directory."""
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        return Path("runs") / f"{self.config.pipeline.name}-{stamp}"

    # ------------------------------------------------------------------ checking
    def _components_needed(self) -> list[tuple[str, str, str, dict[str, Any]]]:
        """``(step id, kind, name, config)`` of every component the pipeline uses."""
        need: list[tuple[str, str, str, dict[str, Any]]] = []
        src = self.config.source
        if isinstance(src, GenerateSource):
            need.append(("source", "generator", src.generator, src.config))
        for step in self.config.steps:
            if step.type in ("relax", "md", "hull"):
                need.append((step.id, "potential", step.potential, step.config))
            elif step.type == "predict":
                need.append((step.id, "encoder", step.encoder, step.config))
            elif step.type == "characterize":
                need.append((step.id, "characterizer", step.characterizer, step.config))
            elif step.type == "evaluate" and step.sun and step.potential is not None:
                need.append((step.id, "potential", step.potential, step.config))
        return need

    def _step_weights_config(self, step_id: str, cls: type[Component], cfg: dict[str, Any]) -> dict[str, Any]:
        """The config a predict/characterize step's component is built with (see :func:`weights_config`)."""
        step = next(s for s in self.config.steps if s.id == step_id)
        return weights_config(
            cls,
            cfg,
            random_init=bool(getattr(step, "random_init", False)),
            give="config.weights or config.checkpoint",
            switch=f"set random_init = true on step {step_id!r}",
        )

    def check(self, *, load_for_columns: bool = True) -> None:
        """Everything that can be checked before running: plugins exist and load, their
        configs validate, datasets and metrics exist, and every column a filter, rank or csv
        sink names is one that the steps before it add (:mod:`crystal_pipeline.columns`; an
        encoder whose targets come from its weights is loaded on the CPU for that, only when a
        name is not otherwise known and ``load_for_columns``). Raises :class:`ConfigError`."""
        from crystal.plugins import load_class
        from crystal.registries import datasets, metrics

        problems: list[str] = []
        encoder_columns: dict[str, dict[str, str]] = {}
        for step_id, kind, name, cfg in self._components_needed():
            where = f"{self.origin}: " + ("source" if step_id == "source" else f"step {step_id!r}")
            try:
                cls = load_class(kind, name)
                made = cls.make_config(cfg)
                if kind in ("encoder", "characterizer"):  # no silent random weights: see weights_config
                    made = cls.make_config(self._step_weights_config(step_id, cls, cfg))
            except (PluginError, ConfigError) as exc:
                problems.append(f"{where}: {exc}")
                continue
            if kind == "encoder":
                from crystal_pipeline.columns import static_encoder_columns

                found = static_encoder_columns(cls, made)
                if found is not None:
                    encoder_columns[step_id] = found
            weights = getattr(made, "weights", None)
            if isinstance(weights, str):  # named weights must resolve to one registry entry (no download here)
                from crystal.weights import find_weights

                try:
                    find_weights(weights)
                except WeightsError as exc:
                    problems.append(f"{where}: field 'config.weights': {exc}")
            if kind == "characterizer":
                step = next(s for s in self.config.steps if s.id == step_id)
                rep_name = getattr(step, "representation", None) or cls.consumes
                try:
                    load_class("representation", rep_name).make_config(getattr(step, "representation_config", {}))
                except (PluginError, ConfigError) as exc:
                    problems.append(f"{where}: field 'representation': {exc}")
            if kind == "generator" and isinstance(self.config.source, GenerateSource):
                from crystal_pipeline.sources import check_generation_conditions

                problem = check_generation_conditions(self.config.source, cls, made)  # what the generator accepts
                if problem is not None:
                    problems.append(f"{where}: {problem}")
        src = self.config.source
        if isinstance(src, FilesSource):
            from crystal_pipeline.sources import check_source_paths

            try:  # each pattern up to its first match: cheap however many files a glob matches
                check_source_paths(src.paths, self.base_dir)
            except ConfigError as exc:
                problems.append(f"{self.origin}: source: field 'paths': {exc}")
        if isinstance(src, DatasetSource):
            known = datasets()
            if src.name not in known:
                problems.append(
                    f"{self.origin}: source: field 'name': no dataset {src.name!r}; allowed: {', '.join(sorted(known))}"
                )
        for step in self.config.steps:
            if step.type == "hull":
                from crystal_pipeline.hull import check_hull_step

                problems += check_hull_step(step, self.base_dir, self.origin)
            if step.type == "evaluate":
                from crystal.io import expand_paths

                for field_name in ("reference", "train", "hull_reference"):
                    items = getattr(step, field_name)
                    try:
                        expand_paths([p if Path(p).is_absolute() else str(self.base_dir / p) for p in items or []])
                    except ConfigError as exc:
                        problems.append(f"{self.origin}: step {step.id!r}: field {field_name!r}: {exc}")
        known_metrics = None
        for step in self.config.steps:
            if step.type == "metrics":
                known_metrics = known_metrics or metrics()
                for n in step.names:
                    if n not in known_metrics:
                        problems.append(
                            f"{self.origin}: step {step.id!r}: field 'names': unknown metric {n!r}; "
                            f"allowed: {', '.join(sorted(known_metrics))}"
                        )
        if not problems:  # columns: once the components are known to exist
            problems += self.column_problems(encoder_columns, load=load_for_columns)
        if self.config.pipeline.executor == "ray":
            from crystal_pipeline.ray_executor import require_ray

            try:
                require_ray()
            except ConfigError as exc:
                problems.append(f"{self.origin}: pipeline: field 'executor': {exc}")
        if problems:
            raise ConfigError("\n".join(problems))

    def column_problems(self, encoders: dict[str, dict[str, str]] | None = None, *, load: bool = False) -> list[str]:
        """The columns named by filter/rank steps and csv sinks that will not exist there
        (:func:`crystal_pipeline.columns.column_problems`); ``encoders``: predict step id ->
        its columns when known; ``load``: load (on the CPU) an encoder whose columns are needed
        and not known."""
        from crystal_pipeline.columns import column_problems, encoder_columns, registered_metric_units

        def resolve(step_id: str) -> dict[str, str] | None:
            from crystal.plugins import load_class

            step = next((s for s in self.config.steps if s.id == step_id), None)
            if not load or step is None or step.type != "predict":
                return None
            try:
                cls = load_class("encoder", step.encoder)
                return encoder_columns(cls(self._step_weights_config(step.id, cls, step.config), device="cpu"))
            except Exception:  # not loadable here: the run says why; the columns stay unknown
                return None

        return column_problems(
            self.config, self.origin, metric_units=registered_metric_units(), encoders=encoders, resolve=resolve
        )

    # ------------------------------------------------------------------ running
    def run(
        self,
        run_dir: str | Path | None = None,
        *,
        resume: bool = False,
        device: str | None = None,
        listeners: Iterable[Listener] = (),
    ) -> RunResult:
        """Run the pipeline into ``run_dir`` (default ``runs/<name>-<timestamp>``)."""
        # the local executor checks the columns again with its loaded components, before any step
        self.check(load_for_columns=self.config.pipeline.executor == "ray")
        dev = resolve_device(device or self.config.pipeline.device)
        fresh = run_dir is None or not Path(run_dir).exists()
        path, started = self._prepare_run_dir(run_dir, resume)
        run = _Run(
            run_dir=path,
            resume=resume,
            dev=dev,
            listeners=list(listeners),
            device_spec=device or self.config.pipeline.device,
        )
        run.manifest = self._initial_manifest(run, started)
        _write_json(run.manifest_path, run.manifest)
        try:
            return self._execute(run)
        except ConfigError as exc:
            # a configuration error (exit 2: "nothing ran") found while loading components or
            # reading the source leaves nothing behind; once a step has run, its results stay
            if fresh and not resume and not run.steps_done:
                shutil.rmtree(path, ignore_errors=True)
            else:
                run.record_error(exc)
            raise
        except BaseException as exc:
            run.record_error(exc)
            raise

    def _prepare_run_dir(self, run_dir: str | Path | None, resume: bool) -> tuple[Path, str | None]:
        """The run directory, created, and when the run started: now, or for ``resume`` the
        interrupted run's start (its manifest must exist and carry this config's hash)."""
        run_dir = Path(run_dir) if run_dir is not None else self.default_run_dir()
        manifest_path = run_dir / "manifest.json"
        started: str | None
        if resume:
            if not manifest_path.is_file():
                raise ConfigError(f"{run_dir}: nothing to resume (no manifest.json)")
            previous = json.loads(manifest_path.read_text())
            if "stage_sha256" in previous:  # only stages with checkpoints must match; later steps, sinks may change
                conflict = resume_conflict(previous, self.config, run_dir / ".state")
                if conflict is not None:
                    raise ConfigError(
                        f"{run_dir}: cannot resume: {conflict}; only the steps after the last checkpointed stage "
                        "and the sinks may change on resume (or start a new run directory)"
                    )
            elif previous.get("config_sha256") != _config_hash(self.config):
                raise ConfigError(
                    f"{run_dir}: cannot resume: the pipeline config differs from the interrupted run's "
                    "(same file and --set overrides are needed)"
                )
            started = previous.get("started")
        else:
            if run_dir.exists() and any(run_dir.iterdir()):
                raise ConfigError(
                    f"{run_dir}: run directory exists and is not empty; use --resume or another directory"
                )
            started = _dt.datetime.now(_dt.UTC).isoformat()
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir, started

    def _initial_manifest(self, run: _Run, started: str | None) -> dict[str, Any]:
        """The manifest written before anything runs (status ``running``)."""
        cfg, dev = self.config, run.dev
        return {
            "crystal_version": _version("crystal-core"),
            "pipeline": cfg.pipeline.name,
            "origin": self.origin,
            "base_dir": str(self.base_dir.resolve()),
            "config": cfg.model_dump(mode="json"),
            "config_sha256": _config_hash(cfg),
            "stage_sha256": stage_hashes(cfg),
            "seed": cfg.pipeline.seed,
            "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev)
            if dev.type == "cuda"
            else platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "packages": {p: _version(p) for p in _MANIFEST_PACKAGES},
            "torch_threads": torch.get_num_threads(),
            "started": started,
            "run_id": _sources.run_id(started, run.run_dir),  # in generated crystals' ids; the same on resume
            "status": "running",
            "resumed": run.resume,
            "timings_s": {},
        }

    def _execute(self, run: _Run) -> RunResult:
        """Components, source, stages, outputs: the run proper (the manifest exists)."""
        meta = self.config.pipeline
        _seed_everything(meta.seed)
        t_run = time.perf_counter()
        run.emit("run_start", message=f"pipeline {meta.name!r} on {run.dev}")
        ctx = StepContext(run_dir=run.run_dir, emit=run.emit, seed=meta.seed, base_dir=self.base_dir)
        if meta.executor == "ray":  # components load in the workers (and on the driver for evaluate only)
            from crystal_pipeline.ray_executor import execute_ray

            rows = execute_ray(self, run, ctx)
            run.manifest["timings_s"]["total"] = round(time.perf_counter() - t_run, 3)
            return self._finish(run, rows)
        run.manifest["executor"] = {"type": "local"}
        run.manifest["plugins"] = self._load_components(ctx, run.dev)
        self._check_loaded_columns(ctx)
        self._source_stage(run, ctx)
        for k, stage in enumerate(_group_stages(self.config.steps)):
            t0 = time.perf_counter()
            if stage[0].type in MAP_STEPS:
                self._map_stage(run, ctx, k, stage)
            else:
                (step,) = stage
                self._global_stage(run, ctx, k, step)
            run.manifest["timings_s"]["+".join(s.id for s in stage)] = round(time.perf_counter() - t0, 3)
            run.steps_done += 1
        rows = self._write_outputs(run)
        run.manifest["timings_s"]["total"] = round(time.perf_counter() - t_run, 3)
        return self._finish(run, rows)

    def _load_components(
        self, ctx: StepContext, dev: torch.device, only: set[str] | None = None
    ) -> list[dict[str, Any]]:
        """Instantiate every component once per run into ``ctx.components`` (only those of the
        step ids in ``only``, 'source' for a generator, when given); their manifest records
        (versions, distributions, configs, weights)."""
        from crystal.plugins import list_plugins, load_class

        plugins_used = []
        dists = {(p.kind, p.name): p for p in list_plugins(include_disabled=True)}

        def instantiate(kind: str, name: str, ccfg: dict[str, Any]) -> Component:
            cls = load_class(kind, name)
            # a component that cannot run on the run's device (e.g. a CPU-only generator on a
            # GPU run) runs on the CPU; steps move batches to each component's device
            return cls(ccfg, device=str(dev) if dev.type in cls.devices else "cpu")

        for step_id, kind, name, ccfg in self._components_needed():
            if only is not None and step_id not in only:
                continue
            if kind in ("encoder", "characterizer"):
                ccfg = self._step_weights_config(step_id, load_class(kind, name), ccfg)
            comp = instantiate(kind, name, ccfg)
            comps: tuple[Component, ...] = (comp,)
            if kind == "characterizer":
                step = next(s for s in self.config.steps if s.id == step_id)
                rep_name = getattr(step, "representation", None) or comp.consumes
                comps = (instantiate("representation", rep_name, getattr(step, "representation_config", {})), comp)
            ctx.components[step_id] = comps
            for c in comps:
                info = dists.get((c.kind.singular, c.name))
                plugins_used.append(
                    {
                        "step": step_id,
                        "device": str(c.device),
                        "kind": c.kind.singular,
                        "name": c.name,
                        "component_version": c.version,
                        "distribution": info.distribution if info else None,
                        "distribution_version": info.version if info else None,
                        "config": c.config.model_dump(mode="json"),
                        "weights": [_weights_record(w) for w in c.weights_in_use()],
                        # sha256 of a checkpoint file loaded by path (trainable encoders)
                        "checkpoint_sha256": getattr(c, "checkpoint_sha256", None),
                    }
                )
        return plugins_used

    def _check_loaded_columns(self, ctx: StepContext) -> None:
        """The column check again with the loaded encoders (their targets are now known)."""
        from crystal.components import Encoder
        from crystal_pipeline.columns import encoder_columns

        encoders = {
            sid: encoder_columns(comps[-1])
            for sid, comps in ctx.components.items()
            if sid != "source" and comps and isinstance(comps[-1], Encoder)
        }
        problems = self.column_problems(encoders)
        if problems:
            raise ConfigError("\n".join(problems))

    def _source_stage(self, run: _Run, ctx: StepContext) -> None:
        """Read (or reload) the source: the run's inputs, its first batch and failures."""
        t0 = time.perf_counter()
        run.emit("step_start", "source", f"source: {self.config.source.type}")
        rid = str(run.manifest.get("run_id", ""))
        source = run.checkpointed(run.state / "source.pt", lambda: self._read_source(ctx, run.dev, rid))
        run.manifest["timings_s"]["source"] = round(time.perf_counter() - t0, 3)
        if isinstance(self.config.source, GenerateSource):  # what was asked, delivered, rejected; never silent
            report = _sources.generation_report(self.config.source, len(source.batch), source.failures)
            run.manifest["generation"] = report
            if report["shortfall"]:
                run.emit("failure", "source", report["shortfall"], data={"shortfall": report})
        run.all_ids = list(source.batch.ids) + [f.id for f in source.failures]
        run.sources = {
            i: str(inf.get("source", "")) for i, inf in zip(source.batch.ids, source.batch.info, strict=True)
        }
        run.emit(
            "step_end",
            "source",
            f"{len(source.batch)} crystals, {len(source.failures)} failed",
            done=len(source.batch),
            total=len(run.all_ids),
        )
        run.failures = list(source.failures)
        run.batch = source.batch

    def _map_stage(self, run: _Run, ctx: StepContext, k: int, stage: list[Any]) -> None:
        """Consecutive map steps, chunk by chunk; each chunk checkpointed. A crystal that a
        step cannot handle becomes a failure of that chunk, never of the run."""
        batch, chunk_size = run.batch, self.config.pipeline.chunk_size
        n_chunks = max(1, -(-len(batch) // chunk_size))
        for s in stage:
            run.emit("step_start", s.id, f"{s.type} on {len(batch)} crystals", done=0, total=len(batch))
        parts: list[CrystalBatch] = []
        done = 0
        for j, chunk in enumerate(batch.split(chunk_size) if len(batch) else [batch]):
            ckpt = run.state / f"stage{k:02d}-chunk{j:05d}.pt"
            out = run.checkpointed(ckpt, functools.partial(_run_chunk, stage, chunk, ctx, j))
            parts.append(out.batch)
            run.failures += out.failures
            done += len(chunk)
            for s in stage:
                run.emit("progress", s.id, f"chunk {j + 1}/{n_chunks}", done=done, total=len(batch))
        # a chunk whose every crystal failed has none of the stage's columns: leave it out
        kept = [p for p in parts if len(p)]
        run.batch = CrystalBatch.concat(kept) if kept else (parts[-1] if parts else batch)
        for s in stage:
            run.emit("step_end", s.id, f"{len(run.batch)} crystals remain", done=len(run.batch), total=len(run.batch))

    def _global_stage(self, run: _Run, ctx: StepContext, k: int, step: Any) -> None:
        """One global step (filter, rank, deduplicate, ...) on the whole batch, checkpointed."""
        batch = run.batch
        run.emit("step_start", step.id, f"{step.type} on {len(batch)} crystals", done=0, total=len(batch))
        out = run.checkpointed(run.state / f"stage{k:02d}.pt", lambda: run_global_step(step, batch, ctx))
        run.batch = out.batch
        run.dropped += out.dropped
        run.failures += out.failures
        run.emit("step_end", step.id, f"{len(run.batch)} crystals remain", done=len(run.batch), total=len(run.batch))

    def _write_outputs(self, run: _Run) -> list[dict[str, Any]]:
        """results.csv, failures.csv and every sink; the result rows."""
        t0 = time.perf_counter()
        rows = _result_rows(run.all_ids, run.batch, run.failures, run.dropped, run.sources)
        fields = _result_fields(rows)
        units = self.column_units(fields, run.manifest.get("plugins"))
        run.manifest["units"] = dict(units)
        _write_rows(run.run_dir / "results.csv", rows, fields, units=units)
        _write_rows(
            run.run_dir / "failures.csv",
            [r for r in rows if r["status"] == "failed"],
            fields=["id", "status", "step", "reason", "source"],
        )
        run.outputs = ["results.csv", _units_path(Path("results.csv")).name, "failures.csv"]
        for sink in self.config.sinks:
            run.outputs += self._write_sink(sink, run.batch, run.run_dir, run.manifest)
        run.manifest["timings_s"]["sinks"] = round(time.perf_counter() - t0, 3)
        return rows

    @property
    def ranked(self) -> bool:
        """Whether a rank step orders the surviving crystals (csv sinks then start with ``rank``)."""
        return any(s.type == "rank" for s in self.config.steps)

    def column_units(self, columns: list[str], plugins: list[dict[str, Any]] | None = None) -> dict[str, str]:
        """The unit of each of ``columns`` (:func:`crystal_pipeline.columns.column_units`; the
        encoders' target units from the run's plugin records)."""
        from crystal_pipeline.columns import column_units, registered_metric_units

        return column_units(self.config, columns, plugins=plugins, metric_units=registered_metric_units())

    def _finish(self, run: _Run, rows: list[dict[str, Any]]) -> RunResult:
        """Mark the manifest complete with the counts per status, and say so."""
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        for step in self.config.steps:  # which references the hull step used (the last hull step's)
            if step.type == "hull":
                from crystal_pipeline.hull import manifest_record

                ok_formulas = [str(r["formula"]) for r in rows if r["status"] == "ok" and r.get("formula")]
                run.manifest["hull"] = manifest_record(step, self.base_dir, ok_formulas)
        run.manifest.update(
            status="complete",
            finished=_dt.datetime.now(_dt.UTC).isoformat(),
            counts={"inputs": len(run.all_ids), **counts},
            outputs=run.outputs,
        )
        _write_json(run.manifest_path, run.manifest)
        run.emit(
            "run_end",
            message=f"{counts.get('ok', 0)} ok, {counts.get('failed', 0)} failed, "
            f"{counts.get('filtered', 0)} filtered, {counts.get('duplicate', 0)} duplicates -> {run.run_dir}",
        )
        return RunResult(run.run_dir, run.batch, rows, run.failures, run.dropped, run.manifest)

    # ------------------------------------------------------------------ helpers
    def _read_source(self, ctx: StepContext, dev: torch.device, rid: str = "") -> StageOutput:
        """The source read block by block (:func:`~crystal_pipeline.sources.plan_blocks`, as the
        ray executor reads it, so both give the same inputs and ids), then checked; ``rid``: the
        run id in generated crystals' ids."""
        from crystal_pipeline.sources import plan_blocks, read_block

        src = self.config.source
        meta = self.config.pipeline
        gen: Generator | None = None
        if isinstance(src, GenerateSource):
            (comp,) = ctx.components["source"]
            assert isinstance(comp, Generator)
            gen = comp
        failures: list[Failure] = []
        parts: list[CrystalBatch] = []
        plan = plan_blocks(src, base_dir=self.base_dir, chunk_size=meta.chunk_size, seed=meta.seed, run_id=rid)
        for spec in plan:  # a generate block delivers crystals that pass min_distance (rejected ones: rows)
            block = read_block(
                spec, src, base_dir=self.base_dir, generator=gen, min_distance=meta.min_distance if gen else None
            )
            failures += block.failures
            if len(block.batch):
                parts.append(block.batch)
        batch = CrystalBatch.concat(parts) if parts else CrystalBatch.empty()
        # ids must be unique to account for every input (blocks are; the same id in two blocks is not)
        used: set[str] = set()
        suffix: dict[str, int] = {}
        new_ids = []
        for i in batch.ids:
            out, n = i, suffix.get(i, 0)
            while out in used:
                n += 1
                out = f"{i}#{n}"
            suffix[i] = n
            used.add(out)
            new_ids.append(out)
        batch.ids = new_ids
        batch = batch.to(dev)
        reasons = _validate_in_chunks(batch, meta.min_distance, meta.chunk_size)
        keep = torch.tensor([r is None for r in reasons], dtype=torch.bool, device=dev)
        failures += [
            Failure(i, "source", r, str(inf.get("source", "")))
            for i, r, inf in zip(batch.ids, reasons, batch.info, strict=True)
            if r is not None
        ]
        for f in failures:
            ctx.emit("failure", "source", f"{f.id}: {f.reason}", data={"id": f.id, "reason": f.reason})
        return StageOutput(batch.select(keep), failures)

    def _write_sink(
        self, sink: Any, batch: CrystalBatch, run_dir: Path, manifest: dict[str, Any] | None = None
    ) -> list[str]:
        """One ``[[sinks]]`` entry; the paths written (a csv sink's units sidecar included)."""
        target = run_dir / sink.path
        if isinstance(sink, StructureSink):
            write_structures(batch, target, sink.type, symprec=sink.symprec)
            return [sink.path]
        assert isinstance(sink, CsvSink)
        cols = sink.columns if sink.columns is not None else list(batch.crystal_properties)
        missing = [c for c in cols if c not in batch.crystal_properties]
        if missing:
            raise CrystalError(
                f"csv sink {sink.path!r}: unknown columns {missing}; available: {sorted(batch.crystal_properties)}"
            )
        formulas = batch.formulas() if len(batch) else []
        rows = []
        values = {c: batch.crystal_properties[c].detach().cpu().tolist() for c in cols}
        for k, ident in enumerate(batch.ids):
            # rank: the position in the order of the last rank step, only when one ran
            row: dict[str, Any] = {
                "rank": k + 1,
                "id": ident,
                "formula": formulas[k],
                "num_atoms": int(batch.num_atoms[k]),
            }
            for label_head, label in batch.info[k].get("labels", {}).items():
                row[label_head] = label
            row.update({c: _fmt(values[c][k]) for c in cols})
            rows.append(row)
        fields = [
            *(["rank"] if self.ranked else []),
            "id",
            "formula",
            "num_atoms",
            *sorted({h for inf in batch.info for h in inf.get("labels", {})}),
            *cols,
        ]
        units = self.column_units(fields, (manifest or {}).get("plugins"))
        if manifest is not None:
            manifest.setdefault("units", {}).update(units)
        _write_rows(target, rows, fields=fields, units=units, units_mode=sink.units)
        return [sink.path] + ([str(_units_path(Path(sink.path)))] if sink.units == "sidecar" else [])


_MANIFEST_PACKAGES = (
    "crystal-core",
    "crystal-cli",
    "torch",
    "numpy",
    "pymatgen",
    "ase",
    "pydantic",
    "pluggy",
    "stevedore",
)


@dataclass
class _Run:
    """One run while it runs: where it writes, what it tells its listeners, and the
    accounting so far (surviving batch, failures, dropped inputs)."""

    run_dir: Path
    resume: bool
    dev: torch.device
    listeners: list[Listener]
    device_spec: str = "auto"
    """The device asked for (resolved again by each ray worker, on its own machine)."""
    manifest: dict[str, Any] = field(default_factory=dict)
    all_ids: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # input id -> where it came from
    batch: CrystalBatch = field(default_factory=CrystalBatch.empty)
    failures: list[Failure] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    steps_done: int = 0
    """Stages completed in this process (a configuration error before any leaves nothing behind)."""

    @property
    def state(self) -> Path:
        return self.run_dir / ".state"

    @property
    def manifest_path(self) -> Path:
        return self.run_dir / "manifest.json"

    def emit(
        self,
        kind: EventKind,
        step: str | None = None,
        message: str = "",
        done: int | None = None,
        total: int | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        event = PipelineEvent(kind, str(self.run_dir), step, message, done, total, data or {})
        _dispatch(event, self.listeners)

    def checkpointed(self, ckpt: Path, compute: Callable[[], StageOutput]) -> StageOutput:
        """``compute()``, saved to ``ckpt``; on resume, the saved output when it exists."""
        if self.resume and ckpt.is_file():
            return load_checkpoint(ckpt, self.dev)
        out = compute()
        save_checkpoint(ckpt, out)
        return out

    def record_error(self, exc: BaseException) -> None:
        """Leave an honest manifest behind: the run failed or was interrupted, never 'running'."""
        interrupted = isinstance(exc, (KeyboardInterrupt, SystemExit))
        self.manifest.update(
            status="interrupted" if interrupted else "failed",
            error=f"{type(exc).__name__}: {exc}",
            finished=_dt.datetime.now(_dt.UTC).isoformat(),
        )
        _write_json(self.manifest_path, self.manifest)
        if not interrupted:
            self.emit("failure", message=f"run failed: {type(exc).__name__}: {exc}", data={"error": str(exc)})


def _group_stages(steps: Iterable[Any]) -> list[list[Any]]:
    """Consecutive map steps form one stage; every global step is a stage of its own."""
    stages: list[list[Any]] = []
    for step in steps:
        if step.type in MAP_STEPS and stages and stages[-1][0].type in MAP_STEPS:
            stages[-1].append(step)
        else:
            stages.append([step])
    return stages


def _run_chunk(stage: list[Any], chunk: CrystalBatch, ctx: StepContext, index: int) -> StageOutput:
    """The map steps of a stage on one chunk; failures of each step accumulate."""
    ctx.chunk_index = index
    out = StageOutput(chunk)
    for s in stage:
        res = run_map_step(s, out.batch, ctx)
        out = StageOutput(res.batch, out.failures + res.failures)
    return out


def _fmt(v: Any) -> Any:
    return round(v, 6) if isinstance(v, float) else v


def _validate_in_chunks(batch: CrystalBatch, min_distance: float, chunk_size: int) -> list[str | None]:
    """:meth:`CrystalBatch.validate` chunk by chunk; a chunk that runs out of memory is split
    until the crystal responsible is alone, and that crystal alone fails."""

    def check(sub: CrystalBatch) -> list[str | None]:
        try:
            return sub.validate(min_distance)
        except (MemoryError, RuntimeError) as exc:
            if not is_out_of_memory(exc):
                raise
            free_memory()
            if len(sub) == 1:
                return [out_of_memory_reason(exc, sub, "the input check")]
            idx = torch.arange(len(sub), device=sub.device)
            half = len(sub) // 2
            return check(sub.select(idx[:half])) + check(sub.select(idx[half:]))

    return [r for part in batch.split(max(1, chunk_size)) for r in check(part)]


def weights_config(
    cls: type[Component],
    config: dict[str, Any],
    *,
    random_init: bool,
    give: str = "weights or checkpoint",
    switch: str = "random_init = true",
) -> dict[str, Any]:
    """The config an encoder or characterizer is built with, refusing silent random weights.

    * ``config`` names ``weights`` or a ``checkpoint``: unchanged (``random_init`` then contradicts it);
    * neither (and no explicit ``weights = None``), and the class declares ``default_weights``:
      those, written into the config (so the run manifest names them);
    * neither, and the config's own defaults name none: a :class:`ConfigError` listing the
      component's named weights (``give``: how to choose them, ``switch``: how to say
      ``random_init``), unless ``random_init``, which also clears a ``weights`` default.

    A component whose config has neither field (e.g. an analytic encoder) has no weights to
    choose and is returned unchanged (``random_init`` is then an error: it would do nothing).
    """
    fields = cls.Config.model_fields
    what = f"{cls.kind.singular} {cls.name!r}"
    if not {"weights", "checkpoint"} & fields.keys():
        if random_init:
            raise ConfigError(f"{what}: random_init: it has no weights (nothing to initialise randomly); remove it")
        return dict(config)
    given = sorted(k for k in ("weights", "checkpoint") if config.get(k) is not None)
    if random_init:
        if given:
            raise ConfigError(f"{what}: random_init contradicts config {' and '.join(given)}; remove one of them")
        return {**config, "weights": None} if "weights" in fields else dict(config)
    if given:
        return dict(config)
    if cls.default_weights is not None and "weights" in fields and "weights" not in config:  # not weights=None
        return {**config, "weights": cls.default_weights}
    made = cls.make_config(config)
    if getattr(made, "weights", None) is not None or getattr(made, "checkpoint", None) is not None:
        return dict(config)
    names = ", ".join(cls.weights) or "none shipped"
    raise ConfigError(
        f"{what}: no weights given: it would start from random weights and its outputs would be meaningless. "
        f"Give {give} (named weights: {names}; or a checkpoint file such as the model.pt of `crystal train`), "
        f"or {switch} to use random weights on purpose"
    )


def _weights_record(name: str) -> dict[str, Any]:
    from crystal.weights import find_weights

    entry = find_weights(name)
    return {"name": name, "sha256": entry.sha256, "file": entry.file, "licence": entry.licence}


def _dispatch(event: PipelineEvent, listeners: list[Listener]) -> None:
    from crystal.hooks import call_isolated

    call_isolated("pipeline_event", event=event)  # a listener must never stop a run
    for listener in listeners:
        listener(event)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_write(path) as fh:
        json.dump(data, fh, indent=2, default=str)


def _result_rows(
    all_ids: list[str], batch: CrystalBatch, failures: list[Failure], dropped: list[Dropped], sources: dict[str, str]
) -> list[dict[str, Any]]:
    by_id: dict[str, dict[str, Any]] = {}
    formulas = batch.formulas() if len(batch) else []
    cols = {c: v.detach().cpu().tolist() for c, v in batch.crystal_properties.items() if v.ndim == 1}
    for k, ident in enumerate(batch.ids):
        row = {
            "id": ident,
            "status": "ok",
            "step": "",
            "reason": "",
            "source": sources.get(ident, ""),
            "formula": formulas[k],
        }
        row.update({c: _fmt(v[k]) for c, v in cols.items()})
        by_id[ident] = row
    for d in dropped:
        by_id[d.id] = {
            "id": d.id,
            "status": d.status,
            "step": d.step,
            "reason": d.reason,
            "source": sources.get(d.id, ""),
        }
    for f in failures:
        by_id[f.id] = {
            "id": f.id,
            "status": "failed",
            "step": f.step,
            "reason": f.reason,
            "source": f.source or sources.get(f.id, ""),
        }
    rows = []
    for ident in all_ids:
        found = by_id.get(ident)
        lost = {"id": ident, "status": "failed", "step": "", "reason": "lost track of this input (bug)", "source": ""}
        row = found if found is not None else lost  # never expected: every input is accounted for
        rows.append(row)
    return rows


def _result_fields(rows: list[dict[str, Any]]) -> list[str]:
    """The columns of results.csv: the fixed ones, then every computed column in order of appearance."""
    fields = ["id", "status", "step", "reason", "source", "formula"]
    for r in rows:
        fields += [k for k in r if k not in fields]
    return fields


def _units_path(table: Path) -> Path:
    """``summary.csv`` -> ``summary.units.csv``: where a table's units are written beside it."""
    stem = table.name[:-4] if table.name.lower().endswith(".csv") else table.name
    return table.with_name(f"{stem}.units.csv")


def _write_rows(
    path: Path,
    rows: list[dict[str, Any]],
    fields: list[str] | None = None,
    *,
    units: dict[str, str] | None = None,
    units_mode: str = "sidecar",
) -> None:
    """A CSV table; with ``units`` (column -> unit, ``""`` for none) also its units: in a
    ``<stem>.units.csv`` sidecar (rows ``column,unit``; ``units_mode`` 'sidecar') or in the
    header as ``name (unit)`` ('header'); 'none' writes none."""
    from crystal_pipeline.columns import label_with_unit

    if fields is None:
        fields = _result_fields(rows)
    header = list(fields)
    if units is not None and units_mode == "header":
        header = [label_with_unit(f, units.get(f, "")) for f in fields]
    with atomic_write(path, newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows([r.get(f, "") for f in fields] for r in rows)
    if units is not None and units_mode == "sidecar":
        with atomic_write(_units_path(path), newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["column", "unit"])
            writer.writerows([f, units.get(f, "")] for f in fields)
    elif units is not None:  # a sidecar left by an earlier attempt (resume) would contradict the table
        _units_path(path).unlink(missing_ok=True)


def load_pipeline(source: str | Path | dict[str, Any], overrides: list[str] | None = None) -> Pipeline:
    """A :class:`Pipeline` from a TOML path or a dict (validated, not yet run)."""
    if isinstance(source, dict):
        return Pipeline.from_dict(source, overrides)
    return Pipeline.from_toml(source, overrides)


def run_pipeline(
    source: str | Path | dict[str, Any],
    run_dir: str | Path | None = None,
    *,
    overrides: list[str] | None = None,
    resume: bool = False,
    device: str | None = None,
    listeners: Iterable[Listener] = (),
) -> RunResult:
    """Load and run a pipeline in one call (the Python twin of ``crystal run``)."""
    return load_pipeline(source, overrides).run(run_dir, resume=resume, device=device, listeners=listeners)
