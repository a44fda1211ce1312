"""Train DiffCSP with crystal's shared loop (:func:`crystal_train.loop.fit_model`).

Example (the recipe of the shipped ``diffcsp-perov5-csp`` weights)::

    python -m crystal_diffcsp.train --data ../shared/data/perov_5/val.csv --mode csp \\
        --hidden-dim 128 --num-layers 4 --num-freqs 128 --epochs 300 --out runs/diffcsp-perov5

Writes ``model.pt`` (a :mod:`crystal_diffcsp.checkpoint` file), ``metrics.csv``, ``card.md`` and
``summary.json`` into ``--out``. A fraction ``--val-fraction`` of the data (seeded) is held out
for model selection (the epoch with the lowest validation loss is kept).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from crystal_train.loop import FitConfig, fit_model
from crystal.weights import sha256sum
from crystal_diffcsp.checkpoint import save_checkpoint
from crystal_diffcsp.data import load_training_data
from crystal_diffcsp.diffusion import DiffCSP, DiffCSPModelConfig

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
    result = fit_model(model, train_set, val, fit, run_dir=out, quiet=quiet)
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
        "fit": fit.model_dump(),
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
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


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
