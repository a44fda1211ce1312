"""The held-out crystals and the synthetic cells of the neighbour-order fixture.

Pure pymatgen + numpy (no crystal, no torch): used by ``make_golden.py`` in the side
virtualenv with the original CGCNN code, and by the plugin's tests.

* :func:`heldout_structures` — 270 crystals of ``../shared/data`` (never copied here): 150
  Perov-5 test structures (ideal cubic perovskites, many with equidistant neighbours
  straddling the 12th slot), 50 Carbon-24 test structures (seed 0 samples) and the first 70
  JARVIS sample POSCARs (sorted by name).
* :func:`synthetic_structures` — the cells stored in ``structures.json`` (made by
  ``make_golden.py``): ideal cubic perovskites and other high-symmetry cells in several
  site orders and origins, and generic (random, rattled) cells.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
N_PEROV, N_CARBON, N_JARVIS = 150, 50, 70


def _csv_rows(path: Path) -> list[dict[str, str]]:
    csv.field_size_limit(1 << 24)
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def heldout_structures(data: Path, ids: Sequence[str] | None = None) -> list[tuple[str, object]]:
    """``[(id, pymatgen Structure)]`` of the 270 held-out crystals under ``data`` (= ../shared/data),
    or of those of them named in ``ids`` (same order as the full list)."""
    from pymatgen.core import Structure

    wanted = None if ids is None else set(ids)
    out: list[tuple[str, object]] = []
    for folder, n in (("perov_5", N_PEROV), ("carbon_24", N_CARBON)):
        rows = _csv_rows(data / folder / "test.csv")
        for k in sorted(random.Random(0).sample(range(len(rows)), n)):
            name = f"{folder}/test/{rows[k]['material_id']}"
            if wanted is None or name in wanted:
                out.append((name, Structure.from_str(rows[k]["cif"], fmt="cif")))
    for path in sorted((data / "jarvis_sample").glob("POSCAR-*"))[:N_JARVIS]:
        name = f"jarvis_sample/{path.name}"
        if wanted is None or name in wanted:
            out.append((name, Structure.from_file(path)))
    return out


def synthetic_structures(path: Path = HERE / "structures.json") -> list[tuple[str, object]]:
    """``[(id, pymatgen Structure)]`` of the synthetic cells (lattice rows, Z, fractional coordinates)."""
    from pymatgen.core import Lattice, Structure

    raw = json.loads(path.read_text(encoding="utf-8"))
    return [
        (s["id"], Structure(Lattice(s["lattice"]), s["numbers"], s["frac_coords"], coords_are_cartesian=False))
        for s in raw
    ]
