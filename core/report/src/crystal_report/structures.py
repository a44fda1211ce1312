"""The structures of the top candidates, read from the run directory's structure files.

Where they are: the manifest's structure sinks (a CIF or POSCAR folder of ``<id>.cif`` /
``<id>.vasp``, an extxyz file whose frames carry ``id=``, a JSON list of ``{"id",
"structure"}``), else any ``*.extxyz`` file or folder of CIFs in the run directory. Only the
requested ids are parsed (an extxyz file is scanned frame by frame, the others are skipped).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pymatgen.core import Structure

    from crystal_report.rundir import RunData

__all__ = ["find_structures", "safe_name", "structure_files", "viewer_data"]

_ID = re.compile(r"""(?:^|\s)id=(?:"((?:[^"\\]|\\.)*)"|(\S+))""")


def safe_name(ident: str) -> str:
    """The file stem ``crystal.io.write_structures`` gives the structure ``ident``."""
    return "".join(ch if ch.isalnum() or ch in "-_.+" else "_" for ch in ident)


def _extxyz(path: Path, wanted: set[str]) -> dict[str, Structure]:
    """Parse only the frames of ``path`` whose ``id=`` is in ``wanted``."""
    from ase.io import read
    from pymatgen.io.ase import AseAtomsAdaptor

    found: dict[str, Structure] = {}
    with path.open(encoding="utf-8", errors="replace") as fh:
        while len(found) < len(wanted):
            first = fh.readline()
            if not first:
                break
            if not first.strip():
                continue
            try:
                n = int(first.split()[0])
            except ValueError:
                break  # not an extxyz frame: stop reading this file
            comment = fh.readline()
            lines = [fh.readline() for _ in range(n)]
            m = _ID.search(comment)
            ident = (m.group(1) if m.group(1) is not None else m.group(2)) if m else None
            if ident is None or ident not in wanted or ident in found:
                continue
            atoms = read(io.StringIO(first + comment + "".join(lines)), format="extxyz")
            found[ident] = AseAtomsAdaptor.get_structure(atoms)
    return found


def _folder(path: Path, wanted: Iterable[str], suffix: str) -> dict[str, Structure]:
    from crystal.io import read_file

    found: dict[str, Structure] = {}
    for ident in wanted:
        f = path / f"{safe_name(ident)}{suffix}"
        if f.is_file():
            res = read_file(f, "cif" if suffix == ".cif" else "poscar")
            if res.structures:
                found[ident] = res.structures[0]
    return found


def _json(path: Path, wanted: set[str]) -> dict[str, Structure]:
    from pymatgen.core import Structure

    data = json.loads(path.read_text(encoding="utf-8"))
    found: dict[str, Structure] = {}
    for item in data if isinstance(data, list) else []:
        if isinstance(item, dict) and item.get("id") in wanted and isinstance(item.get("structure"), dict):
            found[str(item["id"])] = Structure.from_dict(item["structure"])
    return found


def structure_files(run: RunData) -> list[tuple[str, Path]]:
    """``(format, path)`` of the structure files to look in, the manifest's sinks first."""
    out: list[tuple[str, Path]] = []
    sinks = ((run.manifest or {}).get("config") or {}).get("sinks") or []
    for sink in sinks:
        if isinstance(sink, dict) and sink.get("type") in ("extxyz", "cif", "poscar", "json"):
            out.append((str(sink["type"]), run.run_dir / str(sink.get("path", ""))))
    for p in sorted(run.run_dir.glob("*.extxyz")):
        out.append(("extxyz", p))
    for p in sorted(run.run_dir.iterdir()) if run.run_dir.is_dir() else []:
        if p.is_dir() and not p.name.startswith(".") and any(p.glob("*.cif")):
            out.append(("cif", p))
    return list(dict.fromkeys(out))


def find_structures(run: RunData, ids: Sequence[str]) -> tuple[dict[str, Structure], list[str]]:
    """The structures of ``ids`` found in the run directory, and notes on files that failed."""
    wanted = set(ids)
    found: dict[str, Structure] = {}
    notes: list[str] = []
    for fmt, path in structure_files(run):
        missing = wanted - set(found)
        if not missing:
            break
        try:
            if fmt == "extxyz" and path.is_file():
                got = _extxyz(path, missing)
            elif fmt == "cif" and path.is_dir():
                got = _folder(path, missing, ".cif")
            elif fmt == "poscar" and path.is_dir():
                got = _folder(path, missing, ".vasp")
            elif fmt == "json" and path.is_file():
                got = _json(path, missing)
            else:
                continue
        except Exception as exc:  # one unreadable file: a note, and the next file
            notes.append(f"{path.name}: could not read structures ({type(exc).__name__}: {exc})")
            continue
        found.update(got)
    return found, notes


def viewer_data(structure: Structure, max_atoms: int = 2000) -> dict[str, Any]:
    """What the 3-D viewer draws: the cell (3 row vectors, Å), the atoms (cartesian Å,
    wrapped into the cell) with their element's index, and per element its colour (Jmol)
    and drawn radius (Å; proportional to the covalent radius)."""
    import numpy as np
    from ase.data import atomic_numbers, covalent_radii
    from ase.data.colors import jmol_colors

    lattice = np.asarray(structure.lattice.matrix, dtype=float)
    frac = np.asarray(structure.frac_coords, dtype=float) % 1.0
    cart = frac @ lattice
    symbols = [site.specie.symbol if hasattr(site.specie, "symbol") else str(site.specie) for site in structure]
    elements = list(dict.fromkeys(symbols))
    colours, radii = [], []
    for el in elements:
        z = atomic_numbers.get(el, 0)
        r, g, b = (round(255 * float(c)) for c in jmol_colors[z])
        colours.append(f"#{r:02x}{g:02x}{b:02x}")
        radii.append(round(float(covalent_radii[z]), 3))
    # drawn radii (Å): half the covalent radius, all shrunk together so that the largest
    # atom stays within a quarter of the shortest cell edge
    shortest = float(np.linalg.norm(lattice, axis=1).min())
    f = min(0.5, 0.25 * shortest / max(max(radii), 1e-6))
    radii = [round(r * f, 3) for r in radii]
    index = {el: k for k, el in enumerate(elements)}
    atoms = [
        [round(float(x), 4), round(float(y), 4), round(float(z), 4), index[s]] for (x, y, z), s in zip(cart, symbols)
    ]
    return {
        "cell": [[round(float(v), 4) for v in row] for row in lattice],
        "atoms": atoms[:max_atoms],
        "elements": elements,
        "colors": colours,
        "radii": radii,
        "truncated": len(atoms) > max_atoms,
    }
