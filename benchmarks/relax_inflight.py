"""Benchmark: in-flight batching versus a shrinking batch in ``crystal_sim.relax.relax``.

The same crystals are relaxed twice with the same potential, FIRE settings and capacity
(``--capacity`` crystals per potential evaluation):

``shrinking``  ``inflight=False``: the queue is taken ``--capacity`` crystals at a time and each
               batch shrinks as its crystals converge; the next batch starts when the slowest
               crystal of the previous one is done;
``in flight``  ``inflight=True``: when a crystal converges, the next waiting one takes its place.

The structures are a relax32-like mix: ``--n`` rows of ``<data>/perov_5/test.csv``, most lightly
rattled (Gaussian ``--rattle`` Å, cell strain ±``--strain``; converge in a few dozen steps) and every
``--slow-every``-th one rattled and strained much more (``--slow-rattle``, ``--slow-strain``; slow to
converge). Without the data folder the script says so and exits 0.

    python benchmarks/relax_inflight.py --n 32 --capacity 8 --threads 1 --repeat 2

Prints, for each mode: wall time (best of ``--repeat``, the modes alternating), potential
evaluations (calls), crystal-evaluations (the work: identical in both modes by construction),
and the speed ratio measured in this run; then the largest per-crystal difference between the
modes (energy, steps, convergence: they should agree to the potential's round-off). With
``--auto`` it also prints the capacity the calibrated memory model gives on this machine.
On a CPU, whose evaluation time grows with the atoms evaluated, in-flight batching saves the
per-call overhead only (the crystal-evaluations do not change); on a GPU, where a call costs about
the same up to the capacity, the calls ratio is the one that counts.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"


def load_mix(args: argparse.Namespace):
    """``(structures, ids)``: perov_5 test rows, a fraction of them far from their minimum."""
    from pymatgen.core import Lattice, Structure

    path = args.data / "perov_5" / "test.csv"
    if not path.is_file():
        return None
    csv.field_size_limit(sys.maxsize)
    rng = np.random.default_rng(args.seed)
    with open(path, newline="") as fh:
        rows = [row for _, row in zip(range(args.n), csv.DictReader(fh))]
    out, ids = [], []
    for k, row in enumerate(rows):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = Structure.from_str(row["cif"], fmt="cif")
        slow = k % args.slow_every == 0
        rattle, strain = (args.slow_rattle, args.slow_strain) if slow else (args.rattle, args.strain)
        deform = np.eye(3) + rng.uniform(-strain, strain, size=(3, 3))
        deform = 0.5 * (deform + deform.T)
        lattice = Lattice(s.lattice.matrix @ deform)
        cart = s.frac_coords @ lattice.matrix + rng.normal(0.0, rattle, size=(len(s), 3))
        out.append(Structure(lattice, s.species, cart, coords_are_cartesian=True))
        ids.append(f"{'slow' if slow else 'near'}:{row['material_id']}")
    return out, ids


class Counting:
    """Wraps a potential's ``compute`` to count calls and crystal-evaluations."""

    def __init__(self, potential):
        self.potential = potential
        self.calls = 0
        self.crystals = 0
        self._compute = potential.compute
        potential.compute = self.compute

    def compute(self, batch, *, forces=True, stress=True):
        self.calls += 1
        self.crystals += len(batch)
        return self._compute(batch, forces=forces, stress=stress)

    def reset(self) -> None:
        self.calls = self.crystals = 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--potential", choices=["chgnet", "sevennet"], default="chgnet")
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--capacity", type=int, default=8, help="crystals per potential evaluation")
    p.add_argument("--fmax", type=float, default=0.1)
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--rattle", type=float, default=0.05)
    p.add_argument("--strain", type=float, default=0.02)
    p.add_argument("--slow-every", type=int, default=4)
    p.add_argument("--slow-rattle", type=float, default=0.25)
    p.add_argument("--slow-strain", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--auto", action="store_true", help="also print the memory model's capacity")
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    mix = load_mix(args)
    if mix is None:
        print(f"relax_inflight: {args.data / 'perov_5' / 'test.csv'} not found; skipped (pass --data)")
        return 0
    structures, ids = mix

    from crystal import CrystalBatch
    from crystal_sim.relax import relax

    if args.potential == "chgnet":
        from crystal_chgnet.potential import CHGNetPotential

        pot = CHGNetPotential(device="cpu")
    else:
        from crystal_sevennet.potential import SevenNetPotential

        pot = SevenNetPotential(device="cpu")
    batch = CrystalBatch.from_structures(structures, ids=ids)
    counter = Counting(pot)
    common = {"fmax": args.fmax, "max_steps": args.max_steps, "max_batch_size": args.capacity}
    print(
        f"{args.potential} on CPU, {args.threads} thread(s); {len(batch)} perov_5 crystals "
        f"({sum(i.startswith('slow') for i in ids)} far from their minimum), capacity {args.capacity} crystals, "
        f"fmax {args.fmax} eV/Å, max {args.max_steps} steps"
    )
    if args.auto:
        from crystal_sim.memory import BatchLimits, batch_capacity, crystal_metric, memory_metric_of, memory_model

        t0 = time.perf_counter()
        model = memory_model(pot, batch.dtype)
        t_cal = time.perf_counter() - t0
        cap = batch_capacity(pot, batch.dtype, BatchLimits())
        metric, _ = memory_metric_of(pot)
        if model is not None:
            print(
                f"memory model ({model.method}, {t_cal:.1f} s incl. cache lookup): {model.bytes_per_unit:.0f} B per "
                f"{metric[:-1] if metric.endswith('s') else metric}, overhead {model.overhead_bytes / 2**20:.1f} MiB; "
                f"capacity now {cap:.3g} {metric} (this mix: {float(crystal_metric(pot, batch).mean()):.0f} per crystal)"
            )
        else:
            print("memory model: none on this platform")

    relax(pot, batch.select([0]), max_steps=2, max_batch_metric=None)  # warm-up (lazy imports, caches)
    results: dict[str, list[float]] = {"shrinking": [], "in flight": []}
    stats: dict[str, tuple[int, int]] = {}
    final = {}
    for _ in range(args.repeat):
        for mode, inflight in (("shrinking", False), ("in flight", True)):
            counter.reset()
            t0 = time.perf_counter()
            res = relax(pot, batch, **common, inflight=inflight, max_batch_metric=None)
            results[mode].append(time.perf_counter() - t0)
            stats[mode] = (counter.calls, counter.crystals)
            final[mode] = res
    print(f"{'mode':<10} {'best s':>8} {'all s':>22} {'calls':>6} {'crystal-evals':>14} {'crystals/s':>11}")
    for mode, times in results.items():
        calls, evals = stats[mode]
        print(
            f"{mode:<10} {min(times):8.1f} {', '.join(f'{t:.1f}' for t in times):>22} {calls:6d} {evals:14d} "
            f"{len(batch) / min(times):11.3f}"
        )
    a, b = final["shrinking"], final["in flight"]
    ratio = min(results["shrinking"]) / min(results["in flight"])
    calls_ratio = stats["shrinking"][0] / stats["in flight"][0]
    print(f"speed ratio in flight / shrinking: {ratio:.2f}x (wall); {calls_ratio:.2f}x fewer potential calls")
    de = (a.energy - b.energy).abs() / a.batch.num_atoms
    print(
        f"per crystal, in flight vs shrinking: max |dE| {float(de.max()) * 1000:.2g} meV/atom, "
        f"steps equal for {int((a.steps == b.steps).sum())}/{len(batch)}, "
        f"converged {int(a.converged.sum())} vs {int(b.converged.sum())}; "
        f"steps near {a.steps[[not i.startswith('slow') for i in ids]].float().mean():.0f} / slow "
        f"{a.steps[[i.startswith('slow') for i in ids]].float().mean():.0f} (mean)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
