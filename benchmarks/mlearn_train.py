"""Train a potential per element on the mlearn benchmark (Zuo et al. 2020) and compare with GAP/MTP.

Usage::

    python benchmarks/mlearn_train.py [--potential mace] [--elements Ni Cu Li Mo Si Ge]
        [--epochs 200] [--config hidden_irreps='"32x0e + 32x1o"' --config max_ell=2] [--threads 1]
        [--output runs/mlearn] [--minutes 20]

For each element: ``train.xyz`` (official split) is split 90/10 into train/validation
(seed 0) for model selection; the model is trained with crystal's potential engine
(``crystal_train.potential.train_potential``: E0s by least squares, weighted
energy/force loss, EMA, plateau LR) and evaluated on the official ``test.xyz``. Printed
per element as soon as it finishes: test energy MAE (meV/atom), force MAE (eV/Å), the
published GAP and MTP test MAEs (Zuo et al., J. Phys. Chem. A 124, 731 (2020)), epochs and
training time on this machine. ``--minutes`` caps each element's training by stopping
early (the schedule is the number of epochs).
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
from mlearn_zeroshot import PUBLISHED  # the script's folder is on sys.path when it is run

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "mlearn"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--potential", default="mace")
    parser.add_argument("--elements", nargs="+", default=list(PUBLISHED))
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--energy-weight", type=float, default=1.0)
    parser.add_argument("--forces-weight", type=float, default=100.0)
    parser.add_argument("--config", action="append", default=[], help="model KEY=JSON value (repeatable)")
    parser.add_argument("--fit", action="append", default=[], help="fit KEY=JSON value (repeatable)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=None, help="training wall-time cap per element")
    parser.add_argument("--output", default="runs/mlearn")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"error: mlearn data not found at {DATA} (../shared/data/mlearn)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    from crystal_train.potential import train_potential

    model, fit = {}, {}
    for items, table in ((args.config, model), (args.fit, fit)):
        for item in items:
            key, _, value = item.partition("=")
            table[key] = json.loads(value)
    print(
        f"# {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} ({args.threads} threads); "
        f"{args.potential} {json.dumps(model)} {json.dumps(fit)}; {args.epochs} epochs max, batch {args.batch_size}, lr {args.lr}, "
        f"loss weights energy {args.energy_weight} forces {args.forces_weight}, {args.minutes} min cap"
    )
    print()
    print("| element | energy MAE (meV/atom) | force MAE (eV/Å) | GAP | MTP | epochs | train time (s) | params |")
    print("|---|---|---|---|---|---|---|---|")
    for el in args.elements:
        out = Path(args.output) / f"{args.potential}-{el}-{int(time.time())}"
        result = train_potential(
            {
                "potential": args.potential,
                "model": model,
                "data": {"train": [str(DATA / el / "train.xyz")], "test": [str(DATA / el / "test.xyz")]},
                "loss": {"energy": args.energy_weight, "forces": args.forces_weight},
                "fit": {
                    "max_epochs": args.epochs,
                    "batch_size": args.batch_size,
                    "lr": args.lr,
                    "max_minutes": args.minutes,
                    **fit,
                },
                "device": args.device,
                "output": str(out),
            },
            quiet=True,
        )
        m = result.metrics["test"]
        gap, mtp = PUBLISHED[el]["GAP"], PUBLISHED[el]["MTP"]
        params = sum(p.numel() for p in result.potential.net.model.parameters())
        print(
            f"| {el} | {m['energy_mae_mev_per_atom']:.2f} | {m['forces_mae']:.3f} | {gap[0]} / {gap[1]} | "
            f"{mtp[0]} / {mtp[1]} | {result.epochs} | {result.train_time_s:.0f} | {params} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
