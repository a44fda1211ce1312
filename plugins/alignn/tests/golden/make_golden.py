"""Make the ALIGNN golden fixture with the REFERENCE implementation (usnistgov/alignn).

Run once, in a side virtualenv (never in crystal's), from the repository root::

    python3.11 -m venv /tmp/alignn-ref
    /tmp/alignn-ref/bin/pip install torch==2.13.0 alignn==2026.8.11 dgl==2.1.0 pymatgen pyyaml
    /tmp/alignn-ref/bin/pip install --no-deps torchdata==0.7.1      # dgl 2.1 imports torchdata.datapipes
    OMP_NUM_THREADS=1 /tmp/alignn-ref/bin/python plugins/alignn/tests/golden/make_golden.py

Versions used for the committed files: alignn 2026.8.11, dgl 2.1.0 (the newest dgl wheel on
PyPI for CPython 3.11), jarvis-tools 2026.6.12, torch 2.13.0+cpu, numpy 2.4.6, Python 3.11.7.
dgl 2.1.0 ships its GraphBolt library only for torch <= 2.2, so this script registers an empty
``dgl.graphbolt`` module before importing dgl (GraphBolt is dgl's data-loading package; the
ALIGNN model and graph code do not use it).

What it writes (deterministic, seed 0), all small:

* ``alignn_golden.zip`` — a random-weight ``alignn.models.alignn.ALIGNN`` (the released
  layout: 92 CGCNN atom features, 80 bond / 40 angle RBF bins; reduced widths: hidden 32,
  embedding 16, 2 ALIGNN + 2 GCN layers) laid out like the released figshare zips: a folder
  with ``config.json`` (the reference ``TrainingConfig`` as JSON) and two ignite checkpoints
  ``checkpoint_2.pt`` / ``checkpoint_3.pt`` (``{"model", "optimizer", "lr_scheduler",
  "trainer"}``); the reference loader uses the last one in archive order, checkpoint_3.pt,
  whose weights differ from checkpoint_2.pt's.
* ``alignn_golden_class.zip`` — the same layout with ``best_model.pt`` (a bare state dict)
  of a classification model (2 classes, LogSoftmax output).
* ``atom_init.json`` — jarvis-tools' CGCNN element features of the elements used.
* ``golden.npz`` — the structures (lattice, frac coords, Z) as given to both codes; the
  reference graphs (``Graph.atom_dgl_multigraph``, k-nearest, cutoff 8, 12 neighbours,
  use_canonize=True: source, destination, bond vector); the reference predictions in float32
  (default dtype) and float64 (``torch.set_default_dtype(torch.float64)`` before building
  graph and model), and the classification model's log-probabilities.
"""

from __future__ import annotations

import io
import json
import sys
import types
import zipfile
from pathlib import Path

import numpy as np

sys.modules.setdefault("dgl.graphbolt", types.ModuleType("dgl.graphbolt"))  # see the docstring
sys.modules["dgl.graphbolt"].__path__ = []  # type: ignore[attr-defined]

import torch  # noqa: E402
from alignn.config import TrainingConfig  # noqa: E402
from alignn.graphs import Graph  # noqa: E402
from alignn.models.alignn import ALIGNN, ALIGNNConfig  # noqa: E402
from jarvis.core.atoms import Atoms  # noqa: E402
from jarvis.core.specie import get_node_attributes  # noqa: E402

HERE = Path(__file__).parent
SYMBOLS = {1: "H", 3: "Li", 6: "C", 8: "O", 15: "P", 18: "Ar", 22: "Ti", 26: "Fe", 30: "Zn", 38: "Sr", 14: "Si"}


def structures() -> list[tuple[str, np.ndarray, np.ndarray, list[int]]]:
    """(name, lattice (3, 3) rows, frac (N, 3) in [0, 1), Z): non-cubic cells, exact ties,
    self-image bonds and a sparse cell that needs the reference's cutoff extension."""
    rng = np.random.default_rng(0)
    out = []
    a = 3.905  # ideal cubic perovskite: many exactly equidistant neighbours
    out.append(
        (
            "SrTiO3-cubic",
            np.eye(3) * a,
            np.array([[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]], dtype=float),
            [38, 22, 8, 8, 8],
        )
    )
    h = 5.43 / 2  # diamond Si, fcc primitive cell (non-orthogonal, self-image bonds)
    out.append(("Si-diamond", np.array([[0, h, h], [h, 0, h], [h, h, 0]]), np.array([[0, 0, 0], [0.25] * 3]), [14, 14]))
    b = 2.87 / 2  # bcc Fe, one-atom primitive cell: 8 + 6 tied neighbours, all self-images
    out.append(("Fe-bcc", np.array([[-b, b, b], [b, -b, b], [b, b, -b]]), np.array([[0.0, 0.0, 0.0]]), [26]))
    aw, cw = 3.25, 5.21  # wurtzite ZnO, hexagonal
    hexa = np.array([[aw, 0, 0], [-aw / 2, aw * np.sqrt(3) / 2, 0], [0, 0, cw]])
    u = 0.382
    frac = np.array([[1 / 3, 2 / 3, 0], [2 / 3, 1 / 3, 0.5], [1 / 3, 2 / 3, u], [2 / 3, 1 / 3, 0.5 + u]])
    out.append(("ZnO-wurtzite", hexa, frac, [30, 30, 8, 8]))
    tri = np.array([[4.7, 0.0, 0.0], [0.9, 5.3, 0.0], [-0.6, 1.1, 6.1]])  # triclinic, rattled, no ties
    frac = np.clip(rng.uniform(0.05, 0.95, size=(6, 3)), 0, 0.999)
    out.append(("LiFePO-triclinic", tri, frac, [3, 26, 15, 8, 8, 1]))
    out.append(("Ar-sparse", np.eye(3) * 9.0, np.array([[0.1, 0.2, 0.3]]), [18]))  # 0 neighbours within 8 Å
    return out


def jarvis_atoms(lattice: np.ndarray, frac: np.ndarray, z: list[int]) -> Atoms:
    return Atoms(lattice_mat=lattice, coords=frac, elements=[SYMBOLS[i] for i in z], cartesian=False)


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Random weights and BatchNorm statistics (so eval-mode BatchNorm is not the identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if p.dim() > 1 else 0.1))
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm1d):
                mod.running_mean.copy_(torch.randn(mod.num_features, generator=gen) * 0.2)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=gen) + 0.5)


def model_config(**kw) -> ALIGNNConfig:
    return ALIGNNConfig(name="alignn", alignn_layers=2, gcn_layers=2, hidden_features=32, embedding_features=16, **kw)


def training_config(model: ALIGNNConfig, target: str) -> dict:
    cfg = TrainingConfig(
        target=target,
        dataset="dft_3d",
        atom_features="cgcnn",
        neighbor_strategy="k-nearest",
        cutoff=8.0,
        max_neighbors=12,
        epochs=3,
        model=model,
    )
    return json.loads(cfg.model_dump_json())


def ignite_checkpoint(model: torch.nn.Module) -> bytes:
    """What ignite's Checkpoint saves for the reference's train loop (to_save = model,
    optimizer, lr_scheduler, trainer), with this torch's state dicts."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, epochs=3, steps_per_epoch=10)
    buf = io.BytesIO()
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "lr_scheduler": sched.state_dict(),
            "trainer": {"epoch_length": 10, "max_epochs": 3, "iteration": 30},
        },
        buf,
    )
    return buf.getvalue()


def write_zip(path: Path, folder: str, config: dict, members: dict[str, bytes]) -> None:
    files = {"config.json": json.dumps(config, indent=2).encode(), **members}
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():  # fixed timestamps: the same bytes on every run
            info = zipfile.ZipInfo(f"{folder}/{name}", date_time=(2021, 1, 1, 0, 0, 0))
            zf.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)


def predict(model: ALIGNN, cases, dtype: torch.dtype) -> tuple[np.ndarray, list[dict]]:
    torch.set_default_dtype(dtype)
    try:
        model = model.to(dtype).eval()
        preds, graphs = [], []
        for _, lattice, frac, z in cases:
            g, lg = Graph.atom_dgl_multigraph(jarvis_atoms(lattice, frac, z), cutoff=8.0, max_neighbors=12)
            u, v = g.edges()
            graphs.append(
                {"u": u.numpy(), "v": v.numpy(), "r": g.edata["r"].numpy().astype(np.float64), "lg": lg.num_edges()}
            )
            with torch.no_grad():
                preds.append(model((g, lg, torch.tensor(lattice))).detach().double().reshape(-1).numpy())
        return np.stack(preds), graphs
    finally:
        torch.set_default_dtype(torch.float32)


def main() -> None:
    torch.manual_seed(0)
    cases = structures()

    # regression model, two ignite checkpoints (the last in archive order is the one used)
    cfg = model_config()
    early, model = ALIGNN(cfg), ALIGNN(cfg)
    randomise(early, 1)
    randomise(model, 2)
    write_zip(
        HERE / "alignn_golden.zip",
        "alignn_golden",
        training_config(cfg, "formation_energy_peratom"),
        {"checkpoint_2.pt": ignite_checkpoint(early), "checkpoint_3.pt": ignite_checkpoint(model)},
    )
    pred32, graphs = predict(model, cases, torch.float32)
    torch.set_default_dtype(torch.float64)  # RBF centres and widths built in float64 too
    model64 = ALIGNN(cfg)
    torch.set_default_dtype(torch.float32)
    model64.load_state_dict({k: v for k, v in model.state_dict().items() if not k.endswith(".centers")}, strict=False)
    pred64, graphs64 = predict(model64, cases, torch.float64)

    # classification model, best_model.pt = bare state dict
    ccfg = model_config(classification=True, num_classes=2)
    cmodel = ALIGNN(ccfg)
    randomise(cmodel, 3)
    buf = io.BytesIO()
    torch.save(cmodel.state_dict(), buf)
    write_zip(
        HERE / "alignn_golden_class.zip",
        "alignn_golden_class",
        training_config(ccfg, "optb88vdw_bandgap"),
        {"best_model.pt": buf.getvalue()},
    )
    cpred32, _ = predict(cmodel, cases, torch.float32)

    zs = sorted({z for case in cases for z in case[3]})
    (HERE / "atom_init.json").write_text(
        json.dumps({str(z): list(get_node_attributes(SYMBOLS[z], atom_features="cgcnn")) for z in zs})
    )
    arrays: dict[str, np.ndarray] = {
        "names": np.array([c[0] for c in cases]),
        "num_atoms": np.array([len(c[3]) for c in cases]),
        "atomic_numbers": np.concatenate([c[3] for c in cases]),
        "frac_coords": np.concatenate([c[2] for c in cases]),
        "lattices": np.stack([c[1] for c in cases]),
        "pred_float32": pred32[:, 0],
        "pred_float64": pred64[:, 0],
        "class_logprob_float32": cpred32,
        "line_graph_edges": np.array([g["lg"] for g in graphs]),
    }
    for i, (g32, g64) in enumerate(zip(graphs, graphs64, strict=True)):
        arrays[f"graph{i}_u"] = g64["u"]
        arrays[f"graph{i}_v"] = g64["v"]
        arrays[f"graph{i}_r"] = g64["r"]
        assert (g32["u"] == g64["u"]).all() and (g32["v"] == g64["v"]).all()
    np.savez_compressed(HERE / "golden.npz", **arrays)
    for (name, *_), p32, p64, g in zip(cases, pred32[:, 0], pred64[:, 0], graphs64, strict=True):
        print(f"{name:18s} edges {len(g['u']):4d}  float32 {p32: .8f}  float64 {p64: .12f}")


if __name__ == "__main__":
    main()
