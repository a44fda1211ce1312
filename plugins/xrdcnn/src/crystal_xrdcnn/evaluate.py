"""Held-out evaluation of the XRD classifier: top-1 / top-5 accuracy per head and a confusion matrix.

``python -m crystal_xrdcnn.evaluate --shared ../shared/data [--checkpoint FILE] [--synthetic FILE]``

Test sets (none of them used in training):

* ``Perov-5 test`` / ``Carbon-24 test``: a seeded sample of ``--per-set`` structures of
  ``perov_5/test.csv`` and ``carbon_24/test.csv`` (training used ``val.csv`` only);
* ``JARVIS``: every POSCAR of ``jarvis_sample/``;
* ``pyxtal held-out`` (optional ``--synthetic``): random crystals made by ``make_data`` with
  another seed (all 230 space groups).

Labels come from spglib (symprec 0.1 Å) on each structure.  Patterns are simulated with the
model's grid twice: *clean* (the ``xrd`` defaults: Gaussian FWHM 0.1°) and *augmented*
(the training augmentation, seed 0), the latter as a stand-in for measurement artefacts.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from crystal.batch import CrystalBatch
from crystal_xrd import XRDConfig, simulate
from crystal_xrdcnn.labels import HEADS, head_labels, label_batch, targets_from_space_groups

__all__ = ["accuracy", "evaluate_sets", "main", "plot_confusion"]


def accuracy(probs: torch.Tensor, target: torch.Tensor, k: int) -> float:
    """Fraction of rows whose target is among the ``k`` most probable classes."""
    top = probs.topk(min(k, probs.shape[1]), dim=1).indices
    return float((top == target[:, None]).any(dim=1).float().mean())


def _patterns(comp: Any, batch: CrystalBatch, augment: dict[str, Any] | None, chunk: int = 128) -> torch.Tensor:
    cfg = XRDConfig(**comp.representation_config, augment=augment)
    out = []
    for i in range(0, len(batch), chunk):
        sub = batch.select(torch.arange(i, min(i + chunk, len(batch))))
        out.append(simulate(sub.to(dtype=torch.float32), cfg, seed=i).patterns.float())
    return torch.cat(out)


def _probs(comp: Any, signals: torch.Tensor, chunk: int = 256) -> dict[str, torch.Tensor]:
    parts = [comp.characterize(signals[i : i + chunk]) for i in range(0, len(signals), chunk)]
    return {h: torch.cat([p[h] for p in parts]) for h in HEADS}


def evaluate_sets(comp: Any, sets: dict[str, CrystalBatch], augment: dict[str, Any]) -> dict[str, Any]:
    """``{set: {"n", "clean": {head: {top1, top5}}, "augmented": ...}}`` plus predictions for plots."""
    report: dict[str, Any] = {}
    for name, batch in sets.items():
        sg = batch.crystal_properties["space_group"]
        targets = targets_from_space_groups(sg)
        entry: dict[str, Any] = {"n": len(batch), "space_groups": len(torch.unique(sg))}
        for mode, aug in (("clean", None), ("augmented", augment)):
            probs = _probs(comp, _patterns(comp, batch, aug))
            entry[mode] = {
                h: {"top1": accuracy(probs[h], targets[h], 1), "top5": accuracy(probs[h], targets[h], 5)} for h in HEADS
            }
            entry[f"_{mode}_pred_cs"] = probs["crystal_system"].argmax(1)
        entry["_target_cs"] = targets["crystal_system"]
        report[name] = entry
    return report


def plot_confusion(pred: torch.Tensor, target: torch.Tensor, path: Path, title: str) -> None:
    """Row-normalised 7×7 crystal-system confusion matrix as a PNG (counts annotated)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = head_labels("crystal_system")
    m = torch.zeros(7, 7)
    m.index_put_((target, pred), torch.ones(len(pred)), accumulate=True)
    norm = m / m.sum(1, keepdim=True).clamp_min(1)
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    im = ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    for i in range(7):
        for j in range(7):
            if m[i, j] > 0:
                ax.text(
                    j,
                    i,
                    int(m[i, j]),
                    ha="center",
                    va="center",
                    color="white" if norm[i, j] > 0.5 else "black",
                    fontsize=8,
                )
    ax.set_xticks(range(7), names, rotation=45, ha="right")
    ax.set_yticks(range(7), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (spglib, symprec 0.1 Å)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of true class")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _jarvis(folder: Path) -> CrystalBatch:
    from pymatgen.core import Structure

    files = sorted(folder.glob("POSCAR-*"))
    b = CrystalBatch.from_structures([Structure.from_file(f) for f in files])
    b.ids = [f.stem for f in files]
    return b


def main(argv: list[str] | None = None) -> int:
    from crystal.plugins import load
    from crystal_xrdcnn.data import load_structures, reference_crystals
    from crystal_xrdcnn.train import TRAIN_AUGMENT

    parser = argparse.ArgumentParser(prog="python -m crystal_xrdcnn.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, required=True, help="../shared/data")
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped weights")
    parser.add_argument("--per-set", type=int, default=300, help="test structures sampled from each test.csv")
    parser.add_argument("--synthetic", type=Path, default=None, help="held-out make_data file (another seed)")
    parser.add_argument("--png", type=Path, default=None, help="confusion-matrix PNG (real test structures, clean)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    comp = load("characterizer", "xrdcnn", {"checkpoint": args.checkpoint} if args.checkpoint else {}, device="cpu")
    ref = reference_crystals(args.shared, args.per_set, args.seed, split="test")
    sources = [i["source"] for i in ref.info]
    sets: dict[str, CrystalBatch] = {
        "Perov-5 test": ref.select(torch.tensor([s.startswith("perov_5") for s in sources])),
        "Carbon-24 test": ref.select(torch.tensor([s.startswith("carbon_24") for s in sources])),
        "JARVIS sample": _jarvis(args.shared / "jarvis_sample"),
    }
    for b in sets.values():
        b.crystal_properties["space_group"] = label_batch(b)
    if args.synthetic is not None:
        sets["pyxtal held-out"] = load_structures(args.synthetic)
    report = evaluate_sets(comp, sets, TRAIN_AUGMENT)
    print(f"# xrdcnn evaluation ({time.perf_counter() - t0:.0f} s); weights sha256 {comp.checkpoint_sha256}")
    print(
        "| test set | n | distinct SGs | patterns | crystal system top-1 / top-5 | extinction group top-1 / top-5 "
        "| space group top-1 / top-5 |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, e in report.items():
        for mode in ("clean", "augmented"):
            cells = " | ".join(f"{100 * e[mode][h]['top1']:.1f} % / {100 * e[mode][h]['top5']:.1f} %" for h in HEADS)
            print(f"| {name} | {e['n']} | {e['space_groups']} | {mode} | {cells} |")
    if args.png is not None:
        real = [n for n in report if n != "pyxtal held-out"]
        pred = torch.cat([report[n]["_clean_pred_cs"] for n in real])
        target = torch.cat([report[n]["_target_cs"] for n in real])
        plot_confusion(pred, target, args.png, f"xrdcnn crystal system, {len(pred)} held-out real structures")
        if "pyxtal held-out" in report:
            e = report["pyxtal held-out"]
            plot_confusion(
                e["_clean_pred_cs"],
                e["_target_cs"],
                args.png.with_name(args.png.stem + "-pyxtal.png"),
                f"xrdcnn crystal system, {e['n']} held-out pyxtal crystals",
            )
    if args.json is not None:
        clean = {n: {k: v for k, v in e.items() if not k.startswith("_")} for n, e in report.items()}
        args.json.write_text(json.dumps(clean, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
