"""Encoders side by side: train each on the same Perov-5 split with the same budget.

Usage::

    python benchmarks/encoders.py [--epochs 20] [--batch-size 64] [--encoders cgcnn schnet megnet alignn]
                                  [--limit N] [--output runs/bench-encoders] [--accelerator auto]

Data: ``../shared/data/perov_5`` — train on ``val.csv`` (10 % of it held out for early
stopping / best-epoch selection, seed 0), report on ``test.csv``; target ``heat_ref`` (eV
per 5-atom cell). Every encoder gets the same optimiser (AdamW, lr 1e-3, one-cycle),
batch size and number of epochs, at its paper's default architecture. Printed per encoder:
test MAE and its ratio to the baseline measured in the same run (predicting the training
mean), parameters, training seconds per epoch, and inference structures/s on the test set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "perov_5"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--encoders", nargs="+", default=["cgcnn", "schnet", "megnet", "alignn"])
    parser.add_argument("--limit", type=int, default=None, help="use at most this many structures per file")
    parser.add_argument("--output", default=str(ROOT / "runs" / "bench-encoders"))
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="ENCODER.FIELD=VALUE",
        help="change one encoder's architecture from its paper default (reported in the table), e.g. alignn.hidden_features=64",
    )
    args = parser.parse_args()
    overrides: dict[str, dict[str, object]] = {}
    for item in args.model:
        key, _, raw = item.partition("=")
        name, _, field = key.partition(".")
        overrides.setdefault(name, {})[field] = json.loads(raw) if raw[:1].isdigit() or raw[:1] in "[{-" else raw
    if not (DATA / "val.csv").is_file():
        print(f"error: Perov-5 not found at {DATA} (../shared/data/perov_5)", file=sys.stderr)
        return 1

    from crystal.targets import TargetSpec
    from crystal_train import evaluate, read_labelled, train

    target = TargetSpec(name="heat_ref", unit="eV")
    device = "cuda" if args.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available() else "cpu"
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), device {device}; Perov-5 heat_ref, train on val.csv "
        f"(10% held out, seed 0), test on test.csv; {args.epochs} epochs, batch {args.batch_size}, AdamW lr {args.lr:g} one-cycle"
    )
    test = read_labelled([DATA / "test.csv"], [target], limit=args.limit).batch
    rows = []
    for name in args.encoders:
        out = Path(args.output) / name
        if (out / "summary.json").is_file():
            print(f"# {name}: reusing {out}", file=sys.stderr)
            summary = json.loads((out / "summary.json").read_text())
            from crystal import load

            enc = load("encoder", name, checkpoint=out / "model.pt", device=device)
        else:
            result = train(
                {
                    "encoder": name,
                    "model": overrides.get(name, {}),
                    "targets": [target.model_dump()],
                    "data": {"train": [str(DATA / "val.csv")], "test": [str(DATA / "test.csv")], "limit": args.limit},
                    "optim": {"optimizer": "adamw", "lr": args.lr, "scheduler": "onecycle"},
                    "trainer": {
                        "max_epochs": args.epochs,
                        "batch_size": args.batch_size,
                        "accelerator": args.accelerator,
                    },
                    "output": str(out),
                },
                quiet=False,
            )
            summary = json.loads((out / "summary.json").read_text())
            enc = result.encoder
        enc.net.to(device)
        enc.device = torch.device(device)
        evaluate(enc, test.select(list(range(min(64, len(test))))), batch_size=256)  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        _, metrics = evaluate(enc, test, batch_size=256)
        if device == "cuda":
            torch.cuda.synchronize()
        infer = len(test) / (time.perf_counter() - t0)
        label = name + "".join(f", {k}={v}" for k, v in overrides.get(name, {}).items())
        rows.append((label, summary, metrics["heat_ref_mae"], infer))

    train_mean = float(
        read_labelled([DATA / "val.csv"], [target], limit=args.limit).batch.crystal_properties["heat_ref"].mean()
    )
    baseline = float((test.crystal_properties["heat_ref"] - train_mean).abs().mean())
    print()
    print(
        "| encoder | test MAE (eV) | MAE / baseline | parameters | train s/epoch | epochs (best) | inference structures/s |"
    )
    print("|---|---|---|---|---|---|---|")
    print(f"| predict training mean (baseline) | {baseline:.4f} | 1.00 | 0 | – | – | – |")
    for name, summary, mae, infer in rows:
        print(
            f"| {name} | {mae:.4f} | {mae / baseline:.3f} | {summary['parameters']:,} | {summary['time_per_epoch_s']:.1f} | "
            f"{summary['epochs']} ({summary['best_epoch']}) | {infer:.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
