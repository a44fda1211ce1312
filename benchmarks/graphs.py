"""Graphs per second: crystal's batched ``radius_graph`` vs a pymatgen neighbour-list loop.

Usage: ``python benchmarks/graphs.py [--limit 1000] [--batch-size 256] [--cutoff 8.0]``

Reads the Perov-5 and Carbon-24 test splits from ``../shared/data`` (relative to the
repository root). For each data set it times, in the same run and on the same structures,
``radius_graph(batch, cutoff, max_neighbors=12)`` over batches of ``--batch-size`` crystals
(CrystalBatch construction excluded) and ``Structure.get_neighbor_list(cutoff)`` per
structure, and checks that edge counts agree without ``max_neighbors``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--cutoff", type=float, default=8.0)
    parser.add_argument("--max-neighbors", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (pymatgen's loop uses one core)")
    parser.add_argument("--repeats", type=int, default=3, help="timings are the best of this many runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    missing = [str(p) for p in DATASETS.values() if not p.exists()]
    if missing:
        print(f"error: data set file(s) not found: {', '.join(missing)}", file=sys.stderr)
        return 1
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), cutoff {args.cutoff} Å, max_neighbors {args.max_neighbors}, "
        f"batch {args.batch_size}"
    )
    print(
        "| data set | structures | mean atoms | crystal, all within cutoff (structures/s, x pymatgen) "
        f"| crystal, {args.max_neighbors} nearest (structures/s, x pymatgen) | pymatgen loop (structures/s) | edges equal |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, path in DATASETS.items():
        structures = read_structures(path, limit=args.limit).structures
        batches = [
            CrystalBatch.from_structures(structures[k : k + args.batch_size])
            for k in range(0, len(structures), args.batch_size)
        ]
        radius_graph(batches[0], args.cutoff, max_neighbors=args.max_neighbors)  # warm-up

        def best(fn) -> float:
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return min(times)

        t_full = best(lambda bs=batches: [radius_graph(b, args.cutoff) for b in bs])
        t_knn = best(lambda bs=batches: [radius_graph(b, args.cutoff, max_neighbors=args.max_neighbors) for b in bs])
        t_pmg = best(lambda ss=structures: [s.get_neighbor_list(args.cutoff) for s in ss])
        pmg_counts = [len(s.get_neighbor_list(args.cutoff)[0]) for s in structures]

        ours = []
        for b in batches:
            g = radius_graph(b, args.cutoff)
            ours.extend(torch.bincount(b.batch[g.edge_index[0]], minlength=len(b)).tolist())
        equal = ours == pmg_counts
        n = len(structures)
        atoms = sum(len(s) for s in structures) / n
        print(
            f"| {name} | {n} | {atoms:.1f} | {n / t_full:.0f} ({t_pmg / t_full:.2f}x) | "
            f"{n / t_knn:.0f} ({t_pmg / t_knn:.2f}x) | {n / t_pmg:.0f} | {'yes' if equal else 'NO'} |"
        )
        if not equal:
            bad = sum(a != b for a, b in zip(ours, pmg_counts))
            print(f"  mismatch in {bad} structures", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
