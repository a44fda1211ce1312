"""Benchmark: time per NVE MD step of the pretrained potentials CHGNet and SevenNet-0, through
crystal versus each package's own ASE calculator.

For every potential and case, three paths integrate the same structures from the same
initial velocities with velocity Verlet (``--timestep`` fs, default 1):

1. ``own``     the package's own ASE calculator (``chgnet.model.dynamics.CHGNetCalculator``
               with CHGNet 0.3.0, the plugin's default weights; ``sevenn.calculator.
               SevenNetCalculator("7net-0")``, the plugin's default ``sevennet-0``) driven by
               ``ase.md.verlet.VelocityVerlet``, one structure at a time;
2. ``calc``    ``crystal_sim.calculator.CrystalCalculator(potential)`` driven by the same ASE
               ``VelocityVerlet``, one structure at a time (overhead vs 1; goal <= 5 %);
3. ``run_md``  crystal's batched ``crystal_sim.md.run_md`` on all structures of the case at once
               (speed-up vs 1).

Cases: ``64`` (one rattled 64-atom Si diamond cell), ``512`` (one rattled 512-atom Si diamond
cell), ``batch32`` (32 rattled 8-atom cells: Si diamond, Cu fcc (1x1x2 conventional), NaCl
rock salt, cycled). Initial velocities: ASE ``MaxwellBoltzmannDistribution`` (``--temperature``
K, seeded) plus ``Stationary``; run_md gets the same velocities in Å/fs (ASE velocity x
``ase.units.fs``).

Each path runs ``--warmup`` steps (default 2, untimed) then ``--steps`` timed steps (default
20). Times are ms per MD step, per structure-step for ``batch32`` (total time / (steps x 32)).
``max|ΔE|`` is the largest difference of the final potential energy per atom from path 1
after warmup + steps, in meV/atom (a sanity check: float32 models, chaotic trajectories).
Peak RSS is the process high-water mark (``resource.getrusage``) after each case, so it only
grows over the run.

    python benchmarks/md_potentials.py --potentials chgnet sevennet --cases 64 512 batch32 --steps 20

MACE has no package calculator to compare (crystal-mace is the implementation; mace-torch pins
an e3nn incompatible with sevenn): its "own" column repeats crystal's calculator, so only the
batched speed-up is meaningful. It runs the paper's default architecture, randomly initialised
(time does not depend on the weights), in float32.

Note: both packages' calculators always compute stress as well (CHGNet also magnetic moments),
while ``VelocityVerlet`` asks ``CrystalCalculator`` and ``run_md`` for energy and forces only.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import resource
import time
import warnings

import numpy as np

CASES = ("64", "512", "batch32")
POTENTIALS = ("chgnet", "sevennet", "mace")
#: MACE has no package of its own here (crystal-mace is the implementation): timed with the paper's
#: default architecture, randomly initialised, covering the elements of every case
MACE_CONFIG = {"elements": ["Na", "Si", "Cl", "Cu"], "dtype": "float32", "min_distance": 0.0}


# ---------------------------------------------------------------------- structures
def _rattled(atoms, rng: np.random.Generator, stdev: float):
    atoms = atoms.copy()
    atoms.positions += rng.normal(0.0, stdev, size=atoms.positions.shape)
    return atoms


def build_case(case: str, seed: int, rattle: float) -> list:
    """The ASE Atoms of one case, rattled reproducibly."""
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    si = bulk("Si", "diamond", a=5.43, cubic=True)  # 8 atoms
    if case == "64":
        return [_rattled(si.repeat((2, 2, 2)), rng, rattle)]
    if case == "512":
        return [_rattled(si.repeat((4, 4, 4)), rng, rattle)]
    if case == "batch32":
        protos = [
            si,
            bulk("Cu", "fcc", a=3.61, cubic=True).repeat((1, 1, 2)),
            bulk("NaCl", "rocksalt", a=5.64, cubic=True),
        ]
        return [_rattled(protos[k % len(protos)], rng, rattle) for k in range(32)]
    raise ValueError(f"unknown case {case!r}")


def set_velocities(structures: list, temperature: float, seed: int) -> None:
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    rng = np.random.default_rng(seed + 1000)
    for atoms in structures:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # ase >= 3.26 suggests thermalize_momenta
            MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
        Stationary(atoms)


# ---------------------------------------------------------------------- calculators
def own_calculator(name: str, device: str):
    """The package's own ASE calculator with the plugin's default weights (None for MACE)."""
    if name == "mace":
        return None
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "chgnet":
            from chgnet.model import CHGNet
            from chgnet.model.dynamics import CHGNetCalculator

            model = CHGNet.load(model_name="0.3.0", use_device=device, verbose=False)
            return CHGNetCalculator(model=model, use_device=device)
        if name == "sevennet":
            from sevenn.calculator import SevenNetCalculator

            return SevenNetCalculator("7net-0", device=device)
    raise ValueError(name)


def load_potential(name: str, device: str):
    import crystal

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return crystal.load("potential", name, MACE_CONFIG if name == "mace" else None, device=device)


# ---------------------------------------------------------------------- paths
def run_ase(structures: list, make_calc, timestep: float, warmup: int, steps: int) -> tuple[float, np.ndarray]:
    """ASE VelocityVerlet one structure at a time; (timed seconds, final energies eV)."""
    from ase import units
    from ase.md.verlet import VelocityVerlet

    seconds, energies = 0.0, []
    for atoms0 in structures:
        atoms = atoms0.copy()
        atoms.calc = make_calc()
        dyn = VelocityVerlet(atoms, timestep=timestep * units.fs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dyn.run(warmup)
            t0 = time.perf_counter()
            dyn.run(steps)
            seconds += time.perf_counter() - t0
            energies.append(atoms.get_potential_energy())
    return seconds, np.array(energies)


def run_batched(structures: list, potential, timestep: float, warmup: int, steps: int) -> tuple[float, np.ndarray]:
    """crystal_sim.md.run_md on all structures at once; (seconds of the last ``steps`` steps, final energies eV)."""
    import torch
    from ase import units

    from crystal.batch import CrystalBatch
    from crystal_sim.md import run_md

    batch = CrystalBatch.from_atoms(structures)
    velocities = torch.as_tensor(np.concatenate([a.get_velocities() for a in structures]) * units.fs)  # Å/fs
    marks: dict[int, float] = {}

    def stamp(state) -> None:
        if state.step == warmup:
            marks["start"] = time.perf_counter()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        result = run_md(
            potential,
            batch,
            ensemble="nve",
            timestep=timestep,
            steps=warmup + steps,
            velocities=velocities,
            callback=stamp,
        )
        t1 = time.perf_counter()
    return t1 - marks.get("start", t0), result.batch.crystal_properties["energy"].double().cpu().numpy()


# ---------------------------------------------------------------------- main
def machine_info(threads: int, device: str) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = []
    for mod in ("ase", "chgnet", "sevenn"):
        with contextlib.suppress(Exception):
            versions.append(f"{mod} {__import__(mod).__version__}")
    return (
        f"machine: {cpu}, {os.cpu_count()} cores; python {platform.python_version()}, torch {torch.__version__}, "
        f"{', '.join(versions)}; torch threads={threads}, device={device}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--potentials", nargs="+", choices=POTENTIALS, default=list(POTENTIALS))
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--steps", type=int, default=20, help="timed MD steps per path (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed MD steps before timing (default 2)")
    parser.add_argument("--timestep", type=float, default=1.0, help="fs (default 1)")
    parser.add_argument("--temperature", type=float, default=300.0, help="initial MB temperature, K (default 300)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--device", default="cpu", help="torch device for every path (default cpu)")
    parser.add_argument("--rattle", type=float, default=0.05, help="Gaussian position noise, Å (default 0.05)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        metavar="POT:CASE",
        help="potential/case pairs not to run, e.g. sevennet:512 (printed as a note)",
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")

    import torch

    from crystal_sim.calculator import CrystalCalculator

    torch.set_num_threads(args.threads)
    skip = {s.lower() for s in args.skip}
    print(machine_info(torch.get_num_threads(), args.device))
    print(
        f"NVE velocity Verlet, dt={args.timestep} fs, T0={args.temperature} K, warmup={args.warmup} + "
        f"timed steps={args.steps}; ms per step (per structure-step for batch32); "
        f"overhead = calc/own - 1; speed-up = own/run_md; max|ΔE| = final potential energy vs own, meV/atom"
    )
    print()
    header = (
        "| potential | case | atoms | own ms/step | calc ms/step | calc overhead | run_md ms/step | "
        "run_md speed-up | max abs ΔE calc | max abs ΔE run_md | peak RSS MB |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1), flush=True)
    notes: list[str] = []
    for name in args.potentials:
        potential = load_potential(name, args.device)
        own = own_calculator(name, args.device)  # one model; ASE calculators are reset per structure
        for case in args.cases:
            if f"{name}:{case}" in skip:
                notes.append(f"{name} {case}: skipped (--skip)")
                continue
            structures = build_case(case, args.seed, args.rattle)
            set_velocities(structures, args.temperature, args.seed)
            n_struct = len(structures)
            n_atoms = np.array([len(a) for a in structures])
            per = args.steps * n_struct

            def own_calc(own=own):
                own.reset()
                return own

            if own is not None:
                t_own, e_own = run_ase(structures, own_calc, args.timestep, args.warmup, args.steps)
            t_calc, e_calc = run_ase(
                structures,
                lambda potential=potential: CrystalCalculator(potential),
                args.timestep,
                args.warmup,
                args.steps,
            )
            t_md, e_md = run_batched(structures, potential, args.timestep, args.warmup, args.steps)
            if own is None:  # no package calculator: run_md is compared with crystal's calculator
                t_own, e_own = t_calc, e_calc
                notes.append(f"{name} {case}: no own calculator; 'own' columns repeat crystal's calculator")
            rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
            de_calc = np.max(np.abs(e_calc - e_own) / n_atoms) * 1000.0
            de_md = np.max(np.abs(e_md - e_own) / n_atoms) * 1000.0
            atoms_label = f"{n_atoms[0]}" if n_struct == 1 else f"{n_struct}x{int(n_atoms.mean())}"
            row = (
                f"| {name} | {case} | {atoms_label} | {1000 * t_own / per:.2f} | {1000 * t_calc / per:.2f} | "
                f"{100 * (t_calc / t_own - 1):+.1f} % | {1000 * t_md / per:.2f} | {t_own / t_md:.2f}x | "
                f"{de_calc:.2e} | {de_md:.2e} | {rss_mb:.0f} |"
            )
            print(row, flush=True)
    for note in notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
