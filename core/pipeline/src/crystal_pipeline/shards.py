"""Sharded pipeline outputs: one Parquet file per block, merged at the end when asked.

A shard is the result table of one block: one row per input of the block (``id``, ``status``,
``step``, ``reason``, ``source``, ``formula`` and every numeric column, as ``results.csv``)
plus the structure of each crystal that is still there, as text in a ``cif`` or ``extxyz``
column (null for failed or filtered rows). Shards are written atomically and named by block
(:func:`shard_path`), so a block that is computed twice (a retried worker) replaces its shard
and never duplicates rows; finished shards are what ``--resume`` skips.

The structure text is standard: ``cif`` is pymatgen's ``CifWriter`` (as
:func:`crystal.io.write_structures`) with 12 decimals instead of 8, so that a crystal read
back gives energies equal to 1e-6 eV and better; ``extxyz`` is one extended-XYZ frame per row
with every float written in full (``repr``), read back exactly (lattice rows, Cartesian
positions, pbc). A Parquet file with such a column is also a pipeline source
(:mod:`crystal_pipeline.sources`).

pyarrow is needed (``pip install pyarrow``) and imported only when a shard is touched.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from crystal.errors import ConfigError, CrystalError
from crystal.io import atomic_write, chmod_like_open
from crystal_pipeline.sources import require_pyarrow

if TYPE_CHECKING:
    import pyarrow as pa

    from crystal.batch import CrystalBatch

__all__ = [
    "STRUCTURE_COLUMNS",
    "merge_shards",
    "read_shards",
    "shard_files",
    "shard_path",
    "structure_texts",
    "structures_from_shard",
    "write_shard",
]

STRUCTURE_COLUMNS = ("cif", "extxyz")
_BASE_COLUMNS = ("id", "status", "step", "reason", "source", "formula")
CIF_DECIMALS = 12


def _pa() -> Any:
    require_pyarrow()
    import pyarrow

    return pyarrow


def shard_path(directory: str | os.PathLike[str], index: int) -> Path:
    """``<directory>/block-<index:08d>.parquet``: names sort in block order."""
    return Path(directory) / f"block-{index:08d}.parquet"


# ---------------------------------------------------------------------------- structure text
def structure_texts(batch: CrystalBatch, structure_format: Literal["cif", "extxyz"] = "cif") -> list[str]:
    """The text of every crystal of ``batch``: a CIF (CifWriter, 12 decimals) or one
    extended-XYZ frame (full float precision, ``id=`` in the comment line)."""
    if structure_format == "cif":
        from pymatgen.io.cif import CifWriter

        return [str(CifWriter(s, significant_figures=CIF_DECIMALS)) for s in batch.to_structures()]
    if structure_format == "extxyz":
        return _extxyz_frames(batch)
    raise ConfigError(f"structure format {structure_format!r}; allowed: cif, extxyz")


def _extxyz_frames(batch: CrystalBatch) -> list[str]:
    import numpy as np
    import torch
    from ase.data import chemical_symbols
    from ase.io.extxyz import key_val_dict_to_str

    cpu = batch.to("cpu", torch.float64)
    lattices = cpu.lattices.numpy()
    cart = cpu.cart_coords.numpy()
    zs = cpu.atomic_numbers.tolist()
    pbc = cpu.pbc.numpy()
    ptr = cpu.ptr.tolist()
    out = []
    for b, ident in enumerate(cpu.ids):
        lo, hi = ptr[b], ptr[b + 1]
        comment = key_val_dict_to_str(
            {
                # extxyz lists the lattice vectors one after the other; ASE writes arrays column-major
                "Lattice": np.ascontiguousarray(lattices[b].T),
                "Properties": "species:S:1:pos:R:3",
                "id": ident,
                "pbc": np.asarray(pbc[b], dtype=bool),
            }
        )
        lines = [str(hi - lo), comment]
        lines += [
            f"{chemical_symbols[zs[i]]} {float(x)!r} {float(y)!r} {float(z)!r}"
            for i, (x, y, z) in enumerate(cart[lo:hi], lo)
        ]
        out.append("\n".join(lines) + "\n")
    return out


# ---------------------------------------------------------------------------- writing
def _column(values: list[Any]) -> pa.Array:
    """A Parquet column from Python values: bool, int64, float64 or string (mixed numbers
    are float64, anything else mixed is text); all-null is a null column."""
    pa = _pa()
    present = [v for v in values if v is not None]
    if not present:
        return pa.nulls(len(values))
    if all(isinstance(v, bool) for v in present):
        return pa.array(values, pa.bool_())
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.array(values, pa.int64())
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    return pa.array([None if v is None else str(v) for v in values], pa.string())


def write_shard(
    path: str | os.PathLike[str],
    rows: list[dict[str, Any]],
    batch: CrystalBatch | None,
    *,
    structure_format: Literal["cif", "extxyz"] = "cif",
) -> None:
    """Write one block's result ``rows`` (and the structures of ``batch``) to the Parquet ``path``.

    Columns: ``id, status, step, reason, source, formula``, then every other key of the rows
    in first-seen order, then ``structure_format`` (``cif`` or ``extxyz``) holding the text of
    the crystal whose id is in ``batch`` (null for the other rows). Every crystal of ``batch``
    needs a row. Atomic (a temporary file in the same folder, renamed onto ``path``), with the
    mode ``open()`` gives under the umask; writing the same block again replaces the file.
    """
    pa = _pa()
    pq = require_pyarrow(path)
    if structure_format not in STRUCTURE_COLUMNS:
        raise ConfigError(f"shard {path}: structure format {structure_format!r}; allowed: cif, extxyz")
    row_ids = [str(r["id"]) for r in rows]
    texts: dict[str, str] = {}
    if batch is not None and len(batch):
        missing = sorted(set(batch.ids) - set(row_ids))
        if missing:
            raise CrystalError(f"shard {path}: crystals without a result row: {', '.join(missing[:10])}")
        texts = dict(zip(batch.ids, structure_texts(batch, structure_format), strict=True))
    names: list[str] = list(_BASE_COLUMNS)
    for r in rows:
        names += [k for k in r if k not in names]
    clash = [n for n in names if n in STRUCTURE_COLUMNS]
    if clash:
        raise CrystalError(f"shard {path}: result rows must not have a {clash[0]!r} column (it holds the structures)")
    arrays = {}
    for name in names:
        values = [r.get(name) for r in rows]
        if name in _BASE_COLUMNS:
            arrays[name] = pa.array([None if v is None else str(v) for v in values], pa.string())
        else:
            arrays[name] = _column(values)
    arrays[structure_format] = pa.array([texts.get(i) for i in row_ids], pa.string())
    table = pa.table(arrays)
    _atomic_parquet(Path(path), lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def _atomic_parquet(target: Path, write: Any) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    chmod_like_open(fd)  # mkstemp makes 0600; results must be readable under the umask
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------- reading
def shard_files(directory: str | os.PathLike[str]) -> list[Path]:
    """The shards of ``directory`` sorted by name (temporary files of unfinished writes skipped)."""
    d = Path(directory)
    if not d.is_dir():
        raise ConfigError(f"{d}: no shard directory there")
    return sorted(p for p in d.iterdir() if p.suffix == ".parquet" and not p.name.startswith(".") and p.is_file())


def _merge_type(a: pa.DataType, b: pa.DataType) -> pa.DataType:
    pa = _pa()
    if a == b or pa.types.is_null(b):
        return a
    if pa.types.is_null(a):
        return b
    numeric = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean)
    if any(f(a) for f in numeric) and any(f(b) for f in numeric):
        if pa.types.is_floating(a) or pa.types.is_floating(b):
            return pa.float64()
        return pa.int64()
    return pa.string()


def _unified_schema(files: list[Path]) -> pa.Schema:
    """One schema for all shards (columns in first-seen order; int+float is float, null takes
    the other type, other mixtures are text), from the file footers only."""
    pa = _pa()
    pq = require_pyarrow()
    types: dict[str, Any] = {}
    for f in files:
        for field in pq.read_schema(f):
            types[field.name] = _merge_type(types[field.name], field.type) if field.name in types else field.type
    return pa.schema([pa.field(n, t) for n, t in types.items()])


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    pa = _pa()
    cols = []
    for field in schema:
        if field.name in table.column_names:
            col = table.column(field.name)
            cols.append(col if col.type == field.type else col.cast(field.type))
        else:
            cols.append(pa.nulls(table.num_rows, field.type))
    return pa.table(cols, schema=schema)


def read_shards(directory: str | os.PathLike[str], columns: list[str] | None = None) -> Iterator[pa.Table]:
    """The shards of ``directory``, one table per row group (so memory stays bounded), in
    file-name order, all with the same columns and types (a column missing from a shard is
    null there). ``columns``: only these (unknown names raise :class:`ConfigError`)."""
    pq = require_pyarrow(directory)
    pa = _pa()
    files = shard_files(directory)
    schema = _unified_schema(files)
    if columns is not None:
        unknown = [c for c in columns if c not in schema.names]
        if unknown and files:
            raise ConfigError(f"{directory}: unknown shard column(s) {unknown}; available: {', '.join(schema.names)}")
        schema = pa.schema([schema.field(c) if c in schema.names else pa.field(c, pa.null()) for c in columns])
    for f in files:
        pf = pq.ParquetFile(f)
        present = [c for c in schema.names if c in pf.schema_arrow.names]
        for g in range(pf.metadata.num_row_groups):
            yield _conform(pf.read_row_group(g, columns=present), schema)


def _filtered(table: pa.Table, ids: Collection[str] | None) -> pa.Table:
    if ids is None:
        return table
    pa = _pa()
    import pyarrow.compute as pc

    return table.filter(pc.is_in(table.column("id"), value_set=pa.array(list(ids), pa.string())))


def merge_shards(
    directory: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    format: Literal["parquet", "csv", "cif", "extxyz"],
    ids: Collection[str] | None = None,
) -> int:
    """Merge the shards of ``directory`` into ``target``, row group by row group; returns the
    rows (``parquet``/``csv``) or structures (``cif``/``extxyz``) written.

    ``parquet``: one table with every column (structures included); ``csv``: every column
    but the structure text (a results table); ``cif``: one ``<id>.cif`` per crystal in the
    folder ``target`` (names as :func:`crystal.io.write_structures` makes them);
    ``extxyz``: one file with a frame per crystal. ``ids``: keep only these (e.g. the
    survivors of global steps). Files are written atomically.
    """
    pq = require_pyarrow(directory)
    pa = _pa()
    files = shard_files(directory)
    schema = _unified_schema(files) if files else pa.schema([pa.field(n, pa.string()) for n in _BASE_COLUMNS])
    tables = (_filtered(t, ids) for t in read_shards(directory))
    written = 0
    if format == "parquet":

        def write_all(tmp: str) -> None:
            nonlocal written
            with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
                for t in tables:
                    writer.write_table(t)
                    written += t.num_rows

        _atomic_parquet(Path(target), write_all)
    elif format == "csv":
        names = [n for n in schema.names if n not in STRUCTURE_COLUMNS]
        with atomic_write(target, newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(names)
            for t in tables:
                for row in t.select(names).to_pylist():
                    writer.writerow(["" if row[n] is None else row[n] for n in names])
                    written += 1
    elif format in ("cif", "extxyz"):
        texts = _structure_rows(tables, schema, format)
        if format == "cif":
            folder = Path(target)
            folder.mkdir(parents=True, exist_ok=True)
            for ident, text in texts:
                safe = "".join(ch if ch.isalnum() or ch in "-_.+" else "_" for ch in ident)
                with atomic_write(folder / f"{safe}.cif") as fh:
                    fh.write(text)
                written += 1
        else:
            with atomic_write(target) as fh:
                for _, text in texts:
                    fh.write(text if text.endswith("\n") else text + "\n")
                    written += 1
    else:
        raise ConfigError(f"cannot merge shards as {format!r}; allowed: parquet, csv, cif, extxyz")
    return written


def _structure_rows(tables: Iterator[pa.Table], schema: pa.Schema, fmt: str) -> Iterator[tuple[str, str]]:
    """``(id, text in fmt)`` of every row holding a structure, converting when the shards hold the other format."""
    have = [c for c in STRUCTURE_COLUMNS if c in schema.names]
    for t in tables:
        for row in t.select(["id", *have]).to_pylist():
            if row.get(fmt) is not None:
                yield row["id"], row[fmt]
                continue
            other = next((c for c in have if row.get(c) is not None), None)
            if other is None:
                continue
            batch = _parse_texts([row["id"]], [row[other]], other)
            yield row["id"], structure_texts(batch, "cif" if fmt == "cif" else "extxyz")[0]


def _parse_texts(ids: list[str], texts: list[str], fmt: str) -> CrystalBatch:
    import torch

    from crystal.batch import CrystalBatch
    from crystal.io import parse_cif

    if fmt == "extxyz":
        from ase.io import read

        atoms = []
        for ident, text in zip(ids, texts, strict=True):
            try:
                a = read(io.StringIO(text), index=0, format="extxyz")
            except Exception as exc:
                raise CrystalError(f"shard row {ident!r}: field 'extxyz' is not a readable frame: {exc}") from None
            a.info.clear()
            atoms.append(a)
        return CrystalBatch.from_atoms(atoms, ids, dtype=torch.float64)
    structures = []
    for ident, text in zip(ids, texts, strict=True):
        _, s, err = next(iter(parse_cif(text, ident)))
        if err is not None:
            raise CrystalError(f"shard row {ident!r}: field 'cif': {err}")
        structures.append(s)
    return CrystalBatch.from_structures(structures, ids, dtype=torch.float64)


def structures_from_shard(table: pa.Table) -> CrystalBatch:
    """The crystals of a shard table (rows with structure text, in order): ids from ``id``,
    ``info["source"]`` from ``source``, numeric columns as ``crystal_properties`` (float64,
    NaN where null; booleans as bool when never null). ``extxyz`` text gives the crystals back
    exactly; ``cif`` text as written (12 decimals; the lattice re-oriented from its
    parameters and the atoms grouped by species, as ``CifWriter`` writes them)."""
    import torch

    from crystal.batch import CrystalBatch

    pa = _pa()
    names = table.column_names
    have = [c for c in STRUCTURE_COLUMNS if c in names]
    if not have:
        raise ConfigError(f"shard table has no structure column ('cif' or 'extxyz'); columns: {', '.join(names)}")
    columns = {c: table.column(c).to_pylist() for c in have}
    all_ids = [str(i) for i in table.column("id").to_pylist()]
    keep: list[int] = []
    groups: dict[str, list[int]] = {c: [] for c in have}
    for k in range(table.num_rows):
        fmt = next((c for c in have if columns[c][k] is not None), None)
        if fmt is not None:
            keep.append(k)
            groups[fmt].append(k)
    parts = {k: _parse_texts([all_ids[k]], [columns[c][k]], c) for c, rows in groups.items() for k in rows}
    batch = CrystalBatch.concat([parts[k] for k in keep]) if keep else CrystalBatch.empty()
    sources = table.column("source").to_pylist() if "source" in names else [None] * table.num_rows
    batch.info = [{"source": sources[k]} if sources[k] is not None else {} for k in keep]
    for name in names:
        col = table.column(name)
        if name in _BASE_COLUMNS or name in STRUCTURE_COLUMNS:
            continue
        every = col.to_pylist()
        values = [every[k] for k in keep]
        if pa.types.is_boolean(col.type) and all(v is not None for v in values):
            batch.crystal_properties[name] = torch.tensor(values, dtype=torch.bool)
        elif pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type):
            batch.crystal_properties[name] = torch.tensor(
                [float("nan") if v is None else float(v) for v in values], dtype=torch.float64
            )
    return batch
