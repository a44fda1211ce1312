"""Make the golden fixture of crystal-mace's mace-torch loader, with mace-torch itself.

Run once, in a side virtualenv where the reference implementation is installed (never in the
project's environment; CI does not install mace-torch)::

    python3 -m venv /tmp/mace-ref
    /tmp/mace-ref/bin/pip install torch==2.13.0
    /tmp/mace-ref/bin/pip install --no-deps mace-torch==0.3.16 torch-ema==0.3
    /tmp/mace-ref/bin/pip install e3nn==0.4.4 opt_einsum opt_einsum_fx numpy ase matscipy \\
        torchmetrics prettytable h5py python-hostlist configargparse lmdb orjson gitpython tqdm pyyaml
    PYTHONPATH=plugins/mace/src OMP_NUM_THREADS=1 /tmp/mace-ref/bin/python plugins/mace/tests/golden/make_golden.py

(versions used for the committed files: mace-torch 0.3.16, e3nn 0.4.4, torch 2.13.0+cpu, ase 3.29.0,
matscipy 1.3.1, numpy 2.4.6; ``versions`` in the JSON records them.)

For each fixture it builds a SMALL random-weight ``ScaleShiftMACE`` with the foundation models'
architecture choices, ``torch.save``s the whole module as a ``.model`` file (the released format, kept
under /tmp: a pickle is not committed), unpickles it again, converts it with
``crystal_mace.convert.convert_module`` (what ``crystal weights import --trust-pickle`` runs) into
``<name>.payload.pt`` (weights-only), and evaluates the unpickled model with mace-torch's own
``MACECalculator`` (matscipy neighbour lists) in float64 on a few periodic structures: energy (eV),
forces (eV/Å) and stress (eV/Å³, ASE sign, Voigt xx yy zz yz xz xy) go to ``<name>.reference.json``.

* ``mp0``: MACE-MP-0's choices: residual interaction blocks in every layer (also the first), 2 layers,
  per-layer correlation 3, max_ell 2 (3 in the release), 10 Bessel functions, p = 5 envelope, a 3-layer radial MLP, 16x0e
  readout MLP with SiLU, nonzero E0s, scale and shift (channels reduced to 8x0e + 8x1o).
* ``mpa0``: MACE-MPA-0's additions: ZBL pair repulsion and the Agnesi distance transform (8x0e).
* ``off23``: MACE-OFF23's choice (``--model MACE``): a non-residual first interaction (8x0e + 8x1o).
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ELEMENTS = [1, 8, 14, 26]  # H, O, Si, Fe


def build(name: str) -> torch.nn.Module:
    from e3nn import o3
    from mace.modules import interaction_classes
    from mace.modules.models import ScaleShiftMACE

    torch.manual_seed({"mp0": 0, "mpa0": 1, "off23": 2}[name])
    common = dict(
        r_max=4.5,
        num_bessel=10,
        num_polynomial_cutoff=5,
        max_ell=2,  # MACE-MP-0 uses 3; 2 keeps the committed coupling tensors small (D^3 = 729, not 4096)
        interaction_cls=interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=interaction_classes["RealAgnosticResidualInteractionBlock"],
        num_interactions=2,
        num_elements=len(ELEMENTS),
        hidden_irreps=o3.Irreps("8x0e + 8x1o"),
        MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=np.array([-3.2, -4.9, -5.4, -8.3]),
        avg_num_neighbors=9.5,
        atomic_numbers=ELEMENTS,
        correlation=[3, 3],
        gate=torch.nn.functional.silu,
        radial_MLP=[16, 16, 16],
        atomic_inter_scale=0.8,
        atomic_inter_shift=-0.15,
    )
    if name == "mpa0":
        common.update(
            hidden_irreps=o3.Irreps("8x0e"),
            pair_repulsion=True,
            distance_transform="Agnesi",
            atomic_inter_scale=1.1,
            atomic_inter_shift=0.05,
        )
    if name == "off23":
        common.update(
            interaction_cls_first=interaction_classes["RealAgnosticInteractionBlock"],
            correlation=[3, 2],
            atomic_inter_scale=0.6,
            atomic_inter_shift=0.0,
        )
    model = ScaleShiftMACE(**common)
    with torch.no_grad():  # random weights of a visible size everywhere (the default init is small in places)
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def structures() -> list:
    from ase import Atoms
    from ase.build import bulk

    rng = np.random.default_rng(0)
    out = []
    si = bulk("Si", "diamond", a=5.43)  # primitive fcc cell: non-orthogonal, 1 element
    si.positions += rng.normal(0, 0.05, si.positions.shape)
    out.append(("si_primitive", si))
    feo = bulk("FeO", "rocksalt", a=4.33, cubic=True)  # 8 atoms, 2 elements, orthogonal
    feo.positions += rng.normal(0, 0.08, feo.positions.shape)
    out.append(("feo_rocksalt", feo))
    cell = np.array([[4.8, 0.0, 0.0], [1.3, 4.6, 0.0], [-0.7, 0.9, 5.1]])  # triclinic, 3 elements
    frac = rng.random((9, 3))
    tri = Atoms(numbers=[14, 14, 14, 8, 8, 8, 8, 1, 1], scaled_positions=frac, cell=cell, pbc=True)
    d = tri.get_all_distances(mic=True) + np.eye(len(tri)) * 10
    for _ in range(200):  # push apart atoms closer than 1.0 Å (keep a short ZBL-range pair > 0.9 Å)
        if d.min() > 1.0:
            break
        _i, j = np.unravel_index(np.argmin(d), d.shape)
        tri.positions[j] += rng.normal(0, 0.3, 3)
        d = tri.get_all_distances(mic=True) + np.eye(len(tri)) * 10
    out.append(("sioh_triclinic", tri))
    big = bulk("Si", "diamond", a=5.43, cubic=True).repeat((2, 1, 1))  # 16 atoms, sheared cell
    big.set_cell(big.cell.array + np.array([[0, 0, 0], [0.6, 0, 0], [0, 0.4, 0]]), scale_atoms=True)
    big.positions += rng.normal(0, 0.05, big.positions.shape)
    big.numbers[[3, 7]] = 8
    out.append(("sio_sheared", big))
    return out


def main() -> None:
    import ase
    import e3nn
    import mace
    import matscipy
    from mace.calculators import MACECalculator

    from crystal_mace.convert import convert_module

    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    versions = {
        "mace-torch": mace.__version__,
        "e3nn": e3nn.__version__,
        "torch": torch.__version__,
        "ase": ase.__version__,
        "matscipy": matscipy.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    tmp = Path(os.environ.get("MACE_GOLDEN_TMP", tempfile.mkdtemp(prefix="mace-golden-")))
    for name in ("mp0", "mpa0", "off23"):
        model = build(name)
        pickle = tmp / f"{name}.model"
        torch.save(model, pickle)  # the released format: a pickled module
        loaded = torch.load(pickle, map_location="cpu", weights_only=False)
        payload = convert_module(loaded)
        torch.save(payload, HERE / f"{name}.payload.pt")
        calc = MACECalculator(model_paths=str(pickle), device="cpu", default_dtype="float64")
        records = []
        for sid, atoms in structures():
            atoms = atoms.copy()
            atoms.calc = calc
            records.append(
                {
                    "id": sid,
                    "numbers": atoms.numbers.tolist(),
                    "positions": atoms.positions.tolist(),
                    "cell": atoms.cell.array.tolist(),
                    "energy": float(atoms.get_potential_energy()),
                    "forces": atoms.get_forces().tolist(),
                    "stress": atoms.get_stress(voigt=True).tolist(),
                }
            )
        ref = {"model": name, "dtype": "float64", "versions": versions, "structures": records}
        (HERE / f"{name}.reference.json").write_text(json.dumps(ref, indent=1) + "\n", encoding="utf-8")
        size = (HERE / f"{name}.payload.pt").stat().st_size
        print(
            f"{name}: {pickle} ({pickle.stat().st_size} B) -> {name}.payload.pt ({size} B), {len(records)} structures"
        )


if __name__ == "__main__":
    main()
