"""Graphs per second: crystal's batched ``radius_graph`` (each backend) vs a pymatgen neighbour-list loop.

Usage: ``python benchmarks/graphs.py [--limit 1000] [--batch-size 256] [--cutoff 8.0] [--clock cpu|wall]``

Reads the Perov-5 and Carbon-24 test splits from ``../shared/data`` (relative to the
repository root). For each data set it times, in the same run, on the same structures and
interleaved (one round = every contender once; the best of ``--repeats`` rounds counts):
``Structure.get_neighbor_list(cutoff)`` per structure (pymatgen), and
``radius_graph(batch, cutoff, backend=...)`` over batches of ``--batch-size`` crystals for the
``pairs``, ``vesin`` and ``auto`` backends and with ``max_neighbors`` (``auto``), CrystalBatch
construction excluded. It checks that every backend returns the same edges and shifts, and the
same per-structure edge counts as pymatgen. ``--clock cpu`` (the default with one thread)
measures the CPU time of the calling thread, which a loaded machine disturbs much less than
wall time; everything timed runs in that thread (torch and vesin use one thread).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from crystal import CrystalBatch
from crystal.io import read_structures
from crystal.neighbors import radius_graph

ROOT = Path(__file__).resolve().parent.parent
DATASETS = {
    "Perov-5": ROOT.parent / "shared" / "data" / "perov_5" / "test.csv",
    "Carbon-24": ROOT.parent / "shared" / "data" / "carbon_24" / "test.csv",
}
BACKENDS = ("pairs", "vesin", "auto")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--cutoff", type=float, default=8.0)
    parser.add_argument("--max-neighbors", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (pymatgen's loop uses one core)")
    parser.add_argument("--repeats", type=int, default=5, help="timings are the best of this many interleaved rounds")
    parser.add_argument(
        "--clock", choices=["cpu", "wall"], default=None, help="cpu: thread CPU time (default with 1 thread); wall"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock_name = args.clock or ("cpu" if args.threads == 1 else "wall")
    if clock_name == "cpu" and args.threads != 1:
        print("error: --clock cpu measures one thread; use --threads 1 or --clock wall", file=sys.stderr)
        return 2
    clock = time.thread_time if clock_name == "cpu" else time.perf_counter
    missing = [str(p) for p in DATASETS.values() if not p.exists()]
    if missing:
        print(f"error: data set file(s) not found: {', '.join(missing)}", file=sys.stderr)
        return 1
    try:
        import vesin_torch

        vesin = f"vesin-torch {vesin_torch.__version__}"
    except Exception as exc:  # the vesin column then fails loudly below
        vesin = f"vesin-torch unavailable ({exc})"
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {vesin}, cutoff {args.cutoff} Å, max_neighbors "
        f"{args.max_neighbors}, batch {args.batch_size}, best of {args.repeats} ({clock_name} time)"
    )
    print(
        "| data set | structures | mean atoms | edges | pymatgen (structures/s) | "
        + " | ".join(f"{b} (structures/s, x pymatgen)" for b in BACKENDS)
        + f" | auto, {args.max_neighbors} nearest (x pymatgen) | same edges |"
    )
    print("|---|---|---|---|---|" + "---|" * (len(BACKENDS) + 2))
    for name, path in DATASETS.items():
        structures = read_structures(path, limit=args.limit).structures
        batches = [
            CrystalBatch.from_structures(structures[k : k + args.batch_size])
            for k in range(0, len(structures), args.batch_size)
        ]
        contenders: dict[str, Callable[[], object]] = {
            "pymatgen": lambda ss=structures: [s.get_neighbor_list(args.cutoff) for s in ss],
            **{b: (lambda bs=batches, b=b: [radius_graph(x, args.cutoff, backend=b) for x in bs]) for b in BACKENDS},
            "knn": lambda bs=batches: [radius_graph(x, args.cutoff, max_neighbors=args.max_neighbors) for x in bs],
        }
        for fn in contenders.values():  # warm-up
            fn()
        best = dict.fromkeys(contenders, float("inf"))
        for _ in range(args.repeats):
            for key, fn in contenders.items():
                t0 = clock()
                fn()
                best[key] = min(best[key], clock() - t0)

        pmg_counts = [len(s.get_neighbor_list(args.cutoff)[0]) for s in structures]
        same = True
        for b in batches:
            graphs = [radius_graph(b, args.cutoff, backend=x) for x in BACKENDS]
            same &= all(
                torch.equal(g.edge_index, graphs[0].edge_index) and torch.equal(g.shifts, graphs[0].shifts)
                for g in graphs[1:]
            )
        ours = []
        for b in batches:
            g = radius_graph(b, args.cutoff, backend="pairs")
            ours.extend(torch.bincount(b.batch[g.edge_index[0]], minlength=len(b)).tolist())
        same &= ours == pmg_counts
        n = len(structures)
        atoms = sum(len(s) for s in structures) / n
        t_pmg = best["pymatgen"]
        cells = " | ".join(f"{n / best[b]:.0f} ({t_pmg / best[b]:.2f}x)" for b in BACKENDS)
        print(
            f"| {name} | {n} | {atoms:.1f} | {sum(pmg_counts)} | {n / t_pmg:.0f} | {cells} | "
            f"{t_pmg / best['knn']:.2f}x | {'yes' if same else 'NO'} |"
        )
        if not same:
            bad = sum(a != b for a, b in zip(ours, pmg_counts))
            print(f"  mismatch: backends differ or {bad} structures differ from pymatgen", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
