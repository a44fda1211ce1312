"""Powder-XRD patterns per second: crystal's batched simulator vs pymatgen's XRDCalculator.

Usage: ``python benchmarks/xrd.py [--limit 300] [--batch-size 128] [--device cpu] [--dtype float32]``

For each data set (Perov-5 and Carbon-24 test splits from ``../shared/data``, plus the
JARVIS sample POSCARs) it times, in the same run and on the same structures:

* crystal: ``simulate(batch, two_theta 0-90°, CuKa)`` → peaks *and* the broadened pattern
  on a 0.02° grid (4501 points), in batches of ``--batch-size`` (CrystalBatch construction
  excluded; best of ``--repeats``);
* pymatgen: ``XRDCalculator().get_pattern(structure)`` (peaks only, no broadening) in a loop.

It also reports the worst peak-position and relative-intensity deviation between the two
(peaks ≥ 0.5 % of the strongest, first 50 structures, float64), as a sanity check that the
same thing is computed (pymatgen's peaks re-merged at crystal's 1e-4° tolerance).
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
from crystal_xrd import simulate

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
DATASETS = {
    "Perov-5 test": SHARED / "perov_5" / "test.csv",
    "Carbon-24 test": SHARED / "carbon_24" / "test.csv",
    "JARVIS sample": SHARED / "jarvis_sample",
}


def _load(path: Path, limit: int) -> list:
    if path.is_dir():
        from pymatgen.core import Structure

        return [Structure.from_file(f) for f in sorted(path.glob("POSCAR-*"))[:limit]]
    return list(read_structures(path, limit=limit).structures)


def _pymatgen_merged(calc, structure) -> tuple[list[float], list[float]]:  # type: ignore[no-untyped-def]
    """pymatgen's peaks re-merged at crystal's 1e-4° tolerance and rescaled to 100 (pymatgen bins
    at 1e-5°, which splits symmetry-equivalent reflections of cells distorted by ~1e-6)."""
    pat = calc.get_pattern(structure, scaled=False)
    xs: list[float] = []
    ys: list[float] = []
    last = -1.0
    for x, y in zip(pat.x, pat.y, strict=True):
        if xs and x - last <= 1e-4:
            ys[-1] += float(y)
        else:
            xs.append(float(x))
            ys.append(float(y))
        last = float(x)
    return xs, [100.0 * y / max(ys) for y in ys]


def _deviation(structures: list, result, calc) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    dx = di = 0.0
    for i, s in enumerate(structures[:50]):
        ref_x, ref_y = _pymatgen_merged(calc, s)
        mine = result.peaks.crystal(i)
        for x, y in zip(ref_x, ref_y, strict=True):
            if y < 0.5:
                continue
            near = [
                (abs(mx - x), my)
                for mx, my in zip(mine["two_theta"], mine["intensity"], strict=True)
                if abs(mx - x) < 0.05
            ]
            if not near:
                return float("inf"), float("inf")
            d, my = min(near)
            dx, di = max(dx, d), max(di, abs(my - y))
    return dx, di


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (pymatgen uses one core)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from pymatgen.analysis.diffraction.xrd import XRDCalculator

    missing = [str(p) for p in DATASETS.values() if not p.exists()]
    if missing:
        print(f"error: data not found: {', '.join(missing)}", file=sys.stderr)
        return 1
    dtype = getattr(torch, args.dtype)
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    print(
        f"# {name}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"{args.dtype}, batch {args.batch_size}, CuKa, 2θ 0-90°, grid 0.02° (4501 points)"
    )
    print(
        "| data set | structures | mean atoms | crystal peaks+pattern (patterns/s) | pymatgen XRDCalculator "
        "(patterns/s) | ratio | max Δ2θ (°) | max ΔI (% of strongest) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    cfg = {"two_theta_min": 0.0, "two_theta_max": 90.0, "step": 0.02, "scale": 100.0}
    calc = XRDCalculator()
    for label, path in DATASETS.items():
        structures = _load(path, args.limit)
        batches = [
            CrystalBatch.from_structures(structures[i : i + args.batch_size]).to(dev, dtype)
            for i in range(0, len(structures), args.batch_size)
        ]
        simulate(batches[0], cfg)  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for b in batches:
                simulate(b, cfg)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        ours = len(structures) / best
        t0 = time.perf_counter()
        for s in structures:
            calc.get_pattern(s)
        ref = len(structures) / (time.perf_counter() - t0)
        first = simulate(CrystalBatch.from_structures(structures[:50]).to(dtype=torch.float64), cfg)
        dx, di = _deviation(structures, first, calc)
        atoms = sum(len(s) for s in structures) / len(structures)
        print(
            f"| {label} | {len(structures)} | {atoms:.1f} | {ours:.1f} | {ref:.1f} | {ours / ref:.1f}x | "
            f"{dx:.1e} | {di:.1e} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
