"""Make the neighbour-order golden fixture with the ORIGINAL CGCNN code (txie-93/cgcnn).

Run once, in a side virtualenv (never the project's), from the project root::

    python3.11 -m venv /tmp/cgref
    /tmp/cgref/bin/pip install torch==2.13.0 pymatgen==2026.10.24 numpy==2.4.6
    git clone https://github.com/txie-93/cgcnn /tmp/cgcnn_src
    git -C /tmp/cgcnn_src checkout f42ab233c4ee0c416879d6bc2d22a264418413ad
    PYTHONPATH=/tmp/cgcnn_src /tmp/cgref/bin/python plugins/cgcnn/tests/golden/make_golden.py

The original code path is used unchanged: ``cgcnn.data.CIFData`` (``get_all_neighbors``,
stable distance sort, padding, ``GaussianDistance``), ``collate_pool``,
``cgcnn.model.CrystalGraphConvNet`` in eval mode, the ``Normalizer`` of ``predict.py``
(``output * std + mean``; classification: ``exp(output)[:, 1]``). Only the file reader
is replaced: ``CIFData`` calls ``Structure.from_file(root/<id>.cif)``, which here returns
the in-memory structure of that id, so that the original sees exactly the cells the
tests give crystal (CIF text would round the coordinates).

Writes, in this folder:

* ``atom_init.json`` — random 16-d element features (seed 0) for the elements used;
* ``original_checkpoint.pth.tar`` — a random-weight ``CrystalGraphConvNet`` (atom_fea_len 16,
  n_conv 2, h_fea_len 16, n_h 2, random BatchNorm running statistics) in the format of
  the original ``main.py`` (``epoch, state_dict, best_mae_error, optimizer, normalizer,
  args``), loaded by the original ``predict.py`` as is;
* ``structures.json`` — synthetic cells: ideal cubic perovskites, rocksalt, CsCl,
  fluorite, fcc/bcc in several site orders and origins (equidistant neighbours at the
  12th slot), their 2x1x1 supercells, rattled copies and random generic cells;
* ``reference.json`` — per synthetic cell, the original ``CIFData`` neighbour indices
  (``nbr_fea_idx``) and distances, and the original model's prediction;
* ``published_heldout.csv`` — only where ``../shared/data`` is present: the predictions of
  the 8 published checkpoints on the 270 held-out crystals of ``heldout.py`` (the shared
  data themselves are not copied).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import cgcnn.data as cg_data  # noqa: E402  (the original code, on PYTHONPATH)
from cgcnn.model import CrystalGraphConvNet  # noqa: E402
from heldout import heldout_structures, synthetic_structures  # noqa: E402
from pymatgen.core import Lattice, Structure  # noqa: E402

SHARED = HERE.parents[3].parent / "shared" / "data"
SEED = 0


# ------------------------------------------------------------------ synthetic cells
def _cells() -> list[dict]:
    rng = np.random.default_rng(SEED)
    cells: list[dict] = []

    def add(name: str, lattice, numbers, frac) -> None:
        cells.append(
            {
                "id": name,
                "lattice": np.asarray(lattice, dtype=float).tolist(),
                "numbers": [int(z) for z in numbers],
                "frac_coords": np.asarray(frac, dtype=float).tolist(),
            }
        )

    perov_sites = np.array([[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    a_el, b_el, x_el = [38, 56, 20, 19, 57, 11], [22, 40, 41, 26, 25, 13], [8, 9, 7]
    for k in range(18):
        a = float(rng.uniform(3.7, 4.3))
        z = [a_el[k % 6], b_el[(k * 5) % 6], *[x_el[k % 3]] * 3]
        order = rng.permutation(5) if k % 3 else np.arange(5)
        shift = rng.uniform(0, 1, 3) if k % 4 == 1 else np.zeros(3)
        frac = perov_sites[order] + shift
        add(f"perovskite-{k}", np.eye(3) * a, np.array(z)[order], frac)
        if k % 6 == 0:  # 2x1x1 supercell
            f2 = np.concatenate([frac / [2, 1, 1], (frac + np.array([1, 0, 0])) / [2, 1, 1]])
            add(f"perovskite-{k}-2x1x1", np.diag([2 * a, a, a]), np.tile(np.array(z)[order], 2), f2)
        if k % 6 == 3:  # rattled: generic distances
            add(f"perovskite-{k}-rattled", np.eye(3) * a, np.array(z)[order], frac + rng.normal(0, 0.01, frac.shape))
    fcc = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    for k, (z1, z2, a) in enumerate([(11, 17, 5.64), (12, 8, 4.21), (3, 9, 4.03)]):
        frac = np.concatenate([fcc, fcc + 0.5])
        order = rng.permutation(8)
        add(f"rocksalt-{k}", np.eye(3) * a, np.array([z1] * 4 + [z2] * 4)[order], frac[order])
    for k, (z1, z2, a) in enumerate([(55, 17, 4.12), (26, 13, 2.91)]):
        add(f"cscl-{k}", np.eye(3) * a, [z1, z2], [[0, 0, 0], [0.5, 0.5, 0.5]])
        add(f"cscl-{k}-swapped", np.eye(3) * a, [z2, z1], [[0, 0, 0], [0.5, 0.5, 0.5]])
    frac = np.concatenate([fcc, fcc + 0.25, fcc + 0.75]) % 1.0
    add("fluorite-CaF2", np.eye(3) * 5.46, [20] * 4 + [9] * 8, frac)
    add("fcc-Cu", np.eye(3) * 3.61, [29] * 4, fcc)
    add("bcc-Fe", np.eye(3) * 2.87, [26] * 2, [[0, 0, 0], [0.5, 0.5, 0.5]])
    for k in range(8):  # generic cells: random lattice, 3-6 atoms at least 1.6 Å apart
        while True:
            lat = np.diag(rng.uniform(3.5, 6.0, 3)) + rng.uniform(-0.8, 0.8, (3, 3)) * (1 - np.eye(3))
            n = int(rng.integers(3, 7))
            frac = rng.uniform(0, 1, (n, 3))
            s = Structure(Lattice(lat), [1] * n, frac)
            dm = s.distance_matrix + np.eye(n) * 10
            if dm.min() > 1.6 and min(s.lattice.abc) > 2.0:
                break
        add(f"generic-{k}", lat, rng.choice([3, 8, 14, 22, 26, 30, 33, 52], n), frac)
    return cells


# ------------------------------------------------------------------ the original code
class _Registry:
    """Stands in for ``pymatgen.core.structure.Structure`` inside ``cgcnn.data`` (file reader only)."""

    structures: ClassVar[dict[str, Structure]] = {}

    @classmethod
    def from_file(cls, path: str) -> Structure:
        return cls.structures[Path(path).stem]


def original_dataset(items: list[tuple[str, Structure]], atom_init: Path, root: Path):
    """The original ``CIFData`` over ``items`` (ids written to id_prop.csv with target 0)."""
    root.mkdir(parents=True, exist_ok=True)
    ids = [f"s{k:04d}" for k in range(len(items))]
    _Registry.structures = {i: s for i, (_, s) in zip(ids, items, strict=True)}
    with (root / "id_prop.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([[i, 0] for i in ids])
    (root / "atom_init.json").write_bytes(atom_init.read_bytes())
    cg_data.Structure = _Registry  # the only change: read the structures from memory
    dataset = cg_data.CIFData(str(root))
    by_id = {}
    for k in range(len(dataset)):
        (atom_fea, nbr_fea, nbr_fea_idx), target, cif_id = dataset[k]
        by_id[cif_id] = ((atom_fea, nbr_fea, nbr_fea_idx), target, cif_id)
    return [by_id[i] for i in ids]  # in input order (CIFData shuffles)


def original_predict(path: Path, data: list) -> np.ndarray:
    """What the original ``predict.py`` computes (CPU, float32, eval mode), in input order."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    args = ckpt["args"]
    args = argparse.Namespace(**args) if isinstance(args, dict) else args
    structures = data[0][0]
    model = CrystalGraphConvNet(
        structures[0].shape[-1],
        structures[1].shape[-1],
        atom_fea_len=args.atom_fea_len,
        n_conv=args.n_conv,
        h_fea_len=args.h_fea_len,
        n_h=args.n_h,
        classification=args.task == "classification",
    )
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    inp, _, _ = cg_data.collate_pool(data)
    with torch.no_grad():
        out = model(*inp)
    if args.task == "classification":
        return torch.exp(out)[:, 1].numpy().astype(np.float64)
    mean, std = ckpt["normalizer"]["mean"], ckpt["normalizer"]["std"]
    return (out * std + mean).view(-1).numpy().astype(np.float64)


def random_checkpoint(path: Path, elements: list[int], atom_init: Path) -> None:
    gen = torch.Generator().manual_seed(SEED)
    feats = {str(z): torch.rand(16, generator=gen).round(decimals=3).tolist() for z in sorted(elements)}
    atom_init.write_text(json.dumps(feats))
    torch.manual_seed(SEED)
    model = CrystalGraphConvNet(16, 41, atom_fea_len=16, n_conv=2, h_fea_len=16, n_h=2, classification=False)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=gen) * 0.3)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=gen) + 0.5)
    args = {
        "task": "regression",
        "atom_fea_len": 16,
        "n_conv": 2,
        "h_fea_len": 16,
        "n_h": 2,
        "lr": 0.01,
        "optim": "SGD",
        "epochs": 1,
        "batch_size": 8,
    }
    optimizer = torch.optim.SGD(model.parameters(), 0.01, momentum=0.9)
    torch.save(
        {
            "epoch": 1,
            "state_dict": model.state_dict(),
            "best_mae_error": 1.0,
            "optimizer": optimizer.state_dict(),
            "normalizer": {"mean": torch.tensor(-1.5), "std": torch.tensor(2.0)},
            "args": args,
        },
        path,
    )


def main() -> None:
    cells = _cells()
    (HERE / "structures.json").write_text(json.dumps(cells, indent=0) + "\n")
    items = synthetic_structures(HERE / "structures.json")
    elements = sorted({z for c in cells for z in c["numbers"]})
    ckpt, atom_init = HERE / "original_checkpoint.pth.tar", HERE / "atom_init.json"
    random_checkpoint(ckpt, elements, atom_init)
    with tempfile.TemporaryDirectory() as tmp:
        data = original_dataset(items, atom_init, Path(tmp) / "synthetic")
        pred = original_predict(ckpt, data)
        reference = [
            {
                "id": name,
                "nbr_fea_idx": nbr_fea_idx.tolist(),
                # the distances the original fed to GaussianDistance (float64)
                "nbr_distance": [[float(x[1]) for x in nb[:12]] for nb in _sorted_neighbours(s)],
                "prediction": float(p),
            }
            for (name, s), ((_, _, nbr_fea_idx), _, _), p in zip(items, data, pred, strict=True)
        ]
        (HERE / "reference.json").write_text(json.dumps(reference) + "\n")
        print(f"synthetic: {len(items)} cells")
        pre = SHARED / "cgcnn" / "pre-trained"
        if pre.is_dir():
            held = heldout_structures(SHARED)
            data = original_dataset(held, SHARED / "cgcnn" / "sample-regression" / "atom_init.json", Path(tmp) / "held")
            models = sorted(p.name.removesuffix(".pth.tar") for p in pre.glob("*.pth.tar"))
            preds = {m: original_predict(pre / f"{m}.pth.tar", data) for m in models}
            with (HERE / "published_heldout.csv").open("w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["id", *models])
                for k, (name, _) in enumerate(held):
                    w.writerow([name, *(repr(float(preds[m][k])) for m in models)])
            print(f"held out: {len(held)} crystals x {len(models)} published models")
    for f in sorted(HERE.iterdir()):
        if f.is_file():
            print(f"{f.name}: {os.path.getsize(f)} bytes")


def _sorted_neighbours(s: Structure) -> list:
    """The lists of ``CIFData.__getitem__`` (``get_all_neighbors`` then a stable distance sort)."""
    return [sorted(nbrs, key=lambda x: x[1]) for nbrs in s.get_all_neighbors(8, include_index=True)]


if __name__ == "__main__":
    main()
