"""Peak memory of one energy+forces+stress evaluation vs cell size, and the largest cell that fits.

Usage::

    python benchmarks/memory_potentials.py [--potentials chgnet sevennet mace] [--sizes 2 3 4 5]
        [--budget-gb 24] [--device cpu] [--mace-weights mace-mlearn-si]

Each measurement runs in a fresh subprocess: load the potential, evaluate a diamond-Si
supercell of ``8 k³`` atoms (rattled 0.05 Å) once with forces and stress, and report the
process's peak resident memory (CPU: ``ru_maxrss``; CUDA: ``torch.cuda.max_memory_allocated``)
minus the peak after loading the model and a warm-up on the 8-atom cell. A straight line
through the measured (atoms, memory) points gives the memory per atom; the largest cell
that fits in ``--budget-gb`` is extrapolated from it (and marked as such: this machine
has less free memory than the budget). Si is covered by every potential compared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

CHILD = r"""
import json, resource, sys, torch
from ase.build import bulk
from crystal.batch import CrystalBatch
from crystal.plugins import load

name, k, device, config = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
torch.set_num_threads(1)
pot = load("potential", name, config, device=device)
def cell(n):
    atoms = bulk("Si", "diamond", a=5.43, cubic=True) * (n, n, n)
    atoms.rattle(0.05, seed=0)
    return CrystalBatch.from_atoms([atoms]).to(device)
pot.compute(cell(1), forces=True, stress=True)
def peak():
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
base = peak()
if device.startswith("cuda"):
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() / 2**20
out = pot.compute(cell(k), forces=True, stress=True)
assert torch.isfinite(out.energy).all()
print(json.dumps({"atoms": 8 * k**3, "mib": peak() - base}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--potentials", nargs="+", default=["chgnet", "sevennet", "mace"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[2, 3, 4, 5])
    parser.add_argument("--budget-gb", type=float, default=24.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mace-weights", default="mace-mlearn-si")
    args = parser.parse_args()
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, device {args.device}; diamond Si supercells, E+F+S")
    print()
    print(
        "| potential | atoms | peak memory (MiB) | MiB per atom (fit) | largest cell in budget (atoms, extrapolated) |"
    )
    print("|---|---|---|---|---|")
    for name in args.potentials:
        config = {"weights": args.mace_weights} if name == "mace" else {}
        points = []
        for k in args.sizes:
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, name, str(k), args.device, json.dumps(config)],
                capture_output=True,
                text=True,
                env=dict(os.environ, OMP_NUM_THREADS="1"),
                check=False,
            )
            if proc.returncode != 0:
                print(f"| {name} | {8 * k**3} | failed: {proc.stderr.strip().splitlines()[-1:]} | | |", flush=True)
                break
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            points.append((row["atoms"], row["mib"]))
            print(f"| {name} | {row['atoms']} | {row['mib']:.0f} | | |", flush=True)
        if len(points) >= 2:
            n = len(points)
            mx = sum(a for a, _ in points) / n
            my = sum(m for _, m in points) / n
            slope = sum((a - mx) * (m - my) for a, m in points) / sum((a - mx) ** 2 for a, _ in points)
            intercept = my - slope * mx
            largest = (args.budget_gb * 1024 - intercept) / slope if slope > 0 else float("inf")
            print(f"| {name} | fit | | {slope:.3f} | {largest:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
