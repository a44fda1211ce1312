"""Labelled data sets: structures plus target values, with every unusable row reported.

Formats (a path may be a file, a folder or a glob):

==========================  ===========================================================
CSV with a ``cif`` column   Perov-5 / Carbon-24 / MP-20: every other column is a label
folder with ``id_prop.csv``  CGCNN / ALIGNN layout: ``id,value[,value...]`` per row (a header
                            row is optional; without one the value columns are called
                            ``target`` or ``target1, target2, ...``); structures are
                            ``<id>``, ``<id>.cif``, ``<id>.vasp`` or ``POSCAR-<id>`` in the folder
extended XYZ                ``atoms.info`` keys (structure labels), ``atoms.arrays`` keys
                            (atom labels), ``energy``/``forces``/``stress`` from the calculator
pymatgen JSON               a list of ``{"structure": {...}, "id": ..., "<label>": value}``
==========================  ===========================================================

A row is skipped and reported (a :class:`~crystal.io.Failure` with step ``read`` or
``labels``) when its structure does not parse, a target is missing, not a number, NaN or
has the wrong shape, or (checked by the trainer) an element is not covered by the model.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crystal.batch import CrystalBatch
from crystal.errors import ConfigError, StructureError
from crystal.io import Failure, check_structure, detect_format, expand_paths, parse_cif, short_error
from crystal.targets import TargetSpec

__all__ = ["LabelledData", "no_rows_error", "read_labelled", "split_indices"]


@dataclass
class LabelledData:
    """A :class:`CrystalBatch` whose ``crystal_properties``/``atom_properties`` hold the
    targets, and the rows that were skipped."""

    batch: CrystalBatch
    failures: list[Failure] = field(default_factory=list)
    #: target columns taken under another name, e.g. ``"band_gap <- target"``
    aliases: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.batch)


_Row = tuple[
    str, Any, str | None, dict[str, Any], dict[str, Any], str
]  # id, structure, error, labels, atom labels, source


def _rows_csv(path: Path) -> Iterator[_Row]:
    text = path.read_text(encoding="utf-8")
    reader = csv.DictReader(io.StringIO(text))
    fields = reader.fieldnames or []
    if "cif" not in fields:
        raise ConfigError(f"{path}: CSV has no 'cif' column (columns: {', '.join(fields) or 'none'})")
    id_col = next((c for c in ("material_id", "id", "cif_id") if c in fields), None)
    for k, row in enumerate(reader):
        ident = str(row[id_col]) if id_col else f"{path.stem}:{k}"
        labels = {c: v for c, v in row.items() if c not in ("cif", id_col) and c}
        cif = row.get("cif") or ""
        if not cif.strip():
            yield ident, None, f"row {k + 2}: field 'cif' is empty", labels, {}, str(path)
            continue
        _, structure, err = next(parse_cif(cif, ident))
        yield ident, structure, (f"row {k + 2}: field 'cif': {err}" if err else None), labels, {}, str(path)


def _find_structure(folder: Path, ident: str) -> Path | None:
    for name in (ident, f"{ident}.cif", f"{ident}.vasp", f"POSCAR-{ident}", f"{ident}.poscar", f"{ident}.json"):
        p = folder / name
        if p.is_file():
            return p
    return None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _rows_id_prop(folder: Path) -> Iterator[_Row]:
    from crystal.io import read_file

    table = folder / "id_prop.csv"
    rows = [r for r in csv.reader(io.StringIO(table.read_text(encoding="utf-8"))) if r and any(c.strip() for c in r)]
    if not rows:
        raise ConfigError(f"{table}: file is empty")
    first_line = 1
    if len(rows[0]) > 1 and not all(_is_number(c) for c in rows[0][1:]):
        names = [c.strip() for c in rows[0][1:]]
        rows, first_line = rows[1:], 2
    else:
        width = max(len(r) for r in rows) - 1
        names = ["target"] if width == 1 else [f"target{i + 1}" for i in range(width)]
    for k, row in enumerate(rows):
        ident = row[0].strip()
        labels = dict(zip(names, (c.strip() for c in row[1:]), strict=False))
        where = f"{table} line {k + first_line}"
        path = _find_structure(folder, ident)
        if path is None:
            yield ident, None, f"{where}: no structure file for id {ident!r} in {folder}", labels, {}, str(table)
            continue
        try:
            res = read_file(path, detect_format(path), None)
        except ConfigError as exc:
            yield ident, None, str(exc), labels, {}, str(path)
            continue
        if res.failures or not res.structures:
            reason = res.failures[0].reason if res.failures else "no structure"
            yield ident, None, reason, labels, {}, str(path)
            continue
        yield ident, res.structures[0], None, labels, {}, str(path)


def _rows_extxyz(path: Path) -> Iterator[_Row]:
    from ase.io import read
    from pymatgen.io.ase import AseAtomsAdaptor

    try:
        frames = read(str(path), index=":", format="extxyz")
    except Exception as exc:
        yield path.stem, None, f"not a valid extended XYZ file: {short_error(exc)}", {}, {}, str(path)
        return
    for k, atoms in enumerate(frames):
        ident = str(atoms.info.get("id", path.stem if len(frames) == 1 else f"{path.stem}:{k}"))
        labels: dict[str, Any] = {key: v for key, v in atoms.info.items() if key != "id"}
        atom_labels: dict[str, Any] = {
            key: np.asarray(v) for key, v in atoms.arrays.items() if key not in ("numbers", "positions")
        }
        calc = atoms.calc
        if calc is not None:
            for key in ("energy", "free_energy", "stress"):
                if key in calc.results:
                    labels.setdefault(key, calc.results[key])
            for key in ("forces", "magmoms", "charges"):
                if key in calc.results:
                    atom_labels.setdefault(key, np.asarray(calc.results[key]))
        if not atoms.pbc.all() or abs(atoms.cell.volume) < 1e-9:
            yield (
                ident,
                None,
                "frame has no periodic 3-D cell (Lattice= and pbc are needed)",
                labels,
                atom_labels,
                str(path),
            )
            continue
        yield ident, AseAtomsAdaptor.get_structure(atoms), None, labels, atom_labels, str(path)


def _rows_json(path: Path) -> Iterator[_Row]:
    from pymatgen.core import Structure

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        yield path.stem, None, f"not valid JSON: {exc}", {}, {}, str(path)
        return
    items = data if isinstance(data, list) else [data]
    for k, item in enumerate(items):
        ident = path.stem if len(items) == 1 else f"{path.stem}:{k}"
        if not (isinstance(item, dict) and isinstance(item.get("structure"), dict)):
            yield ident, None, f"item {k}: expected {{'structure': {{...}}, <labels>}}", {}, {}, str(path)
            continue
        ident = str(item.get("id", ident))
        labels = {key: v for key, v in item.items() if key not in ("structure", "id")}
        try:
            structure = Structure.from_dict(item["structure"])
        except Exception as exc:
            yield ident, None, f"item {k}: not a pymatgen Structure dict: {short_error(exc)}", labels, {}, str(path)
            continue
        yield ident, structure, None, labels, {}, str(path)


def _rows(paths: Sequence[str | Path]) -> Iterator[_Row]:
    for pattern in paths:
        p = Path(pattern)
        if p.is_dir() and (p / "id_prop.csv").is_file():
            yield from _rows_id_prop(p)
            continue
        for path in expand_paths([pattern]):
            fmt = detect_format(path)
            if fmt == "csv":
                yield from _rows_csv(path)
            elif fmt == "extxyz":
                yield from _rows_extxyz(path)
            elif fmt == "json":
                yield from _rows_json(path)
            else:
                raise ConfigError(
                    f"{path}: a {fmt} file carries no target values; use a CSV with a 'cif' column, "
                    "a folder with id_prop.csv, extended XYZ or pymatgen JSON"
                )


def _value(raw: Any, spec: TargetSpec, n_atoms: int) -> tuple[np.ndarray | None, str | None]:
    """Parse one label into shape (dim,) / (N, dim); or an error message."""
    try:
        if isinstance(raw, str):
            raw = json.loads(raw) if raw.strip().startswith("[") else float(raw)
        arr = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        return None, f"value {str(raw)[:40]!r} is not a number"
    if spec.level == "atom":
        if arr.shape[:1] != (n_atoms,) or arr.size != n_atoms * spec.dim:
            return None, f"expected {n_atoms} x {spec.dim} per-atom values, got shape {arr.shape}"
        arr = arr.reshape(n_atoms, spec.dim)
    else:
        if arr.size != spec.dim:
            return None, f"expected {spec.dim} value(s), got {arr.size}"
        arr = arr.reshape(spec.dim)
    if not np.isfinite(arr).all():
        return None, "value is NaN or infinite"
    if spec.task == "classification":
        v = float(arr.reshape(-1)[0])
        if v != int(v) or not 0 <= v < int(spec.num_classes or 2):
            return None, f"class label {v:g} is not an integer in 0..{int(spec.num_classes or 2) - 1}"
    return arr, None


def read_labelled(
    paths: Sequence[str | Path],
    targets: Sequence[TargetSpec],
    *,
    columns: Mapping[str, str] | None = None,
    inputs: Sequence[str] = (),
    limit: int | None = None,
    on_error: str = "skip",
) -> LabelledData:
    """Read structures and the values of ``targets`` (see the module docstring).

    ``columns`` maps a target name to its column / key when they differ. ``inputs`` names
    per-structure numeric columns that the model reads as inputs (e.g. MEGNet's
    ``temperature`` state); they go into ``batch.crystal_properties`` like the targets. With
    ``on_error="raise"`` the first unusable row raises :class:`StructureError`.
    """
    input_specs = [TargetSpec(name=name, normalize=False) for name in inputs]
    clash = sorted(set(inputs) & {t.name for t in targets})
    if clash:
        raise ConfigError(f"{', '.join(clash)} cannot be both a target and an input")
    columns = dict(columns or {})
    ids: list[str] = []
    structures: list[Any] = []
    sources: list[str] = []
    values: dict[str, list[np.ndarray]] = {t.name: [] for t in [*targets, *input_specs]}
    failures: list[Failure] = []
    warned_alias: set[str] = set()
    for ident, structure, error, labels, atom_labels, source in _rows(paths):
        if limit is not None and len(ids) >= limit:
            break
        if error is None and structure is not None:
            error = check_structure(structure)
        if error is not None or structure is None:
            failures.append(Failure(ident, "read", error or "no structure", source))
            continue
        row_values: dict[str, np.ndarray] = {}
        problem = None
        for spec in [*targets, *input_specs]:
            kind = "input" if spec in input_specs else "target"
            key = columns.get(spec.name, spec.name)
            table = atom_labels if spec.level == "atom" else labels
            if key not in table and spec.name not in columns and len(targets) == 1 and list(table) == ["target"]:
                key = "target"  # the one value column of a header-less id_prop.csv
                warned_alias.add(f"{spec.name} <- target")
            if key not in table:
                known = ", ".join(sorted(table)) or "none"
                problem = f"field {key!r} ({kind} {spec.name!r}) is missing (fields: {known})"
                break
            arr, err = _value(table[key], spec, len(structure))
            if err is not None:
                problem = f"field {key!r} ({kind} {spec.name!r}): {err}"
                break
            assert arr is not None
            row_values[spec.name] = arr
        if problem is not None:
            failures.append(Failure(ident, "labels", problem, source))
            continue
        ids.append(ident)
        structures.append(structure)
        sources.append(source)
        for name, arr in row_values.items():
            values[name].append(arr)
    if on_error == "raise" and failures:
        f = failures[0]
        raise StructureError(f"{f.source}: {f.id}: {f.step}: {f.reason}")
    batch = CrystalBatch.from_structures(structures, ids) if structures else CrystalBatch.empty()
    for info, src in zip(batch.info, sources, strict=True):
        info["source"] = src
    for spec in [*targets, *input_specs]:
        if spec.level == "atom":
            arr = np.concatenate(values[spec.name]) if values[spec.name] else np.zeros((0, spec.dim))
            batch.atom_properties[spec.name] = _tensor(arr, spec)
        else:
            arr = np.stack(values[spec.name]) if values[spec.name] else np.zeros((0, spec.dim))
            batch.crystal_properties[spec.name] = _tensor(arr, spec)
    return LabelledData(batch, failures, sorted(warned_alias))


def no_rows_error(data: LabelledData, paths: Sequence[str | Path], what: str = "training") -> ConfigError:
    """The error for a data set of which no row is usable: why the rows were skipped (the most
    common reasons, with counts: a missing column names the columns that exist) and how to fix it."""
    from collections import Counter

    where = ", ".join(str(p) for p in paths)
    if not data.failures:
        return ConfigError(f"no {what} structures: {where} holds no rows")
    counts = Counter(f.reason for f in data.failures)
    shown = "; ".join(f"{n} row(s): {reason}" for reason, n in counts.most_common(3))
    more = f"; and {len(counts) - 3} other reason(s)" if len(counts) > 3 else ""
    hint = ""
    if any(" is missing (fields: " in r for r in counts):
        hint = (
            " Name a target after a column that exists (--target NAME), or map the target to its column "
            '(--set data.columns.TARGET="COLUMN" / [data.columns] in the TOML).'
        )
    return ConfigError(
        f"no {what} structures: all {len(data.failures)} row(s) of {where} were skipped: {shown}{more}.{hint}"
    )


def _tensor(arr: np.ndarray, spec: TargetSpec) -> torch.Tensor:
    if spec.task == "classification":
        return torch.as_tensor(arr.reshape(-1), dtype=torch.long)
    t = torch.as_tensor(arr, dtype=torch.float64)
    return t.reshape(-1) if spec.dim == 1 else t


def split_indices(n: int, fractions: Sequence[float], seed: int) -> list[torch.Tensor]:
    """Random disjoint index sets: ``fractions`` of ``n`` (rounded), the rest first.

    ``split_indices(100, [0.1, 0.1], 0)`` → ``[train (80), val (10), test (10)]``.
    """
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    sizes = [math.floor(f * n + 0.5) for f in fractions]
    rest = n - sum(sizes)
    out = [perm[:rest]]
    start = rest
    for s in sizes:
        out.append(perm[start : start + s])
        start += s
    return out
