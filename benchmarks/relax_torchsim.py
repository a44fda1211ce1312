"""Peer benchmark: core's batched relaxer (``crystal_sim.relax.relax``) against TorchSim's batched
FIRE (``torch_sim.optimize`` with ``torch_sim.frechet_cell_fire``, ASE flavour), same structures,
same SevenNet-0 weights, one process, one run.

TorchSim is not a crystal dependency: run this script from a side environment that has
``torch-sim-atomistic`` and the crystal packages installed, e.g.::

    python3.11 -m venv /tmp/tsvenv
    /tmp/tsvenv/bin/pip install torch==2.13.0 torch-sim-atomistic sevenn
    /tmp/tsvenv/bin/pip install -c constraints.txt -e core/crystal -e core/sim \\
        -e plugins/sevennet -e plugins/pyxtal
    /tmp/tsvenv/bin/python benchmarks/relax_torchsim.py --set pyxtal --n 16 --threads 1

Structures: the sets of ``benchmarks/relax_chgnet.py`` (``--set pyxtal``: seeded random PyXtal
crystals far from their minima; ``--set near``: rattled perov_5 / carbon_24 test crystals).

Both sides load the SAME sha256-verified SevenNet-0 checkpoint (``crystal-sevennet``'s
weights-only loader; TorchSim gets sevenn's ``AtomGraphSequential`` with its own force head,
wrapped in ``torch_sim.models.sevennet.SevenNetModel``, float32 as upstream). Both use ASE's
FIRE parameters (dt 0.1, dt_max 1, N_min 5, f_inc 1.1, f_dec 0.5, α 0.1, f_α 0.99, max step
0.2 Å), the Fréchet cell filter with ``exp_cell_factor`` = atoms per crystal, and the same
convergence test (every atom row and every cell row of the generalised force < ``--fmax``).
TorchSim checks convergence every ``--steps-between-swaps`` steps (its default is 5; 1 makes
it test after every step as ASE and crystal do). TorchSim's step limit is global, crystal's
per structure; both are set to ``--max-steps``.

Prints wall times, structures/s and the ratio, convergence counts and the per-structure
final-energy difference (meV/atom).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from relax_chgnet import DEFAULT_DATA, load_pyxtal, load_structures  # noqa: E402


def sevenn_model_for_torchsim(weights: str):
    """sevenn's full ``AtomGraphSequential`` (with its force/stress head) from crystal's verified checkpoint."""
    from sevenn.checkpoint import SevenNetCheckpoint, _config_cp_routine

    from crystal_sevennet.potential import load_checkpoint

    raw = load_checkpoint(weights)

    class _Verified(SevenNetCheckpoint):
        def _load(self) -> None:  # sevenn's loader, with the dict crystal loaded weights-only
            self._config_original = raw.get("config", {})
            self._model_state_dict = raw.get("model_state_dict", {})
            self._optimizer_state_dict = {}
            self._scheduler_state_dict = {}
            self._epoch = raw.get("epoch")
            self._time = raw.get("time", "Not found")
            self._hash = raw.get("hash", "Not found")
            self._config = _config_cp_routine(dict(self._config_original))
            self._loaded = True

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _Verified(f"<crystal weights {weights}>").build_model()
    model.eval()
    return model


def run_crystal(structures, names, args):
    """Core's batched FIRE + SevenNetPotential; returns (seconds, energies, steps, converged)."""
    from crystal.batch import CrystalBatch
    from crystal_sevennet.potential import SevenNetPotential
    from crystal_sim.relax import relax

    pot = SevenNetPotential(device="cpu", weights=args.weights, batch_size=max(len(structures), 1))
    batch = CrystalBatch.from_structures(structures, ids=names)
    pot.compute(batch.select([0]), forces=True, stress=True)  # warm-up
    t0 = time.perf_counter()
    res = relax(pot, batch, fmax=args.fmax, max_steps=args.max_steps)
    seconds = time.perf_counter() - t0
    return seconds, res.energy.double().numpy(), res.steps.numpy(), res.converged.numpy()


def run_torchsim(structures, args):
    """torch_sim.optimize(frechet_cell_fire, ase flavour); returns (seconds, energies, converged)."""
    import torch
    import torch_sim as ts
    from torch_sim.models.sevennet import SevenNetModel

    model = SevenNetModel(model=sevenn_model_for_torchsim(args.weights), device="cpu", dtype=torch.float32)
    atoms = [s.to_ase_atoms() for s in structures]
    model(ts.initialize_state(atoms[:1], model.device, model.dtype))  # warm-up
    converge = ts.generate_force_convergence_fn(force_tol=args.fmax, include_cell_forces=True)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        final = ts.optimize(
            system=atoms,
            model=model,
            optimizer=ts.frechet_cell_fire,
            convergence_fn=converge,
            max_steps=args.max_steps,
            steps_between_swaps=args.steps_between_swaps,
            autobatcher=False,
            md_flavor="ase_fire",
        )
    seconds = time.perf_counter() - t0
    energies = final.energy.detach().double().numpy()
    converged = converge(final).numpy()
    return seconds, energies, converged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--set", choices=("near", "pyxtal"), default="pyxtal", help="structure set (default pyxtal)")
    parser.add_argument("--n", type=int, default=16, help="number of structures (default 16)")
    parser.add_argument("--fmax", type=float, default=0.1, help="force threshold, eV/Å (default 0.1)")
    parser.add_argument("--max-steps", type=int, default=500, help="FIRE steps at most (default 500)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument(
        "--steps-between-swaps", type=int, default=1, help="TorchSim: steps between convergence checks (default 1)"
    )
    parser.add_argument("--weights", default="sevennet-0", help="crystal-sevennet weights name (default sevennet-0)")
    parser.add_argument("--max-atoms", type=int, default=12, help="pyxtal: atoms per cell at most (default 12)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="near: shared data folder")
    args = parser.parse_args(argv)

    try:
        import torch_sim  # noqa: F401
    except ImportError:
        print(
            "relax_torchsim: torch_sim is not installed here; run from a side venv with torch-sim-atomistic "
            "(see the module docstring)",
            file=sys.stderr,
        )
        return 2
    import torch

    torch.set_num_threads(args.threads)
    labels = None
    if args.set == "near":
        if not args.data.is_dir():
            print(f"relax_torchsim: shared data folder {args.data} is absent", file=sys.stderr)
            return 2
        structures, names = load_structures(args.data, args.n, 0.5, args.seed, 0.05, 0.02)
    else:
        structures, names, labels = load_pyxtal(args.n, args.seed, args.max_atoms)
    n_atoms = np.array([len(s) for s in structures])
    print(
        f"{args.set} set: {len(structures)} structures ({n_atoms.sum()} atoms, {n_atoms.min()}-{n_atoms.max()} per "
        f"cell), SevenNet weights {args.weights}, fmax={args.fmax} eV/Å, max_steps={args.max_steps}, "
        f"torch threads={torch.get_num_threads()}, TorchSim steps_between_swaps={args.steps_between_swaps}"
    )
    t_c, e_c, steps_c, conv_c = run_crystal(structures, names, args)
    print(
        f"crystal  crystal_sim.relax + SevenNetPotential: {t_c:8.2f} s  {len(structures) / t_c:.3f} structures/s  "
        f"converged {int(conv_c.sum())}/{len(conv_c)}  steps median {int(np.median(steps_c))}, "
        f"max {int(steps_c.max())}, total {int(steps_c.sum())}"
    )
    t_t, e_t, conv_t = run_torchsim(structures, args)
    print(
        f"torchsim optimize(frechet_cell_fire, ase_fire):  {t_t:8.2f} s  {len(structures) / t_t:.3f} structures/s  "
        f"converged {int(conv_t.sum())}/{len(conv_t)}"
    )
    print(f"speed-up (TorchSim / crystal): {t_t / t_c:.2f}x")
    de = (e_c - e_t) / n_atoms * 1000.0
    print(
        f"|ΔE| final energies (crystal - TorchSim): median {statistics.median(np.abs(de)):.3f} meV/atom, "
        f"max {np.abs(de).max():.3f} meV/atom; < 1 meV/atom: {int((np.abs(de) < 1).sum())}/{len(de)}"
    )
    if labels is not None:
        print(f"{'id':<16} {'crystal':<22} {'N':>3} {'steps':>5} {'E_crystal eV/at':>15} {'ΔE meV/at':>10}")
        for k in range(len(structures)):
            print(
                f"{names[k]:<16} {labels[k]:<22} {n_atoms[k]:>3} {steps_c[k]:>5} "
                f"{e_c[k] / n_atoms[k]:>15.4f} {de[k]:>10.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
