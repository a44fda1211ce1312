"""Checkpoints of a run (for ``--resume``): batches, failures and drops, saved atomically.

Each checkpoint is a ``torch.save`` of plain tensors, strings and lists, loaded back with
``weights_only=True``; per-crystal ``info`` travels as JSON.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from crystal.batch import CrystalBatch
from crystal.io import Failure, chmod_like_open, json_default

__all__ = ["Dropped", "StageOutput", "load_checkpoint", "save_checkpoint"]


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
