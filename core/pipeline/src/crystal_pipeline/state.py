"""Checkpoints of a run (for ``--resume``): batches, failures and drops, saved atomically, and
the per-stage configuration hashes that decide whether a run may be resumed.

Each checkpoint is a ``torch.save`` of plain tensors, strings and lists, loaded back with
``weights_only=True``; per-crystal ``info`` travels as JSON.

A run's stages are ``source`` and ``stage00``, ``stage01``, ... (consecutive map steps form
one stage, every global step is a stage of its own); checkpoints are named after them
(``.state/source.pt``, ``.state/stageKK-chunkNNNNN.pt``, ``.state/stageKK.pt``). Each stage's
hash covers what its output depends on: the source and the ``[pipeline]`` fields that change
results (not ``name``, ``description``, ``device`` or ``[pipeline.ray]``), then every step up
to and including the stage. On resume only the stages with a checkpoint must have the same
hash (:func:`resume_conflict`): later steps and the sinks may change.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from crystal.batch import CrystalBatch
from crystal.io import Failure, chmod_like_open, json_default

__all__ = [
    "Dropped",
    "StageOutput",
    "checkpointed_stages",
    "load_checkpoint",
    "resume_conflict",
    "save_checkpoint",
    "stage_hashes",
]


@dataclass(frozen=True)
class Dropped:
    """An input removed on purpose (not an error): ``status`` is 'filtered' or 'duplicate'."""

    id: str
    step: str
    status: str
    reason: str


@dataclass
class StageOutput:
    batch: CrystalBatch
    failures: list[Failure] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)


def save_checkpoint(path: Path, out: StageOutput) -> None:
    b = out.batch.to("cpu")
    payload: dict[str, Any] = {
        "atomic_numbers": b.atomic_numbers,
        "frac_coords": b.frac_coords,
        "lattices": b.lattices,
        "num_atoms": b.num_atoms,
        "pbc": b.pbc,
        "crystal_properties": dict(b.crystal_properties),
        "atom_properties": dict(b.atom_properties),
        "ids": list(b.ids),
        "info_json": json.dumps(b.info, default=json_default),
        "failures": [[f.id, f.step, f.reason, f.source] for f in out.failures],
        "dropped": [[d.id, d.step, d.status, d.reason] for d in out.dropped],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    chmod_like_open(fd)  # mkstemp makes 0600; results must be readable under the umask
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, device: torch.device) -> StageOutput:
    p = torch.load(path, map_location="cpu", weights_only=True)
    batch = CrystalBatch(
        atomic_numbers=p["atomic_numbers"],
        frac_coords=p["frac_coords"],
        lattices=p["lattices"],
        num_atoms=p["num_atoms"],
        pbc=p["pbc"],
        crystal_properties=p["crystal_properties"],
        atom_properties=p["atom_properties"],
        ids=list(p["ids"]),
        info=json.loads(p["info_json"]),
    ).to(device)
    return StageOutput(
        batch,
        [Failure(*f) for f in p["failures"]],
        [Dropped(*d) for d in p["dropped"]],
    )


# ----------------------------------------------------------------------------- resume
#: ``[pipeline]`` fields that do not change what a stage computes
_META_FREE = frozenset({"name", "description", "device", "ray"})


def _sha(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _stages(steps: list[Any]) -> list[list[Any]]:
    """Consecutive map steps form one stage; every global step is a stage of its own."""
    from crystal_pipeline.config import MAP_STEPS

    stages: list[list[Any]] = []
    for step in steps:
        if step.type in MAP_STEPS and stages and stages[-1][0].type in MAP_STEPS:
            stages[-1].append(step)
        else:
            stages.append([step])
    return stages


def stage_hashes(config: Any) -> dict[str, dict[str, str]]:
    """``{"source": {"steps": "source", "sha256": ...}, "stage00": {"steps": "relax+m", ...}}``:
    each stage's hash chains the previous one's with its own steps' configs."""
    meta = {k: v for k, v in config.pipeline.model_dump(mode="json").items() if k not in _META_FREE}
    h = _sha({"pipeline": meta, "source": config.source.model_dump(mode="json")})
    out = {"source": {"steps": "source", "sha256": h}}
    for k, stage in enumerate(_stages(list(config.steps))):
        h = _sha([h, [s.model_dump(mode="json") for s in stage]])
        out[f"stage{k:02d}"] = {"steps": "+".join(s.id for s in stage), "sha256": h}
    return out


_CKPT = re.compile(r"^(source|stage\d+)(?:-chunk\d+)?\.pt$")


def checkpointed_stages(state_dir: Path) -> list[str]:
    """Stages with at least one checkpoint in ``state_dir``, ``source`` first, then in order."""
    names = {m.group(1) for p in state_dir.glob("*.pt") if (m := _CKPT.match(p.name))} if state_dir.is_dir() else set()
    return sorted(names, key=lambda n: (n != "source", n))


def _changes(old: Any, new: Any) -> str:
    """``field: old -> new`` for the top-level fields of two dicts that differ."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return ""
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "; ".join(f"{k}: {json.dumps(old.get(k))} -> {json.dumps(new.get(k))}" for k in keys)


def _what_differs(previous_config: Any, config: Any, stage_steps: list[Any]) -> str:
    """The first step (or the source, or a [pipeline] field) of ``stage_steps`` whose config is
    not the interrupted run's, with the fields that changed."""
    if not isinstance(previous_config, dict):
        return ""
    meta_old = {k: v for k, v in (previous_config.get("pipeline") or {}).items() if k not in _META_FREE}
    meta_new = {k: v for k, v in config.pipeline.model_dump(mode="json").items() if k not in _META_FREE}
    if meta_old != meta_new:
        return f"[pipeline] ({_changes(meta_old, meta_new)})"
    src = config.source.model_dump(mode="json")
    if previous_config.get("source") != src:
        return f"the source ({_changes(previous_config.get('source'), src)})"
    old_steps = {s.get("id"): s for s in previous_config.get("steps") or [] if isinstance(s, dict)}
    for step in stage_steps:
        now = step.model_dump(mode="json")
        if step.id not in old_steps:
            return f"step {step.id!r} (not in the interrupted run)"
        if old_steps[step.id] != now:
            return f"step {step.id!r} ({_changes(old_steps[step.id], now)})"
    return ""


def resume_conflict(previous: dict[str, Any], config: Any, state_dir: Path) -> str | None:
    """Why ``config`` may not resume the run whose manifest is ``previous`` (``None``: it may):
    a stage with a checkpoint whose configuration hash changed, named with the step and fields
    that differ. A manifest from before per-stage hashes must match as a whole
    (``config_sha256``, compared by the caller)."""
    before = previous.get("stage_sha256")
    if not isinstance(before, dict):
        return None
    now = stage_hashes(config)
    stages = _stages(list(config.steps))
    for name in checkpointed_stages(state_dir):
        old = before.get(name) or {}
        if name in now and old.get("sha256") == now[name]["sha256"]:
            continue
        if name not in now:
            return (
                f"stage {name} (steps {old.get('steps', '?')}) is checkpointed but the pipeline now has "
                f"{len(now) - 1} stage(s)"
            )
        upto = [s for st in stages[: int(name[5:]) + 1] for s in st] if name != "source" else []
        what = _what_differs(previous.get("config"), config, upto) or "its configuration"
        label = "the source stage" if name == "source" else f"stage {name} (steps {now[name]['steps']})"
        return f"{label} has checkpointed results and {what} differs from the interrupted run's"
    return None
