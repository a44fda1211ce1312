"""Step implementations. Map steps work on a chunk of crystals on the device; global steps
(filter, rank, deduplicate) see every surviving crystal at once.

Each returns a :class:`~crystal_pipeline.state.StageOutput`: the surviving batch (with new
columns in ``crystal_properties``), failures and deliberate drops.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from crystal.batch import CrystalBatch
from crystal.components import Characterizer, Component, Encoder, Potential, Representation, isolated_atoms
from crystal.errors import ConfigError, CrystalError, PipelineError, PluginError
from crystal.io import Failure
from crystal_pipeline.config import (
    CharacterizeStep,
    DeduplicateStep,
    EvaluateStep,
    FilterStep,
    MDStep,
    MetricsStep,
    PredictStep,
    RankStep,
    RelaxStep,
    ValidateStep,
)
from crystal_pipeline.state import Dropped, StageOutput
from crystal_sim.memory import free_memory, is_out_of_memory

__all__ = ["StepContext", "md_seed", "run_global_step", "run_map_step"]


@dataclass
class StepContext:
    """What steps may use: loaded components by step id, the run directory, an emitter,
    the pipeline seed."""

    run_dir: Path
    components: dict[str, tuple[Component, ...]] = field(default_factory=dict)
    emit: Callable[..., None] = lambda *a, **k: None
    chunk_index: int = 0
    seed: int = 0
    base_dir: Path | None = None  # the pipeline file's folder: relative paths in steps start there
    _metrics: dict[str, Any] | None = None

    def metrics(self) -> dict[str, Any]:
        """Registered metrics, collected once per run."""
        if self._metrics is None:
            from crystal.registries import metrics

            self._metrics = metrics()
        return self._metrics


# ----------------------------------------------------------------------------- map
def _validate(step: ValidateStep, batch: CrystalBatch, ctx: StepContext) -> StageOutput:
    reasons = batch.validate(step.min_distance)
    failures = [Failure(i, step.id, r) for i, r in zip(batch.ids, reasons, strict=True) if r is not None]
    keep = torch.tensor([r is None for r in reasons], dtype=torch.bool, device=batch.device)
    return StageOutput(batch.select(keep), failures)


def _relax(step: RelaxStep, batch: CrystalBatch, ctx: StepContext) -> StageOutput:
    from crystal_sim.relax import RelaxConfig, relax

    (potential,) = ctx.components[step.id]
    assert isinstance(potential, Potential)
    cfg: RelaxConfig = step.relax_config()  # in flight, capacity from the potential's memory model
    potential.check_elements(batch)

    def progress(k: int, n_active: int, n_converged: int) -> None:
        if k % 10 == 0:
            ctx.emit("progress", step.id, f"FIRE evaluation {k}: {n_converged} converged, {n_active} running")

    res = relax(potential, batch, cfg, callback=progress)
    out = res.batch.to(batch.device)
    energy = out.crystal_properties["energy"]
    out.crystal_properties["energy_per_atom"] = energy / out.num_atoms.to(energy.dtype)
    out.crystal_properties["converged"] = res.converged.to(out.device, energy.dtype)
    out.crystal_properties["relax_steps"] = res.steps.to(out.device, energy.dtype)
    if res.trajectory:
        from crystal.io import atomic_write

        frames = []
        for k, snap in res.trajectory:
            for atoms, e in zip(snap.to_atoms(), snap.crystal_properties["energy"].tolist(), strict=True):
                atoms.info.update({"step": k, "energy": e})
                frames.append(atoms)
        from ase.io import write

        path = ctx.run_dir / "trajectories" / f"{step.id}-chunk{ctx.chunk_index:05d}.extxyz"
        with atomic_write(path) as fh:
            write(fh, frames, format="extxyz")
    failures: list[Failure] = []
    for k, reason in enumerate(res.failures):  # stopped crystals (runaway volume/energy, ...) are failure rows
        if reason is not None:
            failures.append(Failure(out.ids[k], step.id, reason, str(out.info[k].get("source", ""))))
            ctx.emit("failure", step.id, f"{out.ids[k]}: {reason}", data={"id": out.ids[k], "reason": reason})
    if failures:
        out = out.select(torch.tensor([r is None for r in res.failures], dtype=torch.bool, device=out.device))
    return StageOutput(out, failures)


def md_seed(seed: int, step_id: str, crystal_id: str) -> int:
    """The MD seed of one crystal in an ``md`` step: a hash of (seed, step id, crystal id),
    so a crystal's trajectory depends neither on its chunk, nor on its position, nor on the
    bisection that isolates failures."""
    digest = hashlib.sha256(f"{seed}/{step_id}/{crystal_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _md(step: MDStep, batch: CrystalBatch, ctx: StepContext) -> StageOutput:
    from ase.data import atomic_masses
    from ase.units import fs as ase_fs

    from crystal_sim.md import MDState, maxwell_boltzmann_velocities, run_md

    (potential,) = ctx.components[step.id]
    assert isinstance(potential, Potential)
    potential.check_elements(batch)
    seed = ctx.seed if step.seed is None else step.seed
    cfg = step.md_config([md_seed(seed, step.id, i) for i in batch.ids])
    work = batch.to(potential.device)
    n_atoms = work.num_atoms.to(work.dtype)

    velocities: torch.Tensor | None = None
    kinetic0: torch.Tensor | None = None
    if cfg.ensemble == "nve":
        # the drift is measured from step 0: draw the start velocities here (exactly the
        # ones run_md would draw); run_md returns the initial potential energy
        t0 = cfg.temperature if cfg.init_temperature is None else cfg.init_temperature
        velocities = maxwell_boltzmann_velocities(work, t0, cfg.seed)
        masses = torch.as_tensor(atomic_masses, dtype=work.dtype, device=work.device)[work.atomic_numbers]
        v = velocities / ase_fs  # Å per ASE time unit
        kinetic0 = torch.zeros(len(work), dtype=work.dtype, device=work.device).index_add_(
            0, work.batch, 0.5 * masses * (v * v).sum(dim=1)
        )

    every = max(1, step.steps // 10)
    last = [0]

    def progress(state: MDState) -> None:
        if state.step < last[0]:  # the next group of crystals (more than fit in memory at once)
            last[0] = 0
        if state.step // every > last[0] // every:
            last[0] = state.step
            ctx.emit(
                "progress",
                step.id,
                f"MD step {state.step}/{step.steps} ({len(state.batch)} crystals): "
                f"mean T {state.temperature.mean().item():.0f} K",
            )

    res = run_md(potential, work, cfg, velocities=velocities, callback=progress)
    out = res.batch.to(batch.device)
    energy = out.crystal_properties["energy"]
    out.crystal_properties["energy_per_atom"] = energy / out.num_atoms.to(energy.dtype)
    out.crystal_properties["md_temperature_mean"] = res.temperature.mean(dim=0).to(out.device, energy.dtype)
    if kinetic0 is not None:
        drift = (res.total_energy[-1] - (res.initial_potential_energy + kinetic0)) / n_atoms
        out.crystal_properties["md_energy_drift_per_atom"] = drift.to(out.device, energy.dtype)
    return StageOutput(out)


def _predict(step: PredictStep, batch: CrystalBatch, ctx: StepContext) -> StageOutput:
    (encoder,) = ctx.components[step.id]
    assert isinstance(encoder, Encoder)
    failures: list[Failure] = []
    cutoff = encoder.graph_cutoff
    if cutoff is not None:  # an atom without neighbours gets no message: its prediction is meaningless
        lonely = isolated_atoms(batch, cutoff).tolist()
        if any(lonely):
            for k, n in enumerate(lonely):
                if n:
                    reason = (
                        f"{n} isolated atom(s): no neighbour within encoder {encoder.name!r}'s graph cutoff of "
                        f"{cutoff:g} Å (a cell this dilute cannot be predicted by a graph model)"
                    )
                    failures.append(Failure(batch.ids[k], step.id, reason, str(batch.info[k].get("source", ""))))
                    ctx.emit(
                        "failure", step.id, f"{batch.ids[k]}: {reason}", data={"id": batch.ids[k], "reason": reason}
                    )
            batch = batch.select(torch.tensor([n == 0 for n in lonely], device=batch.device))
            if len(batch) == 0:
                return StageOutput(batch, failures)
    preds = {k: v.to(batch.device) for k, v in encoder.predict(batch.to(encoder.device)).items()}
    for target, value in preds.items():
        value = value.detach()
        if value.shape[0] == len(batch) and value.ndim == 1:
            batch.crystal_properties[target] = value
        elif value.shape[0] == len(batch) and value.ndim == 2 and len(batch) != batch.num_nodes:
            for k in range(value.shape[1]):
                batch.crystal_properties[f"{target}_{k}"] = value[:, k]
        elif value.shape[0] == batch.num_nodes:
            batch.atom_properties[target] = value
        else:
            raise PipelineError(
                f"step {step.id!r}: encoder {encoder.name!r} returned {target!r} with shape {tuple(value.shape)} "
                f"for {len(batch)} crystals / {batch.num_nodes} atoms"
            )
    return StageOutput(batch, failures)


def _characterize(step: CharacterizeStep, batch: CrystalBatch, ctx: StepContext) -> StageOutput:
    representation, characterizer = ctx.components[step.id]
    assert isinstance(representation, Representation) and isinstance(characterizer, Characterizer)
    rep = representation.represent(batch.to(representation.device))
    if "signal" not in rep:
        raise PipelineError(
            f"step {step.id!r}: representation {representation.name!r} produced {sorted(rep)}, not a 'signal'"
        )
    scores = {
        k: v.to(batch.device) for k, v in characterizer.characterize(rep["signal"].to(characterizer.device)).items()
    }
    for head, probs in scores.items():
        p, k = probs.detach().max(dim=1)
        labels = characterizer.labels(head)
        batch.crystal_properties[f"{head}_prob"] = p.to(batch.dtype)
        batch.crystal_properties[f"{head}_index"] = k.to(batch.dtype)
        for info, idx in zip(batch.info, k.tolist(), strict=True):
            info.setdefault("labels", {})[head] = labels[idx]
    return StageOutput(batch)


def _metrics(step: MetricsStep, batch: CrystalBatch, ctx: StepContext) -> StageOutput:
    registered = ctx.metrics()
    for name in step.names:
        batch.crystal_properties[name] = registered[name].compute(batch).to(batch.dtype)
    return StageOutput(batch)


def _hull(step: Any, batch: CrystalBatch, ctx: StepContext) -> StageOutput:
    from crystal_pipeline.hull import run_hull  # formation energy, e_above_hull (crystal_pipeline.hull)

    return run_hull(step, batch, ctx)


_MAP: dict[str, Callable[[Any, CrystalBatch, StepContext], StageOutput]] = {
    "validate": _validate,
    "relax": _relax,
    "md": _md,
    "predict": _predict,
    "characterize": _characterize,
    "metrics": _metrics,
    "hull": _hull,
}


def out_of_memory_reason(exc: BaseException, sub: CrystalBatch, where: str) -> str:
    """The failure reason of a crystal that alone runs out of memory."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"out of memory in {where} on this crystal alone ({int(sub.num_atoms[0])} atoms, cell volume "
        f"{float(sub.volumes[0]):.4g} Å^3); try a smaller model batch or a machine with more memory "
        f"({first[:160]})"
    )


def failure_reason(exc: BaseException) -> str:
    """A reason a person understands: crystal's own errors as they are, an allocator failure as
    'out of memory', anything else as ``Type: first line``."""
    if isinstance(exc, CrystalError):
        return str(exc)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, ZeroDivisionError):
        return f"a division by zero inside the model (a degenerate cell, or a crystal it cannot handle): {first}"
    return f"{type(exc).__name__}: {first}"[:400]


def run_map_step(step: Any, batch: CrystalBatch, ctx: StepContext) -> StageOutput:
    """Run a map step on ``batch``; a crystal that makes the step fail is isolated by
    bisection and reported as a failure, the others go on."""
    fn = _MAP[step.type]
    failures: list[Failure] = []
    errors: list[BaseException] = []

    def attempt(sub: CrystalBatch) -> list[StageOutput]:
        if len(sub) == 0:
            return []
        try:
            return [fn(step, sub, ctx)]
        except (ConfigError, PluginError):
            raise
        except Exception as exc:
            oom = is_out_of_memory(exc)
            if oom:
                free_memory()
            if len(sub) == 1:
                errors.append(exc)
                reason = out_of_memory_reason(exc, sub, f"step {step.id!r}") if oom else failure_reason(exc)
                failures.append(Failure(sub.ids[0], step.id, reason, str(sub.info[0].get("source", ""))))
                ctx.emit("failure", step.id, f"{sub.ids[0]}: {reason}", data={"id": sub.ids[0], "reason": reason})
                return []
            half = len(sub) // 2
            idx = torch.arange(len(sub), device=sub.device)
            return attempt(sub.select(idx[:half])) + attempt(sub.select(idx[half:]))

    outputs = attempt(batch)
    if len(batch) > 1 and len(failures) == len(batch):
        kinds = {type(e) for e in errors}
        oom = all(is_out_of_memory(e) for e in errors)  # each crystal alone too large: bad input, not a bug
        if len(kinds) == 1 and not issubclass(kinds.pop(), CrystalError) and not oom:
            raise PipelineError(
                f"step {step.id!r} failed on every crystal of a chunk with the same error "
                f"({failures[0].reason}); this looks like a bug or a configuration problem, not bad input"
            )
    parts = [o.batch for o in outputs]
    merged = CrystalBatch.concat(parts) if parts else batch.select(torch.zeros(0, dtype=torch.long))
    for o in outputs:
        failures.extend(o.failures)
    return StageOutput(merged, failures)


# ----------------------------------------------------------------------------- global
_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne}


def _column(batch: CrystalBatch, step_id: str, name: str) -> torch.Tensor:
    if name not in batch.crystal_properties:
        available = ", ".join(sorted(batch.crystal_properties)) or "none"
        raise PipelineError(f"step {step_id!r}: no column {name!r} (available columns: {available})")
    return batch.crystal_properties[name]


def _filter(step: FilterStep, batch: CrystalBatch) -> StageOutput:
    if len(batch) == 0:
        return StageOutput(batch)
    keep = torch.ones(len(batch), dtype=torch.bool, device=batch.device)
    for cond in step.where:
        keep &= _OPS[cond.op](_column(batch, step.id, cond.column), cond.value)
    text = " and ".join(f"{c.column} {c.op} {c.value:g}" for c in step.where)
    dropped = [
        Dropped(i, step.id, "filtered", f"not ({text})") for i, k in zip(batch.ids, keep.tolist(), strict=True) if not k
    ]
    return StageOutput(batch.select(keep), dropped=dropped)


def _rank(step: RankStep, batch: CrystalBatch) -> StageOutput:
    if len(batch) == 0:
        return StageOutput(batch)
    values = _column(batch, step.id, step.by)
    order = torch.sort(values, descending=step.descending, stable=True).indices
    cut = order if step.top is None else order[: step.top]
    dropped = [
        Dropped(batch.ids[i], step.id, "filtered", f"not in the top {step.top} by {step.by}")
        for i in order[len(cut) :].tolist()
    ]
    return StageOutput(batch.select(cut), dropped=dropped)


def _deduplicate(step: DeduplicateStep, batch: CrystalBatch) -> StageOutput:
    from pymatgen.analysis.structure_matcher import StructureMatcher

    matcher = StructureMatcher(ltol=step.ltol, stol=step.stol, angle_tol=step.angle_tol)
    structures = batch.to_structures()
    reps: dict[str, list[int]] = {}
    keep: list[int] = []
    dropped: list[Dropped] = []
    for i, s in enumerate(structures):
        formula = s.composition.reduced_formula
        match = next((j for j in reps.get(formula, []) if matcher.fit(structures[j], s)), None)
        if match is None:
            reps.setdefault(formula, []).append(i)
            keep.append(i)
        else:
            dropped.append(Dropped(batch.ids[i], step.id, "duplicate", f"same structure as {batch.ids[match]}"))
    return StageOutput(batch.select(torch.tensor(keep, dtype=torch.long)), dropped=dropped)


def _evaluate(step: EvaluateStep, batch: CrystalBatch, ctx: StepContext | None) -> StageOutput:
    """Score every crystal of ``batch`` with :func:`crystal_metrics.evaluate.evaluate`; writes the
    JSON report into the run directory and passes the batch on unchanged."""
    from crystal_metrics.evaluate import evaluate, summary_rows, write_report

    if ctx is None:
        raise PipelineError(f"step {step.id!r}: the evaluate step needs a run context")
    base = ctx.base_dir or Path.cwd()

    def paths(items: list[str] | None) -> list[str] | None:
        return None if items is None else [p if Path(p).is_absolute() else str(base / p) for p in items]

    if len(batch) == 0:
        raise PipelineError(f"step {step.id!r}: no crystal reached the evaluate step")
    potential = ctx.components[step.id][0] if step.sun else None
    assert potential is None or isinstance(potential, Potential)
    report = evaluate(
        step.task,
        list(batch.ids),
        batch.to_structures(),
        reference=paths(step.reference) or [],
        k=step.k,
        group_by=step.group_by,
        dataset=step.dataset,
        struc_cutoff=step.struc_cutoff,
        comp_cutoff=step.comp_cutoff,
        n_samples=step.n_samples,
        train=paths(step.train),
        sun=step.sun,
        potential=potential,
        hull_reference=paths(step.hull_reference),
        stability_threshold=step.stability_threshold,
        fmax=step.fmax,
        max_steps=step.max_steps,
        reference_limit=step.reference_limit,
        workers=step.workers,
        seed=ctx.seed,
        progress=lambda stage, done, total: ctx.emit("progress", step.id, stage, done=done, total=total),
    )
    report["step"] = step.id
    target = ctx.run_dir / (step.output or f"{step.id}.json")
    write_report(target, report)
    ctx.emit("progress", step.id, "; ".join(f"{k}: {v}" for k, v in summary_rows(report)) + f" -> {target}")
    return StageOutput(batch)


def run_global_step(step: Any, batch: CrystalBatch, ctx: StepContext | None = None) -> StageOutput:
    if step.type == "evaluate":
        return _evaluate(step, batch, ctx)
    if step.type == "filter":
        return _filter(step, batch)
    if step.type == "rank":
        return _rank(step, batch)
    if step.type == "deduplicate":
        return _deduplicate(step, batch)
    raise PipelineError(f"unknown global step type {step.type!r}")
