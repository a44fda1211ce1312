"""Train DiffCSP with crystal's training engine (:func:`crystal_train.engine.fit_model`).

Example (the recipe of the shipped ``diffcsp-perov5-csp`` weights)::

    python -m crystal_diffcsp.train --data ../shared/data/perov_5/val.csv --mode csp \\
        --hidden-dim 128 --num-layers 4 --num-freqs 128 --epochs 300 --out runs/diffcsp-perov5

Writes ``model.pt`` (a :mod:`crystal_diffcsp.checkpoint` file) and the artefacts every crystal
trainer writes (:mod:`crystal_train.writers`: ``metrics.csv``, ``model-card.md``, ``summary.json``,
``predictions.csv`` with the denoising loss of each held-out structure, ``failures.csv``) into ``--out``. A fraction ``--val-fraction`` of the data (seeded) is held out
for model selection (the epoch with the lowest validation loss is kept).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from crystal.weights import sha256sum
from crystal_diffcsp.checkpoint import save_checkpoint
from crystal_diffcsp.data import load_training_data
from crystal_diffcsp.diffusion import DiffCSP, DiffCSPModelConfig
from crystal_train import FitConfig, fit_model
from crystal_train.engine import item_losses
from crystal_train.writers import RunReport, machine_name, write_run

__all__ = ["main", "train"]


def train(
    data: str | Path,
    out: str | Path,
    model_config: DiffCSPModelConfig,
    fit: FitConfig,
    *,
    val_fraction: float = 0.1,
    limit: int | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Train on ``data`` and write the run folder; returns the summary dict."""
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
    elements = tuple(sorted(set(train_set.atomic_numbers.tolist())))
    config = model_config.model_copy(update={"elements": elements})
    torch.manual_seed(fit.seed)
    model = DiffCSP(config)
    model.record_training_set(train_set.num_atoms)
    result = fit_model(model, train_set, val, fit, run_dir=out, quiet=quiet, run_name="diffcsp")
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
        "fit": fit.model_dump(mode="json"),
    }
    path = save_checkpoint(model, out / "model.pt", meta)
    summary = {
        **meta,
        "load_seconds": round(load_s, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "sha256": sha256sum(path),
        "size_bytes": path.stat().st_size,
        "best_epoch_metrics": {k: v for k, v in best.items() if isinstance(v, int | float)},
        "model_config": json.loads(config.model_dump_json()),
        "machine": machine_name("cuda" if fit.accelerator in ("gpu", "cuda") else "cpu"),
    }
    write_run(out, _report(model, summary, config, train_set, val, fit))
    return summary


def _report(
    model: DiffCSP, summary: dict[str, Any], config: DiffCSPModelConfig, train_set: Any, val: Any, fit: FitConfig
) -> RunReport:
    """The run writers' report: metrics at the best epoch, per-structure held-out denoising loss."""
    split, items = ("val", val) if val is not None else ("train", train_set)
    torch.manual_seed(fit.seed)  # training_loss draws the diffusion time step
    losses = item_losses(model, items)
    header = ["split", "id", "num_atoms", *losses[0]] if losses else ["split", "id", "num_atoms"]
    rows = [[split, items.ids[i], int(items.num_atoms[i]), *row.values()] for i, row in enumerate(losses)]
    best = summary["best_epoch_metrics"]
    metrics = {s: {k[len(s) + 1 :]: v for k, v in best.items() if k.startswith(f"{s}_")} for s in ("train", "val")}
    facts = [
        f"generator: `diffcsp` ({config.mode}), {summary['parameters']:,} parameters",
        f"training data: {summary['data']}; train {summary['train_size']}, val {summary['val_size']}",
        f"epochs run {summary['epochs_run']}, best epoch {summary['best_epoch']} (val loss {summary['best_val_loss']:.4g})",
        f"optimiser: {fit.optimizer} lr {fit.lr:g}, scheduler {fit.scheduler}, batch {fit.batch_size}, seed {fit.seed}",
        f"training time: {summary['train_seconds']:.1f} s on {summary['machine']}",
        f"file: `model.pt`, sha256 `{summary['sha256']}`",
        f"predictions.csv: denoising loss of each {split} structure (one random time step each)",
    ]
    return RunReport("diffcsp model card", facts, metrics, summary, summary["model_config"], header, rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m crystal_diffcsp.train", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="CDVAE-style CSV (cif column) or any structure file/folder")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--mode", choices=["csp", "ab_initio"], default="csp")
    p.add_argument("--limit", type=int, default=None, help="use only the first N structures")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--hidden-dim", type=int, default=512)
    p.add_argument("--num-layers", type=int, default=6)
    p.add_argument("--num-freqs", type=int, default=128)
    p.add_argument("--time-dim", type=int, default=256)
    p.add_argument("--timesteps", type=int, default=1000)
    p.add_argument("--step-lr", type=float, default=5e-7, help="recommended corrector step stored with the weights")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--scheduler", choices=["none", "cosine", "onecycle", "plateau"], default="cosine")
    p.add_argument("--gradient-clip", type=float, default=None)
    p.add_argument("--ema-decay", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    model_config = DiffCSPModelConfig(
        mode=a.mode,
        hidden_dim=a.hidden_dim,
        num_layers=a.num_layers,
        num_freqs=a.num_freqs,
        time_dim=a.time_dim,
        timesteps=a.timesteps,
        step_lr=a.step_lr,
    )
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
    )
    summary = train(a.data, a.out, model_config, fit, val_fraction=a.val_fraction, limit=a.limit)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
