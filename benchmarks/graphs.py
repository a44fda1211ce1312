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
    args = parser.parse_args()
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
        "| data set | structures | mean atoms | crystal (structures/s) | pymatgen (structures/s) | speed-up | edges equal |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, path in DATASETS.items():
        structures = read_structures(path, limit=args.limit).structures
        batches = [
            CrystalBatch.from_structures(structures[k : k + args.batch_size])
            for k in range(0, len(structures), args.batch_size)
        ]
        radius_graph(batches[0], args.cutoff, max_neighbors=args.max_neighbors)  # warm-up
        t0 = time.perf_counter()
        for b in batches:
            radius_graph(b, args.cutoff, max_neighbors=args.max_neighbors)
        t_crystal = time.perf_counter() - t0

        t0 = time.perf_counter()
        pmg_counts = [len(s.get_neighbor_list(args.cutoff)[0]) for s in structures]
        t_pmg = time.perf_counter() - t0

        ours = []
        for b in batches:
            g = radius_graph(b, args.cutoff)
            ours.extend(torch.bincount(b.batch[g.edge_index[0]], minlength=len(b)).tolist())
        equal = ours == pmg_counts
        n = len(structures)
        atoms = sum(len(s) for s in structures) / n
        print(
            f"| {name} | {n} | {atoms:.1f} | {n / t_crystal:.0f} | {n / t_pmg:.0f} | "
            f"{t_pmg / t_crystal:.1f}x | {'yes' if equal else 'NO'} |"
        )
        if not equal:
            bad = sum(a != b for a, b in zip(ours, pmg_counts))
            print(f"  mismatch in {bad} structures", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
