"""Training of the XRD classifier with crystal's training engine (:func:`crystal_train.engine.fit_model`).

``python -m crystal_xrdcnn.train --data runs/xrdcnn/train.pt --out runs/xrdcnn/model.pt``

Patterns are simulated **on the fly** from the structures of each training batch with the
``xrd`` representation and :data:`TRAIN_AUGMENT` (a new random augmentation at every step:
peak shifts, lattice strain, width, intensity jitter, preferred orientation, second phases,
background and noise), so the network never sees the same pattern twice.  Validation uses
patterns simulated once with a fixed seed.  The split is by structure (seeded).

With a ``run_dir`` the run writes what every crystal trainer writes (:mod:`crystal_train.writers`):
``metrics.csv``, ``model-card.md``, ``summary.json``, ``predictions.csv`` (true and predicted
class of every head for each held-out pattern), ``parity.png`` (a confusion matrix per head)
and ``failures.csv``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from crystal.batch import CrystalBatch
from crystal_train.writers import ParityPanel, RunReport, machine_name, write_run
from crystal_xrd import XRDConfig, simulate
from crystal_xrdcnn.labels import HEADS, targets_from_space_groups
from crystal_xrdcnn.model import XRDCNN, NetConfig

__all__ = ["TRAIN_AUGMENT", "PatternData", "fit", "main", "simulate_targets"]

#: augmentation of training (and validation) patterns; see crystal_xrd.XRDAugment
TRAIN_AUGMENT: dict[str, Any] = {
    "shift": 0.1,
    "strain": 0.01,
    "intensity_jitter": 0.15,
    "fwhm_range": (0.05, 0.3),
    "preferred_orientation": 0.3,
    "mix_probability": 0.2,
    "mix_fraction": 0.25,
    "background": 0.1,
    "noise": 0.01,
}


def _targets(batch: CrystalBatch) -> tuple[torch.Tensor, ...]:
    t = targets_from_space_groups(batch.crystal_properties["space_group"])
    return tuple(t[h] for h in HEADS)


class PatternData:
    """Structures whose patterns are simulated (augmented) at every ``select``."""

    def __init__(self, batch: CrystalBatch, xrd: XRDConfig, seed: int = 0) -> None:
        self.batch = batch
        self.xrd = xrd
        self.seed = seed
        self.targets = _targets(batch)
        self._calls = 0

    def __len__(self) -> int:
        return len(self.batch)

    def to(self, device: torch.device | str) -> PatternData:
        out = PatternData(self.batch.to(device), self.xrd, self.seed)
        out.targets = tuple(t.to(device) for t in self.targets)
        return out

    def select(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self._calls += 1
        sub = self.batch.select(index)
        patterns = simulate(sub, self.xrd, seed=self.seed * 1_000_003 + self._calls).patterns.float()
        return (patterns, *(t[index] for t in self.targets))


def simulate_targets(batch: CrystalBatch, xrd: XRDConfig, seed: int = 0, chunk: int = 256) -> tuple[torch.Tensor, ...]:
    """Fixed patterns (N, L) float32 and the (N,) targets of every head."""
    parts = [
        simulate(batch.select(torch.arange(i, min(i + chunk, len(batch)))), xrd, seed=seed + i).patterns.float()
        for i in range(0, len(batch), chunk)
    ]
    return (torch.cat(parts), *_targets(batch))


def fit(
    batch: CrystalBatch,
    *,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 1e-3,
    val_fraction: float = 0.1,
    seed: int = 0,
    net_config: NetConfig | None = None,
    augment: dict[str, Any] | None = None,
    grid: dict[str, Any] | None = None,
    run_dir: Path | None = None,
    quiet: bool = True,
) -> tuple[XRDCNN, dict[str, Any], list[dict[str, float]]]:
    """Train on a labelled batch; returns the network, the xrd grid config and the history.

    ``grid`` overrides the xrd representation's wavelength / 2θ range / step (default: its defaults).
    """
    from crystal_train import FitConfig, fit_model

    # peaks below 0.1 % of the strongest are dropped in training (invisible under the 1 % noise; saves time)
    xrd = XRDConfig(augment=TRAIN_AUGMENT if augment is None else augment, min_intensity=1e-3, **(grid or {}))
    net_config = net_config or NetConfig(input_points=xrd.num_points)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(batch), generator=g)
    n_val = round(val_fraction * len(batch))
    train = batch.select(perm[n_val:]).to(dtype=torch.float32)
    val = batch.select(perm[:n_val]).to(dtype=torch.float32) if n_val else None
    torch.manual_seed(seed)
    net = XRDCNN(net_config)
    cfg = FitConfig(
        max_epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        optimizer="adamw",
        weight_decay=1e-4,
        scheduler="cosine",
        warmup_epochs=1 if epochs > 2 else 0,
        seed=seed,
        accelerator="cpu" if not torch.cuda.is_available() else "auto",
        monitor="val_loss" if val is not None else "train_loss",
    )
    val_data = simulate_targets(val, xrd, seed=10_000 + seed) if val is not None else None
    result = fit_model(
        net, PatternData(train, xrd, seed), val_data, cfg, run_dir=run_dir, quiet=quiet, run_name="xrdcnn"
    )
    grid = {k: getattr(xrd, k) for k in ("wavelength", "two_theta_min", "two_theta_max", "step")}
    if run_dir is not None:
        held_out = (val, val_data) if val is not None and val_data is not None else None
        write_run(Path(run_dir), _report(result, cfg, net_config, len(train), held_out))
    return result.net, grid, result.history


def _report(
    result: Any, cfg: Any, net_config: NetConfig, n_train: int, held_out: tuple[CrystalBatch, Any] | None
) -> RunReport:
    """Held-out predictions per head (confusion matrices) for the run writers."""
    net = result.net
    header, rows, panels, metrics = ["split", "id"], [], [], {}
    if held_out is not None:
        batch, (signals, *truth) = held_out
        with torch.no_grad():
            logits = net.eval()(signals)
        preds = {h: logits[h].argmax(1) for h in HEADS}
        header += [f"{h}_{k}" for h in HEADS for k in ("true", "pred")]
        for i, ident in enumerate(batch.ids):
            rows.append(
                ["val", ident, *(int(x) for h, t in zip(HEADS, truth, strict=True) for x in (t[i], preds[h][i]))]
            )
        metrics["val"] = {
            f"{h}_accuracy": float((preds[h] == t).float().mean()) for h, t in zip(HEADS, truth, strict=True)
        }
        for h, t in zip(HEADS, truth, strict=True):
            acc = metrics["val"][f"{h}_accuracy"]
            panels.append(
                ParityPanel(h, t.tolist(), preds[h].tolist(), kind="classification", title=f"{h}: accuracy {acc:.3f}")
            )
    summary = {
        "train_size": n_train,
        "val_size": len(held_out[0]) if held_out is not None else 0,
        "epochs": len(result.history),
        "best_epoch": result.best_epoch,
        "train_seconds": round(result.seconds, 1),
        "fit": cfg.model_dump(mode="json"),
        "metrics": metrics,
        "parameters": sum(p.numel() for p in net.parameters()),
    }
    facts = [
        f"characterizer: `xrdcnn`, {summary['parameters']:,} parameters",
        f"structures: train {summary['train_size']}, val {summary['val_size']} (patterns simulated, augmented)",
        f"epochs run {summary['epochs']}, best epoch {summary['best_epoch']} by {result.monitor}",
        f"optimiser: {cfg.optimizer} lr {cfg.lr:g}, weight decay {cfg.weight_decay:g}, scheduler {cfg.scheduler} "
        f"(warm-up {cfg.warmup_epochs} epoch(s)), batch {cfg.batch_size}, seed {cfg.seed}",
        f"training time: {summary['train_seconds']:.1f} s on {machine_name()}",
    ]
    arch = json.loads(net_config.model_dump_json())
    return RunReport("xrdcnn model card", facts, metrics, summary, arch, header, rows, panels)


def main(argv: list[str] | None = None) -> int:
    from crystal_xrdcnn.characterizer import save_checkpoint
    from crystal_xrdcnn.data import load_structures

    parser = argparse.ArgumentParser(prog="python -m crystal_xrdcnn.train", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="file written by crystal_xrdcnn.make_data")
    parser.add_argument("--out", type=Path, required=True)
    # defaults: the recipe of the shipped weights xrdcnn-pyxtal230
    parser.add_argument("--epochs", type=int, default=18)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--input-pool", type=int, default=4)
    parser.add_argument(
        "--batch-norm", action=argparse.BooleanOptionalAction, default=True, help="BatchNorm after each convolution"
    )
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--channels", default="16,32,64,128", help="conv channels, comma-separated")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    batch = load_structures(args.data)
    t0 = time.perf_counter()
    xrd = XRDConfig()
    net_cfg = NetConfig(
        input_points=xrd.num_points,
        input_pool=args.input_pool,
        kernels=(21, 15, 11, 7),
        channels=tuple(int(c) for c in args.channels.split(",")),
        batch_norm=args.batch_norm,
        dropout=args.dropout,
    )
    net, grid, history = fit(
        batch,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        val_fraction=args.val_fraction,
        seed=args.seed,
        net_config=net_cfg,
        run_dir=args.out.parent / (args.out.stem + "-run"),
        quiet=False,
    )
    seconds = time.perf_counter() - t0
    best = min(history, key=lambda r: r.get("val_loss", r.get("train_loss", 0.0)))
    meta = {
        "data": str(args.data),
        "structures": len(batch),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "seconds": round(seconds, 1),
        "threads": args.threads,
        "augment": TRAIN_AUGMENT,
        "best_epoch": best,
        "parameters": sum(p.numel() for p in net.parameters()),
    }
    save_checkpoint(args.out, net, grid, meta)
    print(json.dumps({k: v for k, v in meta.items() if k != "augment"}, default=str, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
