"""Benchmark (1): batched relaxation with core's ``crystal_sim.relax.relax`` + the CHGNet plugin
versus CHGNet's own ``StructOptimizer`` (ASE FIRE + FrechetCellFilter), one structure at a time.

Structures: ``--n`` rows of ``<data>/perov_5/test.csv`` and ``<data>/carbon_24/test.csv``
(``--carbon-fraction`` of them from carbon_24), positions rattled (Gaussian, ``--rattle`` Å)
and cells strained (uniform ±``--strain``) with a fixed seed, so both paths start from
the same, unrelaxed geometry. Both paths use the same fmax, step limit, FIRE parameters
and Fréchet cell filter (core's relaxer reproduces ASE's FIRE+FrechetCellFilter).

    python benchmarks/relax_chgnet.py --n 32 --fmax 0.1 --max-steps 500 --threads 2

Prints wall times, the speed ratio, steps, convergence counts and the final-energy
difference per atom between the two paths. ``--profile`` splits the batched path's time
into graph construction (pymatgen + CHGNet's converter), model forward/backward and the
relaxer itself.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"


def load_structures(data: Path, n: int, carbon_fraction: float, seed: int, rattle: float, strain: float):
    """``n`` perov_5 / carbon_24 test structures, rattled and strained reproducibly."""
    from pymatgen.core import Lattice, Structure

    n_carbon = round(n * carbon_fraction)
    sources = [("perov_5", n - n_carbon), ("carbon_24", n_carbon)]
    csv.field_size_limit(sys.maxsize)
    rng = np.random.default_rng(seed)
    out, names = [], []
    for name, count in sources:
        if count == 0:
            continue
        path = data / name / "test.csv"
        if not path.is_file():
            sys.exit(f"relax_chgnet: {path} not found; pass --data pointing at the shared data folder")
        with open(path, newline="") as fh:
            rows = [row for _, row in zip(range(count), csv.DictReader(fh))]
        if len(rows) < count:
            sys.exit(f"relax_chgnet: {path} has only {len(rows)} rows, {count} requested")
        for row in rows:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                s = Structure.from_str(row["cif"], fmt="cif")
            deform = np.eye(3) + rng.uniform(-strain, strain, size=(3, 3))
            deform = 0.5 * (deform + deform.T)
            lattice = Lattice(s.lattice.matrix @ deform)
            cart = s.frac_coords @ lattice.matrix + rng.normal(0.0, rattle, size=(len(s), 3))
            out.append(Structure(lattice, s.species, cart, coords_are_cartesian=True))
            names.append(f"{name}:{row['material_id']}")
    return out, names


def run_batched(structures, names, args):
    """Core's batched FIRE with the crystal CHGNet plugin; returns (seconds, energies, steps, converged, profile)."""
    import torch

    from crystal.batch import CrystalBatch
    from crystal_chgnet.potential import CHGNetPotential
    from crystal_sim.relax import relax

    pot = CHGNetPotential(device="cpu", batch_size=args.batch_size)
    batch = CrystalBatch.from_structures(structures, ids=names)
    pot.energy(batch.select([0]))  # warm-up (first-call allocations), as for the reference path
    profile = {"graphs": 0.0, "model": 0.0, "calls": 0}
    if args.profile:
        graphs, forward = pot.graphs, pot._forward

        def timed_graphs(b):
            t = time.perf_counter()
            try:
                return graphs(b)
            finally:
                profile["graphs"] += time.perf_counter() - t
                profile["calls"] += 1

        def timed_forward(*a, **k):
            t = time.perf_counter()
            try:
                return forward(*a, **k)
            finally:
                profile["model"] += time.perf_counter() - t

        pot.graphs, pot._forward = timed_graphs, timed_forward  # type: ignore[method-assign]
    t0 = time.perf_counter()
    result = relax(pot, batch, fmax=args.fmax, max_steps=args.max_steps)
    seconds = time.perf_counter() - t0
    energies = result.energy.double().numpy()
    return seconds, energies, result.steps.numpy(), result.converged.numpy(), profile, torch


def run_reference(structures, args):
    """chgnet.model.StructOptimizer().relax(...) in a loop; returns (seconds, energies, steps, converged)."""
    from chgnet.model import CHGNet, StructOptimizer

    with contextlib.redirect_stdout(io.StringIO()):
        model = CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)
        opt = StructOptimizer(model=model, optimizer_class="FIRE", use_device="cpu")
        opt.calculator.get_potential_energy(structures[0].to_ase_atoms())  # warm-up
    energies, steps, converged = [], [], []
    t0 = time.perf_counter()
    for s in structures:
        with contextlib.redirect_stdout(io.StringIO()):
            res = opt.relax(
                s,
                fmax=args.fmax,
                steps=args.max_steps,
                relax_cell=True,
                ase_filter="FrechetCellFilter",
                verbose=False,
            )
        traj = res["trajectory"]
        # observer: initial frame + one per FIRE step + a final call after run()
        n_steps = len(traj.energies) - 2
        steps.append(n_steps)
        converged.append(n_steps < args.max_steps)  # ASE stops early only when converged
        energies.append(float(traj.energies[-1]))
    seconds = time.perf_counter() - t0
    return seconds, np.array(energies), np.array(steps), np.array(converged)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=32, help="number of structures (default 32)")
    parser.add_argument("--fmax", type=float, default=0.1, help="force threshold, eV/Å (default 0.1)")
    parser.add_argument("--max-steps", type=int, default=500, help="FIRE steps per structure at most (default 500)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    parser.add_argument("--batch-size", type=int, default=64, help="CHGNet plugin batch_size (crystals per forward)")
    parser.add_argument("--carbon-fraction", type=float, default=0.5, help="share of carbon_24 rows (rest perov_5)")
    parser.add_argument("--rattle", type=float, default=0.05, help="Gaussian position noise, Å (default 0.05)")
    parser.add_argument("--strain", type=float, default=0.02, help="uniform cell strain amplitude (default 0.02)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"shared data folder (default {DEFAULT_DATA})")
    parser.add_argument("--skip-reference", action="store_true", help="time the batched path only")
    parser.add_argument("--profile", action="store_true", help="split the batched time into graphs / model / relaxer")
    args = parser.parse_args(argv)

    if not args.data.is_dir():
        print(f"relax_chgnet: shared data folder {args.data} is absent; nothing to benchmark", file=sys.stderr)
        return 2

    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    structures, names = load_structures(args.data, args.n, args.carbon_fraction, args.seed, args.rattle, args.strain)
    n_atoms = np.array([len(s) for s in structures])
    print(
        f"{len(structures)} structures ({n_atoms.sum()} atoms, {n_atoms.min()}-{n_atoms.max()} per cell), "
        f"fmax={args.fmax} eV/Å, max_steps={args.max_steps}, torch threads={torch.get_num_threads()}, "
        f"plugin batch_size={args.batch_size}"
    )

    t_b, e_b, steps_b, conv_b, prof, _ = run_batched(structures, names, args)
    print(
        f"batched  crystal_sim.relax + CHGNetPotential: {t_b:8.2f} s  converged {int(conv_b.sum())}/{len(conv_b)}  "
        f"steps median {int(np.median(steps_b))}, max {int(steps_b.max())}, total {int(steps_b.sum())}"
    )
    if args.profile:
        other = t_b - prof["graphs"] - prof["model"]
        print(
            f"  profile: {prof['calls']} potential calls; graphs (pymatgen + CHGNet converter) {prof['graphs']:.2f} s "
            f"({100 * prof['graphs'] / t_b:.0f}%), model forward+backward {prof['model']:.2f} s "
            f"({100 * prof['model'] / t_b:.0f}%), relaxer + rest {other:.2f} s ({100 * other / t_b:.0f}%)"
        )
    if args.skip_reference:
        return 0

    t_r, e_r, steps_r, conv_r = run_reference(structures, args)
    print(
        f"chgnet   StructOptimizer (ASE FIRE loop): {t_r:8.2f} s  converged {int(conv_r.sum())}/{len(conv_r)}  "
        f"steps median {int(np.median(steps_r))}, max {int(steps_r.max())}, total {int(steps_r.sum())}"
    )
    de = np.abs(e_b - e_r) / n_atoms * 1000.0  # meV/atom
    same_steps = int((steps_b == steps_r).sum())
    print(f"speed-up (reference / batched): {t_r / t_b:.2f}x   (goal >= 1.5x)")
    print(
        f"|ΔE| final energies: median {statistics.median(de):.4f} meV/atom, max {de.max():.4f} meV/atom "
        f"(goal median <= 1 meV/atom); identical step counts {same_steps}/{len(de)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
