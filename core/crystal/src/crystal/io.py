"""Reading and writing structures at the edges of a pipeline.

Readers never stop at one bad entry: every entry that cannot be used becomes a
:class:`Failure` naming the file, the entry and the reason, and the rest is read.
Writers are atomic: they write a temporary file next to the target and rename it.

Formats (by extension, or ``format=``):

=========  ============================================  =======================
format     extensions                                    notes
=========  ============================================  =======================
cif        ``.cif`` (several data blocks allowed)         pymatgen ``CifParser``
poscar     ``POSCAR*``, ``CONTCAR*``, ``.vasp``, ``.poscar``  pymatgen ``Poscar``
extxyz     ``.extxyz``, ``.xyz`` (multi-frame)            ASE; needs a 3-D cell
json       ``.json`` (Structure dict or list of them)     pymatgen ``as_dict`` form
csv        ``.csv`` with a ``cif`` column                 Perov-5 / Carbon-24 / MP-20
=========  ============================================  =======================
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from crystal._files import chmod_like_open
from crystal.errors import ConfigError, StructureError

if TYPE_CHECKING:
    from pymatgen.core import Structure

    from crystal.batch import CrystalBatch

__all__ = [
    "FORMATS",
    "Failure",
    "ReadResult",
    "atomic_write",
    "check_structure",
    "chmod_like_open",
    "detect_format",
    "expand_paths",
    "json_default",
    "parse_cif",
    "read_file",
    "read_structures",
    "short_error",
    "write_structures",
]

Format = Literal["cif", "poscar", "extxyz", "json", "csv"]
FORMATS: tuple[str, ...] = ("cif", "poscar", "extxyz", "json", "csv")


@dataclass(frozen=True)
class Failure:
    """One input that could not be used: which, where, at which step and why."""

    id: str
    step: str
    reason: str
    source: str = ""


@dataclass
class ReadResult:
    """Structures that were read (with their ids) and the entries that failed."""

    ids: list[str] = field(default_factory=list)
    structures: list[Structure] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    def extend(self, other: ReadResult) -> None:
        self.ids += other.ids
        self.structures += other.structures
        self.sources += other.sources
        self.failures += other.failures

    def to_batch(self, **kwargs: Any) -> CrystalBatch:
        from crystal.batch import CrystalBatch

        batch = CrystalBatch.from_structures(self.structures, self.ids, **kwargs)
        for info, src in zip(batch.info, self.sources, strict=True):
            info["source"] = src
        return batch


def detect_format(path: Path) -> Format:
    """Format of ``path`` from its name; raises :class:`ConfigError` listing the allowed ones."""
    name = path.name.lower()
    suffix = path.suffix.lower()
    if suffix == ".cif":
        return "cif"
    if suffix in (".vasp", ".poscar") or name.startswith(("poscar", "contcar")):
        return "poscar"
    if suffix in (".extxyz", ".xyz"):
        return "extxyz"
    if suffix == ".json":
        return "json"
    if suffix == ".csv":
        return "csv"
    raise ConfigError(
        f"{path}: cannot tell the structure format from the name; use one of "
        ".cif, POSCAR/CONTCAR/.vasp, .extxyz/.xyz, .json, .csv (with a 'cif' column)"
    )


def expand_paths(patterns: Iterable[str | os.PathLike[str]], base: Path | None = None) -> list[Path]:
    """Expand globs and directories (recognised files inside, sorted); missing paths raise."""
    out: list[Path] = []
    for pattern in patterns:
        p = Path(pattern)
        if base is not None and not p.is_absolute():
            p = base / p
        matches = sorted(Path(m) for m in glob.glob(str(p))) if any(ch in str(p) for ch in "*?[") else [p]
        if not matches or not all(m.exists() for m in matches):
            raise ConfigError(f"input path {str(pattern)!r} matches no file")
        for m in matches:
            if m.is_dir():
                for child in sorted(m.iterdir()):
                    with contextlib.suppress(ConfigError):
                        if child.is_file() and child.name != "id_prop.csv":
                            detect_format(child)
                            out.append(child)
            else:
                out.append(m)
    return out


def read_structures(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    format: Format | None = None,
    limit: int | None = None,
    id_column: str | None = None,
) -> ReadResult:
    """Read every structure in ``paths`` (files, directories or globs).

    Ids are ``<file stem>`` for one-structure files and ``<stem>:<k>`` (or the CSV's id
    column: ``material_id``, ``id`` or ``cif_id``) otherwise. Unreadable entries become
    failures; a file that does not exist raises :class:`ConfigError`.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    result = ReadResult()
    for path in expand_paths(paths):
        fmt = format or detect_format(path)
        remaining = None if limit is None else limit - len(result.ids)
        result.extend(read_file(path, fmt, id_column, limit=remaining))
        if limit is not None and len(result.ids) >= limit:
            result.ids, result.structures, result.sources = (
                result.ids[:limit],
                result.structures[:limit],
                result.sources[:limit],
            )
            break
    return result


def read_file(
    path: Path, fmt: Format | None = None, id_column: str | None = None, *, limit: int | None = None
) -> ReadResult:
    """Read every structure in one file (format ``fmt``, default: by extension); with
    ``limit``, stop parsing once ``limit`` structures were read (a CSV of thousands of rows
    is not parsed whole for its first few).

    Unreadable, empty or unusable entries are recorded as failures (step ``"read"``), and so
    is a CSV without a ``cif`` column (one row: not a structure file); a CSV without the
    requested ``id_column`` raises :class:`ConfigError`.
    """
    fmt = fmt or detect_format(path)
    res = ReadResult()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        res.failures.append(Failure(path.stem, "read", f"cannot read file: {exc}", str(path)))
        return res
    if not text.strip():
        res.failures.append(Failure(path.stem, "read", "file is empty", str(path)))
        return res
    for ident, structure, error in _parse(text, path, fmt, id_column):
        if error is not None:
            res.failures.append(Failure(ident, "read", error, str(path)))
            continue
        assert structure is not None
        problem = check_structure(structure)
        if problem:
            res.failures.append(Failure(ident, "read", problem, str(path)))
            continue
        res.ids.append(ident)
        res.structures.append(structure)
        res.sources.append(str(path))
        if limit is not None and len(res.ids) >= limit:
            break
    return res


def check_structure(s: Structure) -> str | None:
    """Why ``s`` cannot be used, or ``None`` when it can.

    Rejected: no atoms, NaN/inf coordinates or lattice, a zero-volume cell, partially
    occupied (disordered) sites, unknown element symbols (pymatgen's dummy species).
    """
    import numpy as np

    if len(s) == 0:
        return "structure has no atoms"
    if not np.isfinite(s.frac_coords).all() or not np.isfinite(s.lattice.matrix).all():
        return "coordinates or lattice contain NaN or inf"
    if abs(s.lattice.volume) < 1e-6:
        return "degenerate lattice (zero volume)"
    if not s.is_ordered:
        return "structure has partially occupied sites (disordered); order it first"
    unknown = sorted({str(getattr(sp, "symbol", sp)) for sp in s.species if not _is_element(sp)})
    if unknown:
        return f"unknown element symbol(s) {', '.join(map(repr, unknown))} (not in the periodic table)"
    return None


def _is_element(species: Any) -> bool:
    """A real chemical element (or an ion of one), not pymatgen's DummySpecies for an unknown symbol."""
    from pymatgen.core import DummySpecies, Element, Species

    if isinstance(species, DummySpecies):
        return False
    return isinstance(species, (Element, Species))


def _parse(text: str, path: Path, fmt: Format, id_column: str | None) -> Iterator[tuple[str, Any, str | None]]:
    stem = path.stem
    if fmt == "cif":
        yield from parse_cif(text, stem)
    elif fmt == "poscar":
        from pymatgen.io.vasp import Poscar

        try:
            yield stem, Poscar.from_str(text).structure, None
        except Exception as exc:  # pymatgen raises many types on malformed input
            why = (
                "the file ends early or is malformed (expected: comment, scale, 3 lattice lines, element names, "
                "counts, coordinates)"
                if isinstance(exc, (IndexError, ValueError))
                else short_error(exc)
            )
            yield stem, None, f"not a valid POSCAR: {why}"
    elif fmt == "extxyz":
        yield from _parse_extxyz(text, stem)
    elif fmt == "json":
        yield from _parse_json(text, stem)
    elif fmt == "csv":
        yield from _parse_csv(text, stem, path, id_column)


def short_error(exc: BaseException) -> str:
    """``"<ExceptionType>: <first line of the message>"``, at most 300 characters."""
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}"[:300]


_CELL_KEYS = (
    "_cell_length_a",
    "_cell_length_b",
    "_cell_length_c",
    "_cell_angle_alpha",
    "_cell_angle_beta",
    "_cell_angle_gamma",
)


def _cif_number(value: str) -> float:
    """A CIF number: ``4.05(2)`` is 4.05 (the standard uncertainty dropped); '?' / '.' are NaN."""
    text = value.strip().split("(", 1)[0]
    if text in ("", "?", "."):
        return float("nan")
    return float(text)


def _cell_problem(block: Any) -> str | None:
    """Why a CIF block's cell parameters are unusable (zero, negative or NaN), or None."""
    import math

    bad = []
    for key in _CELL_KEYS:
        raw = block.data.get(key)
        if raw is None:
            continue  # pymatgen reports missing parameters itself
        if isinstance(raw, list):
            raw = raw[0] if raw else "?"
        try:
            value = _cif_number(str(raw))
        except ValueError:
            bad.append(f"{key} = {raw!r} is not a number")
            continue
        if math.isnan(value) or value <= 0 or (key.startswith("_cell_angle") and value >= 180):
            allowed = "in (0, 180) degrees" if key.startswith("_cell_angle") else "> 0 Å"
            bad.append(f"{key} = {raw} (must be {allowed})")
    return "invalid cell: " + "; ".join(bad) if bad else None


def parse_cif(text: str, stem: str) -> Iterator[tuple[str, Structure | None, str | None]]:
    """Parse CIF ``text`` into ``(id, structure, None)`` or ``(id, None, reason)`` tuples.

    The id is ``stem`` for a single data block and ``<stem>:<block name>`` for each of several;
    every block gets its own tuple (a broken block is its own failure, the others keep their
    ids). Zero, negative or NaN cell lengths/angles are refused with the value read. Text that
    is not CIF yields one ``(stem, None, reason)``; nothing is raised.
    """
    from pymatgen.io.cif import CifFile, CifParser

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cif = CifFile.from_str(text)
    except Exception as exc:
        yield stem, None, f"not a valid CIF: {_human(exc)}"
        return
    blocks = list(cif.data.items())
    if not blocks:
        yield stem, None, "not a valid CIF: no data_ block found"
        return
    for name, block in blocks:
        ident = stem if len(blocks) == 1 else f"{stem}:{name}"
        problem = _cell_problem(block)
        if problem:
            yield ident, None, problem
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                parser = CifParser.from_str(str(block))
                structures = parser.parse_structures(primitive=False, on_error="raise")
        except Exception as exc:
            yield ident, None, f"data block {name!r} has no readable structure: {_human(exc)}"
            continue
        if not structures:
            yield ident, None, f"data block {name!r} has no readable structure (no atom sites or cell)"
            continue
        yield ident, structures[0], None


def _human(exc: BaseException) -> str:
    """A reason a person understands for the errors pymatgen raises on malformed input."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, ZeroDivisionError):
        return "a zero where a number of atoms, a multiplicity or a cell parameter is needed"
    if "no structures" in text.lower():
        return "no atom sites, or no cell parameters, could be read"
    if isinstance(exc, KeyError):
        return f"required CIF field {text} is missing"
    return short_error(exc)


def _parse_extxyz(text: str, stem: str) -> Iterator[tuple[str, Any, str | None]]:
    from ase.io import read
    from pymatgen.io.ase import AseAtomsAdaptor

    try:
        frames = read(io.StringIO(text), index=":", format="extxyz")
    except Exception as exc:
        yield stem, None, f"not a valid extended XYZ file: {short_error(exc)}"
        return
    for k, atoms in enumerate(frames):
        ident = stem if len(frames) == 1 else f"{stem}:{k}"
        if not atoms.pbc.all() or abs(atoms.cell.volume) < 1e-9:
            yield ident, None, "frame has no periodic 3-D cell (Lattice= and pbc are needed)"
            continue
        yield ident, AseAtomsAdaptor.get_structure(atoms), None


def _parse_json(text: str, stem: str) -> Iterator[tuple[str, Any, str | None]]:
    from pymatgen.core import Structure

    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        yield stem, None, f"not valid JSON: {exc}"
        return
    items = data if isinstance(data, list) else [data]
    for k, item in enumerate(items):
        ident = stem if len(items) == 1 else f"{stem}:{k}"
        if isinstance(item, dict) and "structure" in item and isinstance(item["structure"], dict):
            ident = str(item.get("id", ident))
            item = item["structure"]
        try:
            yield ident, Structure.from_dict(item), None
        except Exception as exc:
            yield ident, None, f"not a pymatgen Structure dict: {short_error(exc)}"


def _parse_csv(text: str, stem: str, path: Path, id_column: str | None) -> Iterator[tuple[str, Any, str | None]]:
    reader = csv.DictReader(io.StringIO(text))
    fields = reader.fieldnames or []
    if id_column and id_column not in fields:
        raise ConfigError(f"{path}: id column {id_column!r} not found (columns: {', '.join(fields)})")
    if "cif" not in fields:  # e.g. a table of properties next to the CIFs: one row, not an abort
        yield stem, None, (f"not a structure file: a CSV needs a 'cif' column (columns: {', '.join(fields) or 'none'})")
        return
    id_col = id_column or next((c for c in ("material_id", "id", "cif_id") if c in fields), None)
    for k, row in enumerate(reader):
        ident = str(row[id_col]) if id_col else f"{stem}:{k}"
        cif = row.get("cif") or ""
        if not cif.strip():
            yield ident, None, f"row {k + 2}: field 'cif' is empty"
            continue
        got = list(parse_cif(cif, ident))
        ident, structure, err = got[0]
        yield ident, structure, (f"row {k + 2}: field 'cif': {err}" if err else None)


# ------------------------------------------------------------------------- writing
@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[Any]:
    """Open a temporary file beside ``path``; rename it onto ``path`` only on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    chmod_like_open(fd)  # mkstemp makes 0600; results must be readable under the umask
    try:
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_structures(
    structures: CrystalBatch | Sequence[Structure],
    path: str | os.PathLike[str],
    format: Format,
    *,
    ids: Sequence[str] | None = None,
    symprec: float | None = None,
) -> list[Path]:
    """Write structures atomically; returns the files written.

    ``cif`` writes one ``<id>.cif`` per structure into the directory ``path`` (with
    ``symprec`` the CIF is symmetrised); ``extxyz`` and ``json`` write one file holding all
    structures (``json``: a list of ``{"id", "structure"}``); ``poscar`` writes one
    ``<id>.vasp`` per structure into the directory ``path``.
    """
    from crystal.batch import CrystalBatch

    if isinstance(structures, CrystalBatch):
        ids = list(structures.ids) if ids is None else list(ids)
        structs = structures.to_structures()
    else:
        structs = list(structures)
        ids = [str(i) for i in range(len(structs))] if ids is None else list(ids)
    if len(ids) != len(structs):
        raise StructureError(f"{len(ids)} ids for {len(structs)} structures")
    target = Path(path)
    written: list[Path] = []
    if format in ("cif", "poscar"):
        target.mkdir(parents=True, exist_ok=True)
        for ident, s in zip(ids, structs, strict=True):
            safe = "".join(ch if ch.isalnum() or ch in "-_.+" else "_" for ch in ident)
            if format == "cif":
                from pymatgen.io.cif import CifWriter

                text = str(CifWriter(s, symprec=symprec))
                out = target / f"{safe}.cif"
            else:
                from pymatgen.io.vasp import Poscar

                text = Poscar(s, comment=ident).get_str()
                out = target / f"{safe}.vasp"
            with atomic_write(out) as fh:
                fh.write(text)
            written.append(out)
    elif format == "extxyz":
        from ase.io import write
        from pymatgen.io.ase import AseAtomsAdaptor

        frames = []
        for ident, s in zip(ids, structs, strict=True):
            atoms = AseAtomsAdaptor.get_atoms(s)
            atoms.info["id"] = ident
            frames.append(atoms)
        with atomic_write(target) as fh:
            write(fh, frames, format="extxyz")
        written.append(target)
    elif format == "json":
        payload = [{"id": ident, "structure": s.as_dict()} for ident, s in zip(ids, structs, strict=True)]
        with atomic_write(target) as fh:
            json.dump(payload, fh, default=json_default)
        written.append(target)
    else:
        raise ConfigError(f"cannot write structures as {format!r}; allowed: cif, poscar, extxyz, json")
    return written


def json_default(obj: Any) -> Any:
    """``default=`` for :func:`json.dump`: numpy arrays and scalars as lists and numbers,
    anything else as its ``str``."""
    import numpy as np

    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)
