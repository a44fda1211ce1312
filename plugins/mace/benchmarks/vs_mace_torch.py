"""crystal-mace vs mace-torch on the SAME model: inference throughput and MD step time (CPU).

Optional: needs mace-torch importable (the plugin does not depend on it), e.g. beside the project::

    pip install --no-deps --target /tmp/mt mace-torch==0.3.16 torch-ema
    PYTHONPATH=/tmp/mt OMP_NUM_THREADS=1 python plugins/mace/benchmarks/vs_mace_torch.py

The model is a random-weight mace-torch ``ScaleShiftMACE`` with MACE-MP-0 small's architecture
(128x0e, max_ell 3, correlation 3, 2 residual layers, 10 Bessel, r_max 6 Å, radial MLP [64, 64, 64]),
``torch.save``d as a ``.model`` file like the release, and loaded by crystal exactly as a released file
is (``convert_module`` -> weights-only payload -> ``MACEPotential``); the script first checks that both
give the same energies. Then, on rattled 64-atom SiO cells:

* inference: energy + forces + stress of ``--structures`` structures, one at a time through each
  package's ASE calculator (mace-torch's ``MACECalculator``, crystal's ``CrystalCalculator``), and
  crystal's batched ``MACEPotential.compute`` of all of them at once;
* MD: ``--steps`` velocity-Verlet steps (ASE, 1 fs) with each calculator, seconds per step.

Times are min / median of ``--repeats``; ratios are mace-torch time / crystal time (> 1: crystal faster).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def _mp0_small_like(zs: list[int]) -> torch.nn.Module:
    from e3nn import o3
    from mace.modules import interaction_classes
    from mace.modules.models import ScaleShiftMACE

    torch.manual_seed(0)
    model = ScaleShiftMACE(
        r_max=6.0,
        num_bessel=10,
        num_polynomial_cutoff=5,
        max_ell=3,
        interaction_cls=interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=interaction_classes["RealAgnosticResidualInteractionBlock"],
        num_interactions=2,
        num_elements=len(zs),
        hidden_irreps=o3.Irreps("128x0e"),
        MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=np.linspace(-5.0, -3.0, len(zs)),
        avg_num_neighbors=30.0,
        atomic_numbers=zs,
        correlation=3,
        gate=torch.nn.functional.silu,
        radial_MLP=[64, 64, 64],
        atomic_inter_scale=0.8,
        atomic_inter_shift=-0.1,
    )
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    return model


def _time(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts), statistics.median(ts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--structures", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    args = parser.parse_args()
    torch.set_num_threads(1)

    import mace
    from ase import units
    from ase.build import bulk
    from ase.md.verlet import VelocityVerlet
    from mace.calculators import MACECalculator

    from crystal.batch import CrystalBatch
    from crystal_mace.convert import convert_module
    from crystal_mace.potential import MACEPotential
    from crystal_sim.calculator import CrystalCalculator

    zs = [8, 14]
    torch.set_default_dtype(torch.float64)
    tmp = Path(tempfile.mkdtemp(prefix="mace-bench-"))
    torch.save(_mp0_small_like(zs), tmp / "bench.model")
    payload = convert_module(torch.load(tmp / "bench.model", weights_only=False))
    torch.save(payload, tmp / "bench.payload.pt")
    theirs = MACECalculator(model_paths=str(tmp / "bench.model"), device="cpu", default_dtype=args.dtype)
    pot = MACEPotential(checkpoint=tmp / "bench.payload.pt", dtype=args.dtype, batch_size=args.structures)
    ours = CrystalCalculator(pot)

    rng = np.random.default_rng(0)
    cells = []
    for k in range(args.structures):
        a = bulk("Si", "diamond", a=5.43, cubic=True).repeat((2, 2, 2))
        a.numbers[rng.choice(len(a), 8, replace=False)] = 8
        a.rattle(0.05, seed=k)
        cells.append(a)
    n = len(cells[0])

    def energies(calc: object) -> list[float]:
        out = []
        for a in cells:
            b = a.copy()
            b.calc = calc
            out.append(b.get_potential_energy())
        return out

    e_t, e_o = np.array(energies(theirs)), np.array(energies(ours))
    print(f"# mace-torch {mace.__version__}, torch {torch.__version__}, {args.dtype}, 1 thread, {n} atoms/cell")
    print(f"# same model: max |ΔE| / |E| = {np.max(np.abs(e_t - e_o) / np.abs(e_t)):.1e}")

    def one_by_one(calc: object) -> Callable[[], None]:
        def run() -> None:
            for a in cells:
                b = a.copy()
                b.calc = calc
                b.get_stress()  # first: one evaluation gives all three (crystal's calculator adds stress on request)
                b.get_potential_energy()
                b.get_forces()

        return run

    batch = CrystalBatch.from_atoms(cells).to(dtype=torch.float64)
    t_ref = _time(one_by_one(theirs), args.repeats)
    t_ours = _time(one_by_one(ours), args.repeats)
    t_batch = _time(lambda: pot.compute(batch), args.repeats)

    def md(calc: object) -> Callable[[], None]:
        def run() -> None:
            a = cells[0].copy()
            a.calc = calc
            rng_v = np.random.default_rng(1)
            a.set_momenta(rng_v.normal(0, 0.02, (len(a), 3)) * a.get_masses()[:, None])
            VelocityVerlet(a, timestep=1.0 * units.fs).run(args.steps)

        return run

    m_ref = _time(md(theirs), args.repeats)
    m_ours = _time(md(ours), args.repeats)
    per = args.structures
    print("| measurement | mace-torch | crystal-mace | ratio (mace-torch / crystal) |")
    print("| --- | --- | --- | --- |")
    print(
        f"| E+F+σ, one structure at a time (structures/s) | {per / t_ref[1]:.2f} | {per / t_ours[1]:.2f} | "
        f"{t_ref[1] / t_ours[1]:.2f} |"
    )
    print(
        f"| E+F+σ, crystal batched {per} at once (structures/s) | — | {per / t_batch[1]:.2f} | {t_ref[1] / t_batch[1]:.2f} |"
    )
    print(
        f"| MD step, velocity Verlet via ASE (s/step) | {m_ref[1] / args.steps:.3f} | {m_ours[1] / args.steps:.3f} | "
        f"{m_ref[1] / m_ours[1]:.2f} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
