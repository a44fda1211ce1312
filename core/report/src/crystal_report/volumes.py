"""Cell volumes (Å³) read cheaply from a run's structure files, for the volume distribution
when no step wrote a volume column: the ``Lattice=`` of extxyz frames, or the cell lengths and
angles of CIFs. No structure is parsed."""

from __future__ import annotations

import contextlib
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crystal_report.rundir import RunData

__all__ = ["cell_volumes"]

_LATTICE = re.compile(r'Lattice="([^"]+)"')
_ID = re.compile(r"""(?:^|\s)id=(?:"((?:[^"\\]|\\.)*)"|(\S+))""")
_CIF = {
    k: re.compile(rf"^_cell_{k}\s+([-+0-9.eE]+)", re.M)
    for k in ("length_a", "length_b", "length_c", "angle_alpha", "angle_beta", "angle_gamma")
}
MAX_FILES = 5000
MAX_FRAMES = 200_000


def _det(m: list[float]) -> float:
    a, b, c, d, e, f, g, h, i = m
    return abs(a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g))


def _extxyz(path: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    with path.open(encoding="utf-8", errors="replace") as fh:
        k = 0
        while k < MAX_FRAMES:
            first = fh.readline()
            if not first:
                break
            if not first.strip():
                continue
            try:
                n = int(first.split()[0])
            except ValueError:
                break
            comment = fh.readline()
            for _ in range(n):
                fh.readline()
            lat = _LATTICE.search(comment)
            m = _ID.search(comment)
            ident = (m.group(1) if m.group(1) is not None else m.group(2)) if m else f"{path.stem}:{k}"
            if lat:
                with contextlib.suppress(ValueError):
                    out[ident] = _det([float(v) for v in lat.group(1).split()])
            k += 1
    return out


def _cif_volume(text: str) -> float | None:
    vals = {}
    for k, rx in _CIF.items():
        m = rx.search(text)
        if not m:
            return None
        vals[k] = float(m.group(1))
    al, be, ga = (math.radians(vals[k]) for k in ("angle_alpha", "angle_beta", "angle_gamma"))
    ca, cb, cg = math.cos(al), math.cos(be), math.cos(ga)
    x = 1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg
    if x <= 0:
        return None
    return vals["length_a"] * vals["length_b"] * vals["length_c"] * math.sqrt(x)


def cell_volumes(run: RunData) -> dict[str, float]:
    """``{id: cell volume in Å³}`` from the first structure file or CIF folder that gives any."""
    from crystal_report.structures import structure_files

    for fmt, path in structure_files(run):
        try:
            if fmt == "extxyz" and path.is_file():
                vols = _extxyz(path)
            elif fmt == "cif" and path.is_dir():
                vols = {}
                for f in sorted(path.glob("*.cif"))[:MAX_FILES]:
                    v = _cif_volume(f.read_text(encoding="utf-8", errors="replace"))
                    if v is not None:
                        vols[f.stem] = v
            else:
                continue
        except OSError:
            continue
        if vols:
            return vols
    return {}
