"""XRD patterns/s with torch threads 1 vs 2 against pymatgen's XRDCalculator, same structures, same run.

Why ``--threads`` / ``CRYSTAL_NUM_THREADS`` and the idle-cores default exist (issue 15): on a
loaded 2-core box, two torch threads thrash. Structures: the first N/2 Perov-5 and N/2
Carbon-24 test structures of ``../shared/data``; CuKa, 2θ 5–90°, step 0.02°.

    python benchmarks/xrd_threads.py [--n 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="structures (half Perov-5, half Carbon-24)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"needs the reference data at {SHARED}")
    warnings.filterwarnings("ignore")
    from pymatgen.analysis.diffraction.xrd import XRDCalculator

    from crystal import CrystalBatch
    from crystal.io import read_structures
    from crystal_xrd import simulate

    perov = read_structures(SHARED / "perov_5" / "test.csv", limit=args.n // 2)
    carbon = read_structures(SHARED / "carbon_24" / "test.csv", limit=args.n - args.n // 2)
    structures = [*perov.structures, *carbon.structures]
    ids = [*perov.ids, *carbon.ids]
    calc = XRDCalculator("CuKa")

    def pymatgen_rate() -> float:
        t = time.perf_counter()
        for s in structures:
            calc.get_pattern(s, two_theta_range=(5, 90))
        return len(structures) / (time.perf_counter() - t)

    def crystal_rate(threads: int, dtype: torch.dtype) -> float:
        torch.set_num_threads(threads)
        bs = args.batch_size
        batches = [
            CrystalBatch.from_structures(structures[i : i + bs], ids[i : i + bs], dtype=dtype)
            for i in range(0, len(structures), bs)
        ]
        t = time.perf_counter()
        for b in batches:
            simulate(b, two_theta_min=5, two_theta_max=90, step=0.02)
        return len(structures) / (time.perf_counter() - t)

    print(f"{len(structures)} structures, load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores")
    crystal_rate(1, torch.float64)  # warm-up
    print("repeat | pymatgen | crystal 1 thread | ratio | crystal 2 threads | ratio   (patterns/s, float64)")
    for r in range(args.repeats):
        p = pymatgen_rate()
        one = crystal_rate(1, torch.float64)
        two = crystal_rate(2, torch.float64)
        print(f"{r + 1:>6} | {p:8.1f} | {one:16.1f} | {one / p:4.1f}x | {two:17.1f} | {two / p:4.2f}x")


if __name__ == "__main__":
    main()
