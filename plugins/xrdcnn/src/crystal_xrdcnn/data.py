"""Training/evaluation structure sets for the XRD classifier, made by the framework itself.

``python -m crystal_xrdcnn.make_data --seed 0 --per-group 24 --out runs/xrdcnn/train.pt``

1. **Random symmetric crystals** from the ``pyxtal`` generator plugin in every one of the 230
   space groups.  For group ``g`` each *spec* draws 1–3 distinct elements from
   :data:`ELEMENT_POOL` and, for each, one Wyckoff multiplicity of ``g`` (≤ 24) as its atom
   count; the composition is generated with one formula unit in ``g`` (3 crystals per spec,
   up to ``8 × per_group`` specs until ``per_group`` crystals exist).  Random numbers come
   from ``random.Random(f"{seed}-{g}")`` and the generator's own ``seed``, so a group's
   crystals do not depend on the other groups.
2. **Reference structures** from ``../shared/data``: a seeded sample of ``perov_5/val.csv``
   and ``carbon_24/val.csv`` (their ``test.csv`` is held out for evaluation).

Every crystal is labelled by spglib on its own cell (``symprec`` 0.1 Å), so the label is the
symmetry the pattern actually has (a random crystal may come out with a supergroup).
The result is saved with :func:`save_structures` (plain tensors + strings, loadable with
``weights_only=True``); patterns are simulated on the fly during training.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
import warnings
from pathlib import Path

import torch

from crystal.batch import CrystalBatch
from crystal.errors import ConfigError, StructureError

__all__ = [
    "ELEMENT_POOL",
    "load_structures",
    "make_dataset",
    "pyxtal_crystals",
    "reference_crystals",
    "save_structures",
]

log = logging.getLogger(__name__)

#: elements drawn for random crystals (no H or noble gases; all have X-ray scattering factors)
ELEMENT_POOL = [
    "Li",
    "Be",
    "B",
    "C",
    "N",
    "O",
    "F",
    "Na",
    "Mg",
    "Al",
    "Si",
    "P",
    "S",
    "Cl",
    "K",
    "Ca",
    "Sc",
    "Ti",
    "V",
    "Cr",
    "Mn",
    "Fe",
    "Co",
    "Ni",
    "Cu",
    "Zn",
    "Ga",
    "Ge",
    "As",
    "Se",
    "Br",
    "Rb",
    "Sr",
    "Y",
    "Zr",
    "Nb",
    "Mo",
    "Ru",
    "Rh",
    "Pd",
    "Ag",
    "Cd",
    "In",
    "Sn",
    "Sb",
    "Te",
    "I",
    "Cs",
    "Ba",
    "La",
    "Ce",
    "Nd",
    "Sm",
    "Gd",
    "Hf",
    "Ta",
    "W",
    "Re",
    "Os",
    "Ir",
    "Pt",
    "Au",
    "Hg",
    "Tl",
    "Pb",
    "Bi",
]
FORMAT = "crystal-xrdcnn-structures/1"


def _multiplicities(sg: int) -> list[int]:
    from pyxtal.symmetry import Group

    return sorted({int(w.multiplicity) for w in Group(sg).Wyckoff_positions})


def pyxtal_crystals(
    space_group: int, per_group: int, seed: int, *, max_atoms: int = 48, per_spec: int = 3
) -> CrystalBatch | None:
    """Up to ``per_group`` random crystals built in ``space_group`` (see the module docstring)."""
    from crystal.components import GenerationConditions
    from crystal.plugins import load

    gen = load(
        "generator", "pyxtal", {"max_atoms": max_atoms, "charge_balance": "ignore", "max_attempts_per_sample": 4}
    )
    rng = random.Random(f"{seed}-{space_group}")
    mults = [m for m in _multiplicities(space_group) if m <= 24] or [min(_multiplicities(space_group))]
    parts: list[CrystalBatch] = []
    have = 0
    for spec in range(8 * per_group):
        if have >= per_group:
            break
        k = rng.choice((1, 2, 2, 3, 3))
        elements = rng.sample(ELEMENT_POOL, k)
        counts = [rng.choice(mults) for _ in elements]
        while sum(counts) > max_atoms and len(counts) > 1:
            counts.pop()
            elements.pop()
        if sum(counts) > max_atoms:
            continue
        formula = "".join(f"{e}{c}" for e, c in zip(elements, counts, strict=True))
        cond = GenerationConditions(composition=formula, formula_units=(1,), space_groups=(space_group,))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = gen.generate(
                    min(per_spec, per_group - have), cond, seed=seed * 100_003 + space_group * 1000 + spec
                )
        except (ConfigError, StructureError):
            continue
        if len(out):
            out.info = [dict(i, source=f"pyxtal:sg{space_group}") for i in out.info]
            parts.append(out)
            have += len(out)
    return CrystalBatch.concat(parts) if parts else None


def reference_crystals(shared: Path, per_set: int, seed: int, split: str = "val") -> CrystalBatch:
    """A seeded sample of ``per_set`` structures from each of perov_5 and carbon_24 ``<split>.csv``."""
    from crystal.io import read_structures

    parts = []
    for name in ("perov_5", "carbon_24"):
        path = shared / name / f"{split}.csv"
        if not path.exists():
            raise ConfigError(f"xrdcnn data: {path} not found (reference data directory {shared})")
        read = read_structures(path)
        idx = sorted(random.Random(f"{seed}-{name}-{split}").sample(range(len(read.ids)), min(per_set, len(read.ids))))
        b = CrystalBatch.from_structures([read.structures[i] for i in idx])
        b.ids = [f"{name}:{read.ids[i]}" for i in idx]
        b.info = [{"source": f"{name}/{split}.csv"} for _ in idx]
        parts.append(b)
    return CrystalBatch.concat(parts)


def make_dataset(
    seed: int = 0,
    per_group: int = 24,
    shared: Path | None = None,
    shared_per_set: int = 500,
    space_groups: list[int] | None = None,
    symprec: float = 0.1,
    progress: bool = False,
) -> CrystalBatch:
    """Random crystals of every space group (+ reference structures); ``crystal_properties["space_group"]``."""
    from crystal_xrdcnn.labels import label_batch

    parts = []
    t0 = time.perf_counter()
    groups = space_groups or list(range(1, 231))
    for n, sg in enumerate(groups):
        b = pyxtal_crystals(sg, per_group, seed)
        if b is None:
            log.warning("xrdcnn data: no crystal could be built in space group %d", sg)
            continue
        parts.append(b.to(dtype=torch.float64))
        if progress and (n + 1) % 10 == 0:
            print(
                f"  {n + 1}/{len(groups)} groups, {sum(len(p) for p in parts)} crystals, "
                f"{time.perf_counter() - t0:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    if shared is not None and shared_per_set > 0:
        parts.append(reference_crystals(shared, shared_per_set, seed).to(dtype=torch.float64))
    if not parts:
        raise ConfigError("xrdcnn data: no crystals were generated")
    batch = CrystalBatch.concat([p.to(dtype=torch.float64) for p in parts])
    batch.crystal_properties = {"space_group": label_batch(batch, symprec)}
    return batch


def save_structures(path: Path, batch: CrystalBatch, meta: dict[str, object] | None = None) -> None:
    """Save a labelled batch as plain tensors and strings (``weights_only`` loadable)."""
    from crystal.io import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "meta": {k: str(v) for k, v in (meta or {}).items()},
        "atomic_numbers": batch.atomic_numbers.cpu(),
        "frac_coords": batch.frac_coords.cpu().double(),
        "lattices": batch.lattices.cpu().double(),
        "num_atoms": batch.num_atoms.cpu(),
        "space_group": batch.crystal_properties["space_group"].cpu().long(),
        "ids": list(batch.ids),
        "sources": [str(i.get("source", "")) for i in batch.info],
    }
    with atomic_write(path, "wb") as fh:
        torch.save(payload, fh)


def load_structures(path: Path) -> CrystalBatch:
    """Inverse of :func:`save_structures` (safe ``weights_only`` load)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise ConfigError(f"xrdcnn data: cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"xrdcnn data: {path} is not a {FORMAT} file")
    return CrystalBatch(
        atomic_numbers=data["atomic_numbers"],
        frac_coords=data["frac_coords"],
        lattices=data["lattices"],
        num_atoms=data["num_atoms"],
        crystal_properties={"space_group": data["space_group"]},
        ids=list(data["ids"]),
        info=[{"source": s} for s in data["sources"]],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crystal_xrdcnn.make_data", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-group", type=int, default=24, help="random crystals per space group")
    parser.add_argument("--shared", type=Path, default=None, help="../shared/data (adds Perov-5/Carbon-24 val.csv)")
    parser.add_argument("--shared-per-set", type=int, default=500, help="structures sampled from each val.csv")
    parser.add_argument("--space-groups", default=None, help="comma-separated subset (default: all 230)")
    parser.add_argument("--symprec", type=float, default=0.1, help="spglib tolerance for labels, Å")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("crystal_pyxtal").setLevel(logging.ERROR)
    groups = [int(s) for s in args.space_groups.split(",")] if args.space_groups else None
    t0 = time.perf_counter()
    batch = make_dataset(
        args.seed, args.per_group, args.shared, args.shared_per_set, groups, args.symprec, progress=True
    )
    save_structures(
        args.out,
        batch,
        {
            "seed": args.seed,
            "per_group": args.per_group,
            "shared_per_set": args.shared_per_set,
            "symprec": args.symprec,
        },
    )
    sg = batch.crystal_properties["space_group"]
    print(
        f"wrote {args.out}: {len(batch)} crystals, {len(torch.unique(sg))} distinct space groups, "
        f"{time.perf_counter() - t0:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
