"""Train a MatterGen model with crystal's training engine (:func:`crystal_train.fit_model`).

Example (the recipe of the shipped ``mattergen-perov5-demo`` weights, see its model card)::

    python -m crystal_mattergen.train --data ../shared/data/perov_5/val.csv --out runs/mattergen-perov5 \\
        --hidden-dim 64 --num-blocks 2 --cutoff 7 --max-neighbors 20 --epochs 30 --max-minutes 20

Data as the reference's pipeline: each structure Niggli-reduced, its lattice replaced by the
symmetric one of its polar decomposition (the reference's ``symmetrize_lattice`` transform;
fractional coordinates unchanged), coordinates wrapped to [0, 1). The lattice prior's density
``ρ`` is the training set's mean atomic density (the reference's ``average_density``). Loss:
the reference's ``MaterialsLoss`` (:meth:`crystal_mattergen.diffusion.Corruption.losses`).
A fraction ``--val-fraction`` (seeded) is held out for model selection.

Writes ``model.pt`` (:mod:`crystal_mattergen.model`) and the run artefacts every crystal trainer
writes (``metrics.csv``, ``model-card.md``, ``summary.json``, ``predictions.csv``) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crystal.batch import CrystalBatch
from crystal.errors import ConfigError, StructureError
from crystal.weights import sha256sum
from crystal_mattergen.diffusion import DiffusionConfig, polar_symmetric
from crystal_mattergen.model import MatterGenModel, save_model
from crystal_train import FitConfig, fit_model
from crystal_train.engine import item_losses
from crystal_train.writers import RunReport, machine_name, write_run

__all__ = ["load_training_data", "main", "prepare_batch", "train"]


def prepare_batch(structures: list, ids: list[str] | None = None) -> CrystalBatch:  # type: ignore[type-arg]
    """Niggli-reduce, symmetrise the lattice (polar decomposition), wrap; float32 on the CPU."""
    from pymatgen.core import Structure

    if not structures:
        raise ConfigError("mattergen: no structures to train on")
    canon = []
    for k, s in enumerate(structures):
        if not s.is_ordered or len(s) == 0:
            raise StructureError(f"mattergen: structure {ids[k] if ids else k} is disordered or empty")
        r = s.get_reduced_structure("niggli")
        frac = np.mod(r.frac_coords, 1.0)
        frac[frac >= 1.0] = 0.0
        canon.append(Structure(r.lattice, r.species, frac, coords_are_cartesian=False))
    batch = CrystalBatch.from_structures(canon, ids, dtype=torch.float64)
    if int(batch.atomic_numbers.max()) > 100:
        raise StructureError("mattergen: atomic numbers above 100 are not supported")
    return batch.with_positions(batch.frac_coords, polar_symmetric(batch.lattices)).to(dtype=torch.float32)


def load_training_data(path: str | Path, limit: int | None = None) -> CrystalBatch:
    """Read a CDVAE-style CSV (``cif`` column) or any file :func:`crystal.io.read_structures` reads."""
    from crystal.io import read_structures

    res = read_structures(Path(path), limit=limit)
    if res.failures:
        raise StructureError(f"mattergen: {len(res.failures)} unreadable entries in {path}, first: {res.failures[0]}")
    return prepare_batch(res.structures, res.ids)


def average_density(batch: CrystalBatch) -> float:
    """Mean number of atoms per Å³ over the crystals (the lattice prior's ``limit_density``)."""
    return float((batch.num_atoms.double() / batch.volumes.double().abs()).mean())


def train(
    data: str | Path,
    out: str | Path,
    denoiser_config: dict[str, Any],
    fit: FitConfig,
    *,
    val_fraction: float = 0.1,
    limit: int | None = None,
    quiet: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Train on ``data`` and write the run folder; returns the summary dict."""
    from crystal_mattergen.denoiser import DenoiserConfig, MatterGenDenoiser

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    batch = load_training_data(data, limit=limit)
    load_s = time.perf_counter() - t0
    g = torch.Generator().manual_seed(fit.seed)
    perm = torch.randperm(len(batch), generator=g)
    n_val = round(val_fraction * len(batch))
    val = batch.select(perm[:n_val]) if n_val else None
    train_set = batch.select(perm[n_val:])
    diffusion = DiffusionConfig(limit_density=average_density(train_set))
    torch.manual_seed(fit.seed)
    denoiser = MatterGenDenoiser(DenoiserConfig(**denoiser_config))
    model = MatterGenModel(denoiser, diffusion, kind="gemnet")
    model.record_training_set(train_set.num_atoms)
    result = fit_model(model, train_set, val, fit, run_dir=out, quiet=quiet, run_name="mattergen", resume=resume)
    model = result.net  # type: ignore[assignment]
    last = result.history[-1] if result.history else {}
    best = next((r for r in result.history if r.get("epoch") == result.best_epoch), last)
    meta = {
        "data": str(data),
        "train_size": len(train_set),
        "val_size": n_val,
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "best_val_loss": result.best_score,
        "train_seconds": round(result.seconds, 1),
        "limit_density": diffusion.limit_density,
        "fit": fit.model_dump(mode="json"),
    }
    path = save_model(model, out / "model.pt", meta)
    summary = {
        **meta,
        "load_seconds": round(load_s, 1),
        "parameters": sum(p.numel() for p in model.denoiser.parameters()),
        "sha256": sha256sum(path),
        "size_bytes": path.stat().st_size,
        "best_epoch_metrics": {k: v for k, v in best.items() if isinstance(v, int | float)},
        "denoiser_config": json.loads(DenoiserConfig(**denoiser_config).model_dump_json()),
        "machine": machine_name("cuda" if fit.accelerator in ("gpu", "cuda") else "cpu"),
    }
    write_run(out, _report(model, summary, train_set, val, fit))
    return summary


def _report(model: MatterGenModel, summary: dict[str, Any], train_set: Any, val: Any, fit: FitConfig) -> RunReport:
    split, items = ("val", val) if val is not None else ("train", train_set)
    torch.manual_seed(fit.seed)  # training_loss draws the diffusion time and noise
    losses = item_losses(model, items)
    header = ["split", "id", "num_atoms", *losses[0]] if losses else ["split", "id", "num_atoms"]
    rows = [[split, items.ids[i], int(items.num_atoms[i]), *row.values()] for i, row in enumerate(losses)]
    best = summary["best_epoch_metrics"]
    metrics = {s: {k[len(s) + 1 :]: v for k, v in best.items() if k.startswith(f"{s}_")} for s in ("train", "val")}
    facts = [
        f"generator: `mattergen` (unconditional), GemNet-T denoiser, {summary['parameters']:,} parameters",
        f"training data: {summary['data']}; train {summary['train_size']}, val {summary['val_size']}",
        f"lattice prior density: {summary['limit_density']:.5f} atoms/Å³ (training-set mean)",
        f"epochs run {summary['epochs_run']}, best epoch {summary['best_epoch']} (val loss {summary['best_val_loss']:.4g})",
        f"optimiser: {fit.optimizer} lr {fit.lr:g}, scheduler {fit.scheduler}, batch {fit.batch_size}, seed {fit.seed}",
        f"training time: {summary['train_seconds']:.1f} s on {summary['machine']}",
        f"file: `model.pt`, sha256 `{summary['sha256']}`",
        f"predictions.csv: denoising loss of each {split} structure (one random time each)",
    ]
    return RunReport("mattergen model card", facts, metrics, summary, summary["denoiser_config"], header, rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m crystal_mattergen.train", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="CDVAE-style CSV (cif column) or any structure file/folder")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--limit", type=int, default=None, help="use only the first N structures")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--hidden-dim", type=int, default=512, help="all GemNet widths (paper: 512)")
    p.add_argument("--num-blocks", type=int, default=4)
    p.add_argument("--num-radial", type=int, default=128)
    p.add_argument("--cutoff", type=float, default=7.0)
    p.add_argument("--max-neighbors", type=int, default=50)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--max-minutes", type=float, default=None, help="wall-clock budget of the fit (minutes)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4, help="paper: Adam 1e-4")
    p.add_argument("--scheduler", choices=["none", "cosine", "onecycle", "plateau"], default="plateau")
    p.add_argument("--gradient-clip", type=float, default=0.5, help="paper config: 0.5")
    p.add_argument("--ema-decay", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the run in --out (checkpoints/last.ckpt)")
    a = p.parse_args(argv)
    h = a.hidden_dim
    denoiser_config = {
        "hidden_dim": h,
        "latent_dim": h,
        "atom_embedding_size": h,
        "emb_size_atom": h,
        "emb_size_edge": h,
        "num_blocks": a.num_blocks,
        "num_radial": a.num_radial,
        "cutoff": a.cutoff,
        "max_neighbors": a.max_neighbors,
    }
    fit = FitConfig(
        max_epochs=a.epochs,
        batch_size=a.batch_size,
        optimizer="adam",
        lr=a.lr,
        scheduler=a.scheduler,
        gradient_clip=a.gradient_clip,
        ema_decay=a.ema_decay,
        seed=a.seed,
        accelerator="cpu" if not torch.cuda.is_available() else "auto",
        max_minutes=a.max_minutes,
    )
    summary = train(a.data, a.out, denoiser_config, fit, val_fraction=a.val_fraction, limit=a.limit, resume=a.resume)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
