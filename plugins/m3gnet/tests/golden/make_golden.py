"""Write the golden M3GNet fixture with the reference implementation (matgl), once.

Run in a SIDE virtual environment (never the project's .venv)::

    python3 -m venv /tmp/m3gnet-ref
    /tmp/m3gnet-ref/bin/pip install torch==2.13.0          # CPU wheel
    /tmp/m3gnet-ref/bin/pip install matgl==4.1.2           # PyG backend (no DGL); pulls torch-geometric 2.8.1,
                                                           # pymatgen-core 2026.10.16, ase 3.29.0
    OMP_NUM_THREADS=1 /tmp/m3gnet-ref/bin/python plugins/m3gnet/tests/golden/make_golden.py

It builds a SMALL random-weight ``matgl.models.M3GNet`` with the released universal potential's
layout (spherical Bessel basis, max_n = max_l = 3, 3 blocks, cutoff 5 Å, three-body cutoff 4 Å,
extensive weighted-atom readout; widths 16 instead of 64) wrapped in ``matgl.apps.pes.Potential``
with non-trivial ``data_mean``, ``data_std`` and random ``element_refs``; ``element_types`` are
deliberately NOT in atomic-number order. The model is saved with matgl's own ``Potential.save``
(``model.json`` + ``state.pt``; the pickled ``model.pt`` is deleted: crystal never reads it) into
``golden/m3gnet-small/`` and matgl's ASE calculator (``PESCalculator``, stress in eV/Å³, ASE sign)
(``data_std`` = 300 eV: random weights give a nearly flat
energy surface, and forces of ~1e-4 eV/Å would make their parity test meaningless) evaluates energy,
forces and stress on four crystals, in float32 (matgl's default) and float64
(``Potential.double()``), written to ``golden/reference.json`` with the structures. Seeds fixed.
"""

from __future__ import annotations

import copy
import json
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ELEMENT_TYPES = ("Si", "O", "Na", "Cl", "Mg", "Cu")  # not sorted by Z on purpose


def structures():
    from ase import Atoms
    from ase.build import bulk

    rng = np.random.default_rng(7)
    si = bulk("Si", "diamond", a=5.43)
    si.rattle(0.05, seed=1)
    nacl = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    nacl.rattle(0.05, seed=2)
    cu = bulk("Cu", "fcc", a=3.61) * (2, 1, 1)
    cu.rattle(0.05, seed=3)
    # a non-orthogonal (triclinic) two-element cell: Mg2O3-like random positions, min distance > 1.7 Å
    cell = np.array([[4.3, 0.0, 0.0], [1.1, 4.0, 0.0], [0.7, -0.9, 4.6]])
    while True:
        frac = rng.random((5, 3))
        tri = Atoms("Mg2O3", scaled_positions=frac, cell=cell, pbc=True)
        d = tri.get_all_distances(mic=True)
        if d[np.triu_indices(5, 1)].min() > 1.7:
            break
    return {"Si2-rattled": si, "NaCl-cubic-rattled": nacl, "Cu2-rattled": cu, "Mg2O3-triclinic": tri}


def main() -> None:
    import matgl
    from matgl.apps.pes import Potential
    from matgl.ext.ase import PESCalculator
    from matgl.models import M3GNet

    torch.manual_seed(0)
    model = M3GNet(
        element_types=ELEMENT_TYPES,
        dim_node_embedding=16,
        dim_edge_embedding=16,
        units=16,
        max_n=3,
        max_l=3,
        nblocks=3,
        rbf_type="SphericalBessel",
        is_intensive=False,
        readout_type="weighted_atom",
        cutoff=5.0,
        threebody_cutoff=4.0,
        use_smooth=False,
        use_phi=False,
        activation_type="swish",
    )
    refs = torch.linspace(-3.0, -0.5, len(ELEMENT_TYPES)) + 0.1 * torch.randn(len(ELEMENT_TYPES))
    pot = Potential(model=model, data_mean=0.7, data_std=300.0, element_refs=refs, calc_stresses=True)
    out_dir = HERE / "m3gnet-small"
    pot.save(out_dir)
    (out_dir / "model.pt").unlink()  # pickled init args: not needed, never read by crystal

    crystals = structures()
    result: dict = {
        "versions": {p: version(p) for p in ("matgl", "torch", "torch-geometric", "pymatgen-core", "ase", "numpy")},
        "structures": {},
        "float32": {},
        "float64": {},
    }
    for name, atoms in crystals.items():
        result["structures"][name] = {
            "numbers": atoms.numbers.tolist(),
            "cell": atoms.cell.array.tolist(),
            "positions": atoms.positions.tolist(),
        }
    for precision, p in (("float32", pot), ("float64", copy.deepcopy(pot).double())):
        calc = PESCalculator(p, stress_unit="eV/A3")
        for name, atoms in crystals.items():
            a = atoms.copy()
            a.calc = calc
            result[precision][name] = {
                "energy": float(a.get_potential_energy()),
                "forces": a.get_forces().tolist(),
                "stress_voigt": a.get_stress().tolist(),  # xx yy zz yz xz xy, eV/Å³, ASE sign
            }
    result["matgl_float_th"] = str(matgl.float_th)
    (HERE / "reference.json").write_text(json.dumps(result, indent=1) + "\n")
    for name in crystals:
        print(name, result["float32"][name]["energy"], result["float64"][name]["energy"])


if __name__ == "__main__":
    main()
