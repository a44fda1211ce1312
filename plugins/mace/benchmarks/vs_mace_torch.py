"""Timing of our MACE against mace-torch's ``ScaleShiftMACE`` (same architecture), CPU, one thread.

Optional: needs mace-torch importable (the plugin does not depend on it)::

    pip install --no-deps --target /tmp/mt mace-torch torch-ema
    PYTHONPATH=/tmp/mt OMP_NUM_THREADS=1 python plugins/mace/benchmarks/vs_mace_torch.py

Both models get the same periodic graph of a rattled 64-atom fcc Ni cell (5 Å) and compute
energy + forces (one forward, one backward through the positions). The runs alternate, and
the script prints the min and median of ``--repeats`` runs for each width and precision.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch


def _ours(model: torch.nn.Module, pos: torch.Tensor, edge_index: torch.Tensor, shifts: torch.Tensor) -> None:
    n = pos.shape[0]
    p = pos.clone().requires_grad_(True)
    vec = p[edge_index[1]] - p[edge_index[0]] + shifts
    e = model(torch.zeros(n, dtype=torch.long), edge_index, vec, torch.zeros(n, dtype=torch.long), 1)
    torch.autograd.grad(e.sum(), p)


def _ref(model: torch.nn.Module, data: dict[str, torch.Tensor], pos: torch.Tensor) -> None:
    model(dict(data, positions=pos.clone()), training=False, compute_force=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)

    import numpy as np
    from ase.build import bulk
    from e3nn import o3
    from mace import modules
    from mace.modules.models import ScaleShiftMACE

    from crystal.batch import CrystalBatch
    from crystal.neighbors import radius_graph
    from crystal_mace.model import MACE

    atoms = bulk("Ni", "fcc", a=3.52).repeat((4, 4, 4))
    atoms.rattle(0.02, seed=0)
    batch = CrystalBatch.from_atoms([atoms]).to(dtype=torch.float64)
    graph = radius_graph(batch, 5.0)
    i, j = graph.edge_index
    n = len(atoms)
    print(f"# {n} atoms, {i.numel()} edges; energy + forces per call (s), min / median of {args.repeats}")
    print("| width | dtype | crystal-mace | mace-torch 0.3.16 |")
    print("| --- | --- | --- | --- |")
    for hidden, ell in (("128x0e + 128x1o", 3), ("32x0e + 32x1o", 2)):
        for dtype in (torch.float64, torch.float32):
            torch.set_default_dtype(dtype)
            mine = MACE(1, max_ell=ell, hidden_irreps=hidden, avg_num_neighbors=i.numel() / n)
            theirs = ScaleShiftMACE(
                r_max=5.0,
                num_bessel=8,
                num_polynomial_cutoff=5,
                max_ell=ell,
                interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
                interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
                num_interactions=2,
                num_elements=1,
                hidden_irreps=o3.Irreps(hidden),
                MLP_irreps=o3.Irreps("16x0e"),
                atomic_energies=np.zeros(1),
                avg_num_neighbors=i.numel() / n,
                atomic_numbers=[28],
                correlation=3,
                gate=torch.nn.functional.silu,
                radial_MLP=[64, 64, 64],
                atomic_inter_scale=1.0,
                atomic_inter_shift=0.0,
            )
            torch.set_default_dtype(torch.float64)
            pos = batch.cart_coords.to(dtype)
            cell = batch.lattices[0].to(dtype)
            shifts = graph.shifts.to(dtype) @ cell

            ours = functools.partial(_ours, mine, pos, graph.edge_index, shifts)
            data = {
                "positions": pos.clone(),
                "node_attrs": torch.ones(n, 1, dtype=dtype),
                "edge_index": torch.stack([j, i]),
                "shifts": -shifts,  # mace-torch: r_receiver - r_sender + shift
                "unit_shifts": -graph.shifts.to(dtype),
                "cell": cell,
                "batch": torch.zeros(n, dtype=torch.long),
                "ptr": torch.tensor([0, n]),
                "head": torch.zeros(1, dtype=torch.long),
            }

            ref = functools.partial(_ref, theirs, data, pos)
            ours()
            ref()
            t_ours, t_ref = [], []
            for _ in range(args.repeats):
                t = time.perf_counter()
                ours()
                t_ours.append(time.perf_counter() - t)
                t = time.perf_counter()
                ref()
                t_ref.append(time.perf_counter() - t)
            print(
                f"| {hidden}, max_ell {ell} | {str(dtype).removeprefix('torch.')} | "
                f"{min(t_ours):.3f} / {statistics.median(t_ours):.3f} | {min(t_ref):.3f} / {statistics.median(t_ref):.3f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
