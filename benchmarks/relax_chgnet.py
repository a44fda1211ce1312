"""Benchmark (1): batched relaxation with core's ``crystal_sim.relax.relax`` + the CHGNet plugin
versus CHGNet's own ``StructOptimizer`` (ASE FIRE + FrechetCellFilter), one structure at a time.

Two structure sets (``--set``):

``near`` (default)
    ``--n`` rows of ``<data>/perov_5/test.csv`` and ``<data>/carbon_24/test.csv``
    (``--carbon-fraction`` of them from carbon_24), positions rattled (Gaussian, ``--rattle`` Å)
    and cells strained (uniform ±``--strain``) with a fixed seed: starts NEAR a minimum.
``pyxtal``
    ``--n`` random symmetric crystals from the ``crystal-pyxtal`` generator (seeded by
    ``--seed``, at most ``--max-atoms`` atoms, space groups 2–230, a fixed rotation of
    chemical systems from elements to quaternaries): starts FAR from any minimum. Crystals
    CHGNet cannot evaluate (isolated atoms) are replaced by the next sample and reported.

Both paths start from the same geometry and use the same fmax, step limit, FIRE parameters
(ASE's defaults) and Fréchet cell filter (core's relaxer reproduces ASE's FIRE+FrechetCellFilter;
docs/relax.md explains why paths from far-off starts still part).

    python benchmarks/relax_chgnet.py --n 32 --fmax 0.1 --max-steps 500 --threads 2
    python benchmarks/relax_chgnet.py --set pyxtal --n 16 --fmax 0.1 --max-steps 500 --threads 1 --control

Prints wall times, the speed ratio in structures/s and in evaluations/s, steps, convergence
counts, and the final-energy difference per atom (per structure for ``pyxtal``).
``--control`` relaxes the reference a second time from positions displaced by 1e-7 Å
(Gaussian, seeded): the ASE-vs-ASE spread that float32 round-off alone produces, to set
against the batched-vs-ASE difference. ``--profile`` splits the batched path's time into
graph construction (pymatgen + CHGNet's converter), model forward/backward and the relaxer.
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


#: chemical systems cycled through by the ``pyxtal`` set (element, binaries, ternary, quaternary)
PYXTAL_SYSTEMS: tuple[tuple[str, ...], ...] = (
    ("Si",),
    ("C",),
    ("Mg", "O"),
    ("Ga", "As"),
    ("Sr", "Ti", "O"),
    ("Li", "Fe", "P", "O"),
    ("Ti", "O"),
    ("Na", "Cl"),
    ("Al", "O"),
    ("Zn", "S"),
    ("Ca", "F"),
    ("Cu", "Au"),
)


def load_pyxtal(n: int, seed: int, max_atoms: int, check=None):
    """``n`` random PyXtal crystals (far from their minima) as pymatgen structures, reproducibly.

    Sample ``k`` uses chemical system ``PYXTAL_SYSTEMS[k % 12]`` and generator seed
    ``seed * 100003 + k``. ``check(crystal)`` (a one-crystal ``CrystalBatch``) may raise
    :class:`crystal.errors.StructureError` to reject a crystal; it is skipped and reported.
    Returns ``(structures, ids, labels)``.
    """
    from pymatgen.core import Lattice, Structure

    from crystal.errors import StructureError
    from crystal_pyxtal.generator import PyXtalGenerator

    out, names, labels = [], [], []
    k = 0
    while len(out) < n:
        if k >= 10 * n + 20:
            sys.exit(f"relax benchmark: only {len(out)} of {n} PyXtal crystals usable after {k} samples")
        system = PYXTAL_SYSTEMS[k % len(PYXTAL_SYSTEMS)]
        gen = PyXtalGenerator(chemical_system=system, max_atoms=max_atoms, space_groups=tuple(range(2, 231)))
        sample_seed = seed * 100003 + k
        k += 1
        crystal = gen.generate(1, seed=sample_seed)
        if len(crystal) == 0:
            continue
        if check is not None:
            try:
                check(crystal)
            except StructureError as exc:
                print(f"  skipped pyxtal sample seed {sample_seed}: {exc}", file=sys.stderr)
                continue
        info = crystal.info[0]
        lattice = Lattice(crystal.lattices[0].double().numpy())
        zs = crystal.atomic_numbers.tolist()
        out.append(Structure(lattice, zs, crystal.frac_coords.double().numpy()))
        names.append(crystal.ids[0])
        labels.append(f"{info['composition']} sg{info['space_group']}")
    return out, names, labels


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


def run_reference(structures, args, perturb: float = 0.0):
    """chgnet.model.StructOptimizer().relax(...) in a loop; returns (seconds, energies, steps, converged).

    ``perturb`` > 0 displaces every atom by seeded Gaussian noise of that size (Å) first.
    """
    from chgnet.model import CHGNet, StructOptimizer

    with contextlib.redirect_stdout(io.StringIO()):
        model = CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)
        opt = StructOptimizer(model=model, optimizer_class="FIRE", use_device="cpu")
        opt.calculator.get_potential_energy(structures[0].to_ase_atoms())  # warm-up
    energies, steps, converged = [], [], []
    rng = np.random.default_rng(12345)
    starts = []
    for s in structures:
        atoms = s.to_ase_atoms()
        if perturb > 0:
            atoms.positions = atoms.positions + rng.normal(0.0, perturb, size=atoms.positions.shape)
        starts.append(atoms)
    t0 = time.perf_counter()
    for atoms in starts:
        with contextlib.redirect_stdout(io.StringIO()):
            res = opt.relax(
                atoms,
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
    parser.add_argument(
        "--set",
        choices=("near", "pyxtal"),
        default="near",
        help="'near': rattled perov_5/carbon_24 test crystals (default); 'pyxtal': random PyXtal crystals",
    )
    parser.add_argument("--n", type=int, default=32, help="number of structures (default 32)")
    parser.add_argument("--fmax", type=float, default=0.1, help="force threshold, eV/Å (default 0.1)")
    parser.add_argument("--max-steps", type=int, default=500, help="FIRE steps per structure at most (default 500)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--batch-size", type=int, default=64, help="CHGNet plugin batch_size (crystals per forward)")
    parser.add_argument(
        "--carbon-fraction", type=float, default=0.5, help="near: share of carbon_24 rows (rest perov_5)"
    )
    parser.add_argument("--rattle", type=float, default=0.05, help="near: Gaussian position noise, Å (default 0.05)")
    parser.add_argument("--strain", type=float, default=0.02, help="near: uniform cell strain amplitude (default 0.02)")
    parser.add_argument("--max-atoms", type=int, default=12, help="pyxtal: atoms per cell at most (default 12)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help=f"near: shared data folder (default {DEFAULT_DATA})"
    )
    parser.add_argument("--skip-reference", action="store_true", help="time the batched path only")
    parser.add_argument(
        "--control",
        action="store_true",
        help="relax the reference again from positions displaced by 1e-7 Å: the ASE-vs-ASE spread from round-off",
    )
    parser.add_argument("--profile", action="store_true", help="split the batched time into graphs / model / relaxer")
    args = parser.parse_args(argv)

    if args.set == "near" and not args.data.is_dir():
        print(f"relax_chgnet: shared data folder {args.data} is absent; nothing to benchmark", file=sys.stderr)
        return 2

    import torch

    torch.set_num_threads(args.threads)
    labels: list[str] | None = None
    if args.set == "near":
        structures, names = load_structures(
            args.data, args.n, args.carbon_fraction, args.seed, args.rattle, args.strain
        )
    else:
        from crystal_chgnet.potential import CHGNetPotential

        # CHGNet refuses crystals with isolated atoms (no neighbour within 6 Å): skip them up front
        structures, names, labels = load_pyxtal(
            args.n, args.seed, args.max_atoms, check=CHGNetPotential(device="cpu").graphs
        )
    n_atoms = np.array([len(s) for s in structures])
    print(
        f"{args.set} set: {len(structures)} structures ({n_atoms.sum()} atoms, {n_atoms.min()}-{n_atoms.max()} per "
        f"cell), fmax={args.fmax} eV/Å, max_steps={args.max_steps}, torch threads={torch.get_num_threads()}, "
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
    # throughput per energy/force evaluation (FIRE steps + the initial one): independent of path lengths
    evals_b, evals_r = int(steps_b.sum()) + len(steps_b), int(steps_r.sum()) + len(steps_r)
    print(
        f"speed-up (reference / batched): {t_r / t_b:.2f}x in structures/s "
        f"({len(structures) / t_b:.3f} vs {len(structures) / t_r:.3f} structures/s); "
        f"{(evals_b / t_b) / (evals_r / t_r):.2f}x in evaluations/s ({evals_b / t_b:.1f} vs {evals_r / t_r:.1f})"
    )
    de_signed = (e_b - e_r) / n_atoms * 1000.0  # meV/atom
    de = np.abs(de_signed)
    same_steps = int((steps_b == steps_r).sum())
    print(
        f"|ΔE| final energies (batched - reference): median {statistics.median(de):.4f} meV/atom, "
        f"max {de.max():.4f} meV/atom; < 1 meV/atom: {int((de < 1).sum())}/{len(de)}; "
        f"batched lower: {int((de_signed < -1).sum())}, higher: {int((de_signed > 1).sum())}; "
        f"identical step counts {same_steps}/{len(de)}"
    )
    de_c = None
    if args.control:
        t_c, e_c, steps_c, _ = run_reference(structures, args, perturb=1e-7)
        de_c = (e_c - e_r) / n_atoms * 1000.0
        print(
            f"control  StructOptimizer from positions displaced by 1e-7 Å: {t_c:8.2f} s; |ΔE| vs unperturbed: "
            f"median {statistics.median(np.abs(de_c)):.4f} meV/atom, max {np.abs(de_c).max():.4f} meV/atom; "
            f"< 1 meV/atom: {int((np.abs(de_c) < 1).sum())}/{len(de_c)}; "
            f"identical step counts {int((steps_c == steps_r).sum())}/{len(de_c)}"
        )
    if labels is not None:
        header = f"{'id':<16} {'crystal':<22} {'N':>3} {'steps b/ref':>11} {'E_ref eV/at':>12} {'ΔE meV/at':>10}"
        print(header + (f" {'ctrl meV/at':>11}" if de_c is not None else ""))
        for k in range(len(structures)):
            line = (
                f"{names[k]:<16} {labels[k]:<22} {n_atoms[k]:>3} {f'{steps_b[k]}/{steps_r[k]}':>11} "
                f"{e_r[k] / n_atoms[k]:>12.4f} {de_signed[k]:>10.2f}"
            )
            print(line + (f" {de_c[k]:>11.2f}" if de_c is not None else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
