"""Speed and size of the ``mace`` potential on a 64-atom fcc Ni cell (CPU).

Usage::

    OMP_NUM_THREADS=1 python plugins/mace/benchmarks/speed.py [--threads 1] [--repeats 5]

For each width (paper/reference default ``128x0e + 128x1o``, max_ell 3; reduced ``32x0e + 32x1o``,
max_ell 2; both correlation 3, 2 layers, r_max 5 Å) and precision: parameter count (one element),
time of an evaluation (energy + forces + stress: one forward and one backward through the
positions and strain, as ``compute``) and of a training step (the same with ``create_graph``,
then the loss's backward to the parameters), min and median over ``--repeats`` after a warm-up.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from ase.build import bulk

    from crystal.batch import CrystalBatch
    from crystal.neighbors import radius_graph
    from crystal_mace.potential import MACEPotential

    atoms = bulk("Ni", "fcc", a=3.52).repeat((4, 4, 4))
    atoms.rattle(0.02, seed=0)
    batch = CrystalBatch.from_atoms([atoms], ids=["Ni64"]).to(dtype=torch.float64)
    forces = torch.zeros((len(atoms), 3), dtype=torch.float64)
    edges = radius_graph(batch, 5.0).edge_index.shape[1]
    print(
        f"# {len(atoms)}-atom fcc Ni (a = 3.52 Å, rattled 0.02 Å), {edges} edges within 5 Å; "
        f"torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or platform.machine()}"
    )
    print("| width | dtype | parameters | evaluate E+F+S (s) min / median | train step (s) min / median |")
    print("| --- | --- | --- | --- | --- |")
    widths = [
        ("128x0e + 128x1o, max_ell 3", {}),
        ("32x0e + 32x1o, max_ell 2", {"hidden_irreps": "32x0e + 32x1o", "max_ell": 2}),
    ]
    for label, kw in widths:
        for dtype in ("float64", "float32"):
            pot = MACEPotential(elements=("Ni",), dtype=dtype, avg_num_neighbors=edges / len(atoms), device="cpu", **kw)
            net = pot.net
            n_params = sum(p.numel() for p in net.model.parameters())
            pot.compute(batch)  # warm-up
            evals = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                pot.compute(batch)
                evals.append(time.perf_counter() - t)
            net.train()
            steps = []
            for _ in range(args.repeats + 1):
                t = time.perf_counter()
                e, f, _s = net(batch, forces=True, stress=True, create_graph=True)
                loss = (e / len(atoms)).pow(2).sum() + 100 * (f - forces.to(f.dtype)).pow(2).mean()
                loss.backward()
                net.zero_grad(set_to_none=True)
                steps.append(time.perf_counter() - t)
            net.eval()
            steps = steps[1:]
            print(
                f"| {label} | {dtype} | {n_params:,} | {min(evals):.3f} / {statistics.median(evals):.3f} | "
                f"{min(steps):.3f} / {statistics.median(steps):.3f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
