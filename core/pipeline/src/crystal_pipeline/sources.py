"""Streaming pipeline sources: a source planned lazily as small blocks, each read on its own.

A source (``[source]`` of a pipeline) is cut into **blocks** of about ``chunk_size`` inputs.
:func:`plan_blocks` lists them lazily and cheaply (it never parses a structure): globs and
directories are walked one directory at a time in sorted order, single-structure files are
grouped ``chunk_size`` per block, and big multi-structure files (CSV or Parquet with a ``cif``
column, multi-frame extxyz) become ``"rows"`` blocks of ``chunk_size`` rows, counted with a
streaming scan (CSV, extxyz) or from the Parquet metadata. A generator source gives blocks of
``chunk_size`` requested crystals, each with its own seed (:func:`block_seed`); a dataset source
gives slices of the dataset.

A generate block asks for ``count`` *valid* crystals with :func:`crystal.generation.generate_valid`:
it samples again (within ``ceil(count × max_attempts)`` samples drawn) until it has them, every
rejected sample becoming a failure of step ``"generate"`` with its reason; ids are
``<generator>-<run id>-<block>-<k>`` (``k`` counts the block's samples, valid and rejected, in
draw order), so they never repeat across blocks, calls and runs and stay the same within a
resumed run. :func:`generation_report` sums up what a generate source delivered (and any
shortfall) for the run's manifest.

A :class:`BlockSpec` is small, picklable and JSON-serialisable: it is what a worker (a local
loop, a Ray task) needs to :func:`read_block` block ``k``. Plans are deterministic: the same
config plans the same blocks with the same indices on every run, so finished blocks can be
skipped on ``--resume``.

Ids follow :func:`crystal.io.read_structures` (``<stem>``, ``<stem>:<k>``, ``<stem>:<data
block>``, the CSV/Parquet id column), so a source read in blocks gives the ids it gives read
at once. Within a block ids are unique: a repeated id gets ``#1``, ``#2``, ... as the runner
does for a whole source. Ids of different blocks can only repeat when the inputs themselves
carry the same id (two files ``a/x.cif`` and ``b/x.cif`` in different blocks, an id column with
repeated values).

``limit`` counts inputs, readable or not: one per single-structure file, one per CSV/Parquet
row, extxyz frame, CIF data block or JSON list item. With a limit, CIF and JSON files are
opened while planning to count their entries, so that the limit is exact; without one they are
not opened before they are read.
"""

from __future__ import annotations

import csv
import fnmatch
import functools
import io
import json
import math
import os
import re
import secrets
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, cast

from crystal.errors import ConfigError
from crystal.io import Failure, check_structure, detect_format, parse_cif, read_file, short_error

if TYPE_CHECKING:
    from pymatgen.core import Structure

    from crystal.batch import CrystalBatch
    from crystal.components import GenerationConditions, Generator
    from crystal_pipeline.config import DatasetSource, FilesSource, GenerateSource

    AnySource = FilesSource | DatasetSource | GenerateSource

__all__ = [
    "BlockSpec",
    "SourceBlock",
    "block_seed",
    "check_generation_conditions",
    "check_source_paths",
    "generation_conditions",
    "generation_report",
    "iter_source_files",
    "plan_blocks",
    "read_block",
    "require_pyarrow",
    "run_id",
]

BlockKind = Literal["files", "rows", "dataset", "generate"]
_KINDS = ("files", "rows", "dataset", "generate")
_ROW_FORMATS = ("csv", "parquet", "extxyz")
_ID_COLUMNS = ("material_id", "id", "cif_id")
_STEP = "read"  # the step of unreadable entries, as crystal.io.read_structures names it


# ---------------------------------------------------------------------------- blocks
@dataclass(frozen=True)
class BlockSpec:
    """What a worker needs to produce block ``index`` of a source (see :func:`read_block`).

    ``kind``:

    * ``"files"``: the whole files ``paths`` (absolute), each read with
      :func:`crystal.io.read_file`;
    * ``"rows"``: rows (CSV/Parquet rows, extxyz frames, CIF data blocks, JSON items)
      ``[start, stop)`` of the one file ``path``; ``offset`` is the byte offset of row
      ``start`` in CSV and extxyz files (where a reader seeks to), 0 otherwise;
    * ``"dataset"``: structures ``[start, stop)`` of the dataset;
    * ``"generate"``: ``count`` valid crystals asked of the generator, seed ``seed`` (round 0;
      :func:`crystal.generation.round_seed` for the retries), ids ``<name>-<run_id>-<index>-<k>``
      (``run_id`` empty: a fresh random token).

    ``count`` is the number of inputs planned for the block (for ``"files"`` one per file,
    unless a limit made the planner count CIF data blocks and JSON items; for ``"generate"``
    the valid crystals asked for, the rejected samples coming on top).
    """

    index: int
    kind: BlockKind
    paths: tuple[str, ...] = ()
    path: str | None = None
    start: int = 0
    stop: int = 0
    count: int = 0
    seed: int = 0
    offset: int = 0
    run_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (``paths`` as a list); :meth:`from_dict` reads it back."""
        return {f.name: (list(self.paths) if f.name == "paths" else getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BlockSpec:
        """The spec :meth:`to_dict` wrote; unknown keys or an unknown kind raise :class:`ConfigError`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"block spec: unknown field(s) {unknown}; allowed: {sorted(known)}")
        if data.get("kind") not in _KINDS:
            raise ConfigError(f"block spec: kind {data.get('kind')!r}; allowed: {', '.join(_KINDS)}")
        values = dict(data)
        values["paths"] = tuple(str(p) for p in values.get("paths", ()))
        return cls(**values)


@dataclass
class SourceBlock:
    """One block read: its crystals (CPU, float64, ``info["source"]`` set), the entries that
    could not be used, and every input id of the block (``batch.ids`` then the failures' ids)."""

    spec: BlockSpec
    batch: CrystalBatch
    failures: list[Failure]
    ids: list[str]


_MASK31 = (1 << 31) - 1


def _permute31(x: int) -> int:
    """A bijection of ``[0, 2**31)`` that mixes bits (odd multipliers and xor-shifts); 0 -> 0."""
    x &= _MASK31
    x = (x * 0x5BD1E995) & _MASK31
    x ^= x >> 15
    x = (x * 0x2C1B3C6D) & _MASK31
    x ^= x >> 12
    x = (x * 0x297A2D39) & _MASK31
    x ^= x >> 15
    return x


def block_seed(seed: int, index: int) -> int:
    """The generator seed of block ``index`` of a run seeded ``seed``.

    Block 0 uses ``seed`` itself (a run of one block draws exactly what an unblocked run
    draws); block ``k > 0`` uses ``(seed mod 2**31) XOR P(k)`` with ``P`` a bit-mixing
    bijection of ``[0, 2**31)`` with ``P(0) = 0``: always ``< 2**31``, never equal to ``seed``
    and different for every block of a run (for ``k < 2**31``), so no two blocks draw the same
    samples.
    """
    if seed < 0 or index < 0:
        raise ValueError(f"block_seed: seed ({seed}) and index ({index}) must be >= 0")
    if index == 0:
        return seed
    return (seed & _MASK31) ^ _permute31(index)


# ---------------------------------------------------------------------------- pyarrow
def require_pyarrow(path: str | os.PathLike[str] | None = None) -> Any:
    """``pyarrow.parquet`` (imported now); without pyarrow a :class:`ConfigError` says how to install it."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(
            f"{where}Parquet files need pyarrow, which is not installed: pip install pyarrow "
            "(or pip install 'crystal-pipeline[ray]')"
        ) from None
    return pq


# ---------------------------------------------------------------------------- listing files
_BY_SUFFIX = {
    ".cif": "cif",
    ".vasp": "poscar",
    ".poscar": "poscar",
    ".extxyz": "extxyz",
    ".xyz": "extxyz",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
}


def _detect(path: str, fmt: str | None) -> str:
    """The format of ``path``: ``fmt`` when given, else by name as
    :func:`crystal.io.detect_format` (plus ``.parquet``); unknown names raise :class:`ConfigError`."""
    if fmt:
        return fmt
    found = _BY_SUFFIX.get(os.path.splitext(os.path.basename(path))[1].lower())
    return found if found is not None else detect_format(Path(path))  # POSCAR*/CONTCAR*, or the error


def _recognised(name: str) -> bool:
    """A file a directory source reads (as :func:`crystal.io.expand_paths`, plus ``.parquet``)."""
    if name == "id_prop.csv":
        return False
    try:
        _detect(name, None)
    except ConfigError:
        return False
    return True


def _sorted_entries(directory: str) -> list[os.DirEntry[str]]:
    """The entries of ``directory`` sorted by name (names only: no stat on Linux)."""
    try:
        with os.scandir(directory) as it:
            entries = list(it)
    except (NotADirectoryError, FileNotFoundError, PermissionError):
        return []
    entries.sort(key=lambda e: e.name)
    return entries


def _iglob_sorted(pattern: str) -> Iterator[tuple[str, bool, bool]]:
    """``(path, is_dir, exists)`` for what ``sorted(glob.glob(pattern))`` lists, one directory
    at a time.

    Same rules as :func:`glob.glob` (not recursive, ``**`` is ``*``; names starting with a dot
    only match a part starting with a dot). Each directory is listed once, sorted by name,
    and nothing below it is visited until it is reached, so the first matches come without
    walking the rest; entries are not stat'ed (only symbolic links are followed, to find
    broken ones).
    """
    head, *parts = Path(pattern).parts
    yield from _glob_walk(head, parts)


def _glob_walk(current: str, parts: list[str]) -> Iterator[tuple[str, bool, bool]]:
    if not parts:
        yield current, os.path.isdir(current), os.path.exists(current)
        return
    part, rest = parts[0], parts[1:]
    if not any(ch in part for ch in "*?["):
        nxt = os.path.join(current, part)
        if rest:
            if os.path.isdir(nxt):
                yield from _glob_walk(nxt, rest)
        elif os.path.lexists(nxt):
            yield nxt, os.path.isdir(nxt), os.path.exists(nxt)
        return
    hidden_ok = part.startswith(".")
    for entry in _sorted_entries(current):
        if (entry.name.startswith(".") and not hidden_ok) or not fnmatch.fnmatch(entry.name, part):
            continue
        if rest:
            if entry.is_dir():
                yield from _glob_walk(entry.path, rest)
        else:
            exists = not entry.is_symlink() or os.path.exists(entry.path)
            yield entry.path, entry.is_dir(), exists


def _absolute(pattern: str, base_dir: Path) -> str:
    p = Path(pattern)
    if not p.is_absolute():
        p = base_dir / p
    return str(p) if p.is_absolute() else os.path.abspath(p)


def _iter_pattern(pattern: str, base_dir: Path) -> Iterator[str]:
    """The files one entry of ``paths`` names, lazily, in :func:`crystal.io.expand_paths` order."""
    full = _absolute(pattern, base_dir)
    if any(ch in full for ch in "*?["):
        matches: Iterable[tuple[str, bool, bool]] = _iglob_sorted(full)
    else:
        matches = [(full, os.path.isdir(full), os.path.exists(full))] if os.path.lexists(full) else []
    found = False
    for path, is_dir, exists in matches:
        if not exists:  # a broken link: expand_paths refuses the pattern too
            raise ConfigError(f"input path {pattern!r} matches no file ({path} does not exist)")
        found = True
        if is_dir:
            for child in _sorted_entries(path):
                if child.is_file() and _recognised(child.name):
                    yield child.path
        else:
            yield path
    if not found:
        raise ConfigError(f"input path {pattern!r} matches no file")


def iter_source_files(patterns: Iterable[str], base_dir: Path) -> Iterator[str]:
    """Every file a ``files`` source reads, lazily, in the order of
    :func:`crystal.io.expand_paths` (absolute paths; directories give their recognised files,
    ``.parquet`` included). A pattern that matches nothing raises :class:`ConfigError` when
    it is reached."""
    for pattern in patterns:
        yield from _iter_pattern(pattern, base_dir)


def check_source_paths(patterns: Iterable[str], base_dir: Path) -> None:
    """Raise :class:`ConfigError` for the first pattern that matches nothing, looking only as
    far as each pattern's first match (cheap however many files a glob matches)."""
    for pattern in patterns:
        full = _absolute(pattern, base_dir)
        if any(ch in full for ch in "*?["):
            first = next(_iglob_sorted(full), None)
            ok = first is not None and first[2]
        else:
            ok = os.path.exists(full)
        if not ok:
            raise ConfigError(f"input path {pattern!r} matches no file")


# ---------------------------------------------------------------------------- row scans
class _Lines:
    """Decoded lines of a binary file for :mod:`csv`, with the byte offset reached so far
    (``\\r\\n`` read as ``\\n``, as a text-mode read does)."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.pos = fh.tell()

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        raw = self.fh.readline()
        if not raw:
            raise StopIteration
        self.pos += len(raw)
        line = raw.decode("utf-8")
        return line[:-2] + "\n" if line.endswith("\r\n") else line


def _csv_header(path: str, id_column: str | None) -> list[str] | None:
    """The CSV's columns when it is a table of CIFs read row by row; ``None`` when the file
    is read whole instead (empty, unreadable or without a ``cif`` column: one failure row)."""
    try:
        with open(path, "rb") as fh:
            header = next(csv.reader(_Lines(fh)), None)
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    if header is None:
        return None
    if id_column and id_column not in header:
        raise ConfigError(f"{path}: id column {id_column!r} not found (columns: {', '.join(header)})")
    return header if "cif" in header else None


def _scan_csv(path: str, chunk: int, max_rows: int | None) -> Iterator[tuple[int, int, int]]:
    """``(start, stop, offset)`` of each block of ``chunk`` records (blank lines skipped, as
    :class:`csv.DictReader` does), streaming; a record that cannot be decoded ends the file."""
    with open(path, "rb") as fh:
        lines = _Lines(fh)
        reader = csv.reader(lines)
        next(reader)  # header
        k = start = 0
        offset = lines.pos
        while max_rows is None or k < max_rows:
            try:
                row = next(reader)
            except StopIteration:
                break
            except (UnicodeDecodeError, csv.Error):
                yield start, k + 1, offset  # read_block reports record k and what follows as unreadable
                return
            if not row:
                continue
            k += 1
            if k - start == chunk:
                yield start, k, offset
                start, offset = k, lines.pos
        if k > start:
            yield start, k, offset


def _skip_extxyz_frame(fh: BinaryIO) -> bool:
    """Move past one frame (as ASE's index scan does); ``False`` at the end of the file.
    A header line that is not a number of atoms raises :class:`ValueError`."""
    line = fh.readline()
    if not line.strip():
        return False
    natoms = int(line)
    fh.readline()  # comment line
    for _ in range(natoms):
        fh.readline()
    while True:  # up to 3 VEC lines (cell vectors of the plain xyz flavour)
        pos = fh.tell()
        if not fh.readline().lstrip().startswith(b"VEC"):
            fh.seek(pos)
            return True


def _extxyz_multi(path: str) -> bool:
    """Whether ``path`` holds at least two frames that can be found (else it is read whole,
    with :func:`crystal.io.read_file`'s ids and errors)."""
    try:
        with open(path, "rb") as fh:
            return _skip_extxyz_frame(fh) and _skip_extxyz_frame(fh)
    except (OSError, ValueError):
        return False


def _scan_extxyz(path: str, chunk: int, max_rows: int | None) -> Iterator[tuple[int, int, int]]:
    """``(start, stop, offset)`` of each block of ``chunk`` frames, streaming; a frame whose
    header cannot be read ends the file (read_block reports it)."""
    with open(path, "rb") as fh:
        k = start = offset = 0
        while max_rows is None or k < max_rows:
            try:
                more = _skip_extxyz_frame(fh)
            except ValueError:
                yield start, k + 1, offset
                return
            if not more:
                break
            k += 1
            if k - start == chunk:
                yield start, k, offset
                start, offset = k, fh.tell()
        if k > start:
            yield start, k, offset


def _parquet_rows(path: str, id_column: str | None) -> int | None:
    """Rows of a Parquet table of structures (from its metadata), or ``None`` when it is read
    whole (unreadable, or no ``cif``/``extxyz`` column: one failure row)."""
    pq = require_pyarrow(path)
    try:
        pf = pq.ParquetFile(path)
    except Exception:
        return None
    names = pf.schema_arrow.names
    if id_column and id_column not in names:
        raise ConfigError(f"{path}: id column {id_column!r} not found (columns: {', '.join(names)})")
    if "cif" not in names and "extxyz" not in names:
        return None
    return int(pf.metadata.num_rows)


_DATA_BLOCK = re.compile(r"^\s*data_(\S*)", re.MULTILINE)


def _count_entries(path: str, fmt: str) -> int:
    """Entries of a CIF (distinct data blocks, as pymatgen's CifFile keys them) or JSON
    (list items) file without parsing structures; 1 when unreadable (one failure row)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return 1
    if fmt == "cif":
        names = {m.group(1) for m in _DATA_BLOCK.finditer(text) if "powder_pattern" not in m.group(0)}
        return max(1, len(names))
    if fmt == "json":
        try:
            data = json.loads(text)
        except ValueError:
            return 1
        return max(1, len(data)) if isinstance(data, list) else 1
    return 1


# ---------------------------------------------------------------------------- planning
def plan_blocks(
    source: AnySource, *, base_dir: Path, chunk_size: int, seed: int, run_id: str = ""
) -> Iterator[BlockSpec]:
    """The blocks of ``source``, lazily, with indices 0, 1, 2, ... (the same on every run).

    ``base_dir``: relative ``paths`` are relative to it (the pipeline file's folder);
    ``chunk_size``: inputs per block (files, rows, samples); ``seed``: the pipeline seed
    (generator blocks get :func:`block_seed`); ``run_id``: the run's token, put in the ids of
    generated crystals (``""``: each block draws a random one). Nothing is parsed here: files are listed one
    directory at a time, and multi-structure files are counted by a streaming scan (CSV,
    extxyz) or their metadata (Parquet). A pattern that matches nothing raises
    :class:`ConfigError` when the planner reaches it.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if source.type == "generate":
        for spec in _ranges("generate", source.num_samples, chunk_size, seed):
            yield replace(spec, run_id=run_id)
    elif source.type == "dataset":
        ids, _ = _load_dataset(source.name, source.limit)
        yield from _ranges("dataset", len(ids), chunk_size, seed)
    elif source.type == "files":
        yield from _plan_files(source, base_dir, chunk_size)
    else:  # pragma: no cover - the config only has these three
        raise ConfigError(f"source: unknown type {source.type!r}; allowed: files, dataset, generate")


def _ranges(kind: BlockKind, n: int, chunk: int, seed: int) -> Iterator[BlockSpec]:
    for index, start in enumerate(range(0, n, chunk)):
        stop = min(n, start + chunk)
        yield BlockSpec(
            index,
            kind,
            start=start,
            stop=stop,
            count=stop - start,
            seed=block_seed(seed, index) if kind == "generate" else 0,
        )


def _plan_files(source: FilesSource, base_dir: Path, chunk: int) -> Iterator[BlockSpec]:
    limit = source.limit
    fmt_given = cast(str | None, source.format)
    index = planned = 0
    pending: list[str] = []
    pending_count = 0

    def take(n: int) -> int:
        """How many of ``n`` more inputs the limit lets in."""
        return n if limit is None else max(0, min(n, limit - planned))

    for path in iter_source_files(source.paths, base_dir):
        if limit is not None and planned >= limit:
            break
        fmt = _detect(path, fmt_given)
        ranges: Iterator[tuple[int, int, int]] | None = None
        if fmt == "csv":
            if _csv_header(path, source.id_column) is not None:
                ranges = _scan_csv(path, chunk, None if limit is None else limit - planned)
        elif fmt == "extxyz":
            if _extxyz_multi(path):
                ranges = _scan_extxyz(path, chunk, None if limit is None else limit - planned)
        elif fmt == "parquet":
            n_rows = _parquet_rows(path, source.id_column)
            if n_rows is not None:
                n_rows = take(n_rows)
                ranges = iter([(s, min(n_rows, s + chunk), 0) for s in range(0, n_rows, chunk)])
        elif limit is not None and fmt in ("cif", "json"):
            n = _count_entries(path, fmt)
            if n > limit - planned:  # only the first entries of this file are inputs
                ranges = iter([(0, limit - planned, 0)])
            elif n > 1:
                pending.append(path)
                pending_count += n
                planned += n
                if len(pending) >= chunk:
                    yield BlockSpec(index, "files", paths=tuple(pending), count=pending_count)
                    index, pending, pending_count = index + 1, [], 0
                continue
        if ranges is None:  # one whole file
            pending.append(path)
            pending_count += 1
            planned += 1
            if len(pending) >= chunk:
                yield BlockSpec(index, "files", paths=tuple(pending), count=pending_count)
                index, pending, pending_count = index + 1, [], 0
            continue
        if pending:  # keep the input order: files listed before this one form a (smaller) block
            yield BlockSpec(index, "files", paths=tuple(pending), count=pending_count)
            index, pending, pending_count = index + 1, [], 0
        for start, stop, offset in ranges:
            yield BlockSpec(index, "rows", path=path, start=start, stop=stop, count=stop - start, offset=offset)
            index += 1
            planned += stop - start
    if pending:
        yield BlockSpec(index, "files", paths=tuple(pending), count=pending_count)


# ---------------------------------------------------------------------------- reading
@dataclass
class _Entries:
    """Entries of a block in input order: ``(id, structure, None)`` or ``(id, None, reason)``."""

    items: list[tuple[str, Any, str | None, str]]  # id, structure, error, source

    def add(self, ident: str, structure: Any, error: str | None, source: str) -> None:
        if error is None:
            problem = check_structure(structure)
            if problem:
                structure, error = None, problem
        self.items.append((ident, structure if error is None else None, error, source))


def read_block(
    spec: BlockSpec,
    source: AnySource,
    *,
    base_dir: Path,
    generator: Generator | None = None,
    min_distance: float | None = None,
) -> SourceBlock:
    """Read block ``spec`` of ``source`` (planned by :func:`plan_blocks` with the same
    ``base_dir``).

    Unreadable entries are failures of step ``"read"`` naming the file, row and reason (as
    :func:`crystal.io.read_structures` reports them); with ``min_distance`` (Å) the crystals
    are also checked as the runner checks its inputs (:meth:`CrystalBatch.validate`: atoms
    closer than that, NaN, degenerate cells), those that fail becoming failures of step
    ``"source"``. Ids are made unique within the block (``#n`` suffixes). ``generator``: the
    generator component, needed for a ``generate`` source.

    A ``generate`` block asks :func:`crystal.generation.generate_valid` for ``spec.count`` valid
    crystals (those failing the ``min_distance`` check count as rejected, so the block still
    delivers ``count``) within ``ceil(count × source.max_attempts)`` samples drawn; each
    rejected sample is a failure of step ``"generate"`` with its reason.
    """
    import torch

    from crystal.batch import CrystalBatch

    entries = _Entries([])
    if spec.kind == "generate":
        if source.type != "generate":
            raise ConfigError(f"block {spec.index}: a 'generate' block needs a generate source, got {source.type!r}")
        if generator is None:
            raise ConfigError(f"block {spec.index}: a generate source needs its generator component (generator=...)")
        from crystal.generation import generate_valid

        where = f"generator:{generator.name}"
        token = spec.run_id or secrets.token_hex(4)

        def check(b: CrystalBatch) -> list[str | None]:
            return b.validate(min_distance) if min_distance is not None else [None] * len(b)

        out = generate_valid(
            generator,
            spec.count,
            generation_conditions(source),
            seed=spec.seed,
            max_attempts=math.ceil(spec.count * source.max_attempts - 1e-9),
            id_prefix=f"{generator.name}-{token}-{spec.index}",
            check=check,
        )
        batch = out.batch.to("cpu", torch.float64)
        for info in batch.info:
            info.setdefault("source", where)
        rejected = [Failure(r.id, "generate", r.reason, where) for r in out.rejected]
        return _finish(spec, batch, rejected, min_distance)
    if spec.kind == "dataset":
        if source.type != "dataset":
            raise ConfigError(f"block {spec.index}: a 'dataset' block needs a dataset source, got {source.type!r}")
        ids, structures = _load_dataset(source.name, source.limit)
        for ident, s in zip(ids[spec.start : spec.stop], structures[spec.start : spec.stop], strict=True):
            entries.add(str(ident), s, None, f"dataset:{source.name}")
    elif source.type != "files":
        raise ConfigError(f"block {spec.index}: a {spec.kind!r} block needs a files source, got {source.type!r}")
    elif spec.kind == "files":
        for path in spec.paths:
            _read_whole(path, cast(str | None, source.format), source.id_column, entries)
    elif spec.kind == "rows":
        if spec.path is None:
            raise ConfigError(f"block {spec.index}: a 'rows' block needs a path")
        fmt = _detect(spec.path, cast(str | None, source.format))
        if fmt == "csv":
            _read_csv_rows(spec, source.id_column, entries)
        elif fmt == "parquet":
            _read_parquet_rows(spec.path, spec.start, spec.stop, source.id_column, entries)
        elif fmt == "extxyz":
            _read_extxyz_rows(spec, entries)
        else:  # the first entries of a CIF or JSON file cut by the limit
            _read_entries(spec.path, fmt, source.id_column, entries, spec.start, spec.stop)
    else:
        raise ConfigError(f"block {spec.index}: unknown kind {spec.kind!r}; allowed: {', '.join(_KINDS)}")
    good = [(i, s, src) for i, s, err, src in entries.items if err is None]
    failures = [Failure(i, _STEP, err, src) for i, _, err, src in entries.items if err is not None]
    batch = CrystalBatch.from_structures([s for _, s, _ in good], [i for i, _, _ in good], dtype=torch.float64)
    for info, (_, _, src) in zip(batch.info, good, strict=True):
        info["source"] = src
    return _finish(spec, batch, failures, min_distance)


def _finish(spec: BlockSpec, batch: CrystalBatch, failures: list[Failure], min_distance: float | None) -> SourceBlock:
    """Unique ids (``#n``), then the runner's input check; the block."""
    import torch

    used: set[str] = set()
    suffix: dict[str, int] = {}

    def unique(ident: str) -> str:
        out, n = ident, suffix.get(ident, 0)
        while out in used:
            n += 1
            out = f"{ident}#{n}"
        suffix[ident] = n
        used.add(out)
        return out

    batch.ids = [unique(i) for i in batch.ids]
    failures = [Failure(unique(f.id), f.step, f.reason, f.source) for f in failures]
    if min_distance is not None and len(batch):
        reasons = batch.validate(min_distance)
        keep = torch.tensor([r is None for r in reasons], dtype=torch.bool)
        failures += [
            Failure(i, "source", r, str(inf.get("source", "")))
            for i, r, inf in zip(batch.ids, reasons, batch.info, strict=True)
            if r is not None
        ]
        batch = batch.select(keep)
    return SourceBlock(spec, batch, failures, list(batch.ids) + [f.id for f in failures])


def generation_conditions(source: GenerateSource) -> GenerationConditions:
    """The :class:`~crystal.components.GenerationConditions` a generate source asks for."""
    from crystal.components import GenerationConditions

    return GenerationConditions(
        composition=source.composition,
        chemical_system=tuple(source.chemical_system) if source.chemical_system else None,
        formula_units=tuple(source.formula_units) if source.formula_units else None,
        space_groups=tuple(source.space_groups) if source.space_groups else None,
    )


def run_id(started: str | None, run_dir: str | os.PathLike[str]) -> str:
    """The 8-hex-digit id of a run, put in the ids of its generated crystals: a hash of when it
    started (kept on ``--resume``, so a resumed run names its crystals as the interrupted one did;
    the run directory's absolute path when the start is unknown)."""
    import hashlib

    key = started if started else os.path.abspath(run_dir)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:8]


def check_generation_conditions(source: GenerateSource, cls: type[Any], config: Any) -> str | None:
    """Whether generator class ``cls`` (with its validated ``config``) accepts the conditions of
    ``source`` (:meth:`~crystal.components.Generator.check_conditions`, cheap: no model is built);
    ``None``, or the problem naming the source field (``"field 'chemical_system': ..."``)."""
    from crystal.components import ConditionError

    check = getattr(cls, "check_conditions", None)
    if check is None:
        return None
    try:
        check(generation_conditions(source), config)
    except ConditionError as exc:
        return f"field {exc.field!r}: {exc}" if exc.field else str(exc)
    except ConfigError as exc:
        return str(exc)
    return None


def generation_report(source: GenerateSource, delivered: int, failures: Iterable[Failure]) -> dict[str, Any]:
    """What a generate source delivered, for the run's manifest (``generation``) and the shortfall
    warning: ``requested`` (``num_samples``), ``delivered`` (valid crystals that entered the run),
    ``rejected`` (failures of step ``"generate"``), ``reasons`` (the ten commonest kinds of
    rejection reason, numbers replaced by ``…``, with their counts), ``max_attempts`` and ``shortfall`` (``None``, or one line saying
    how many crystals are missing, why, and what to change)."""
    from crystal.generation import reason_kind

    rejected = [f for f in failures if f.step == "generate"]
    reasons = Counter(reason_kind(f.reason) for f in rejected)
    missing = source.num_samples - delivered
    shortfall = None
    if missing > 0:
        common = "; ".join(f"{n}× {r}" for r, n in reasons.most_common(3)) or "no sample was rejected"
        shortfall = (
            f"source: generator {source.generator!r} delivered {delivered} of num_samples={source.num_samples} "
            f"crystals; {len(rejected)} samples were rejected ({common}) before the attempt budget ran out "
            f"(max_attempts={source.max_attempts:g} samples per requested crystal); raise source.max_attempts or "
            "change the generator's config or conditions"
        )
    return {
        "generator": source.generator,
        "requested": source.num_samples,
        "delivered": delivered,
        "rejected": len(rejected),
        "reasons": dict(reasons.most_common(10)),
        "max_attempts": source.max_attempts,
        "shortfall": shortfall,
    }


@functools.lru_cache(maxsize=4)
def _load_dataset(name: str, limit: int | None) -> tuple[list[str], list[Structure]]:
    """``(ids, structures)`` of a registered dataset (cached per process: blocks slice it)."""
    from crystal.registries import datasets

    known = datasets()
    if name not in known:
        raise ConfigError(f"source: field 'name': no dataset {name!r}; allowed: {', '.join(sorted(known))}")
    ids, structures = known[name].load(limit)
    return [str(i) for i in ids], list(structures)


def _read_whole(path: str, fmt_given: str | None, id_column: str | None, entries: _Entries) -> None:
    """One whole file, exactly as :func:`crystal.io.read_file` reads it."""
    fmt = _detect(path, fmt_given)
    if fmt == "parquet":
        _read_parquet_rows(path, 0, None, id_column, entries)
        return
    try:
        res = read_file(Path(path), cast(Any, fmt), id_column)
    except (csv.Error, UnicodeDecodeError) as exc:
        entries.add(Path(path).stem, None, f"cannot read file: {short_error(exc)}", path)
        return
    for ident, s, src in zip(res.ids, res.structures, res.sources, strict=True):
        entries.items.append((ident, s, None, src))
    for f in res.failures:
        entries.items.append((f.id, None, f.reason, f.source))


def _read_entries(path: str, fmt: str, id_column: str | None, entries: _Entries, start: int, stop: int) -> None:
    """Entries ``[start, stop)`` of a CIF or JSON file, in file order (ids of the whole file)."""
    from crystal.io import _parse

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        entries.add(p.stem, None, f"cannot read file: {exc}", path)
        return
    if not text.strip():
        entries.add(p.stem, None, "file is empty", path)
        return
    for k, (ident, structure, error) in enumerate(_parse(text, p, cast(Any, fmt), id_column)):
        if k >= stop:
            break
        if k >= start:
            entries.add(ident, structure, error, path)


def _cif_row(text: Any, ident: str, row: str, column: str) -> tuple[str, Any, str | None]:
    """One table row holding a CIF: ``(id, structure, error)`` as crystal.io reads CSV rows."""
    if text is None or not str(text).strip():
        return ident, None, f"{row}: field {column!r} is empty"
    ident, structure, err = next(iter(parse_cif(str(text), ident)))
    return ident, structure, (f"{row}: field {column!r}: {err}" if err else None)


def _read_csv_rows(spec: BlockSpec, id_column: str | None, entries: _Entries) -> None:
    assert spec.path is not None
    path = spec.path
    stem = Path(path).stem
    with open(path, "rb") as fh:
        header = next(csv.reader(_Lines(fh)))
        fh.seek(spec.offset)
        reader = csv.DictReader(_Lines(fh), fieldnames=header)
        id_col = id_column or next((c for c in _ID_COLUMNS if c in header), None)
        for k in range(spec.start, spec.stop):
            try:
                row = next(reader)
            except StopIteration:
                entries.add(f"{stem}:{k}", None, f"row {k + 2}: missing (the file is shorter than when planned)", path)
                break
            except (UnicodeDecodeError, csv.Error) as exc:
                why = f"row {k + 2} and the rest of the file cannot be read: {short_error(exc)}"
                entries.add(f"{stem}:{k}", None, why, path)
                break
            ident = str(row[id_col]) if id_col else f"{stem}:{k}"
            entries.add(*_cif_row(row.get("cif"), ident, f"row {k + 2}", "cif"), path)


def _extxyz_one(text: str, ident: str) -> tuple[str, Any, str | None]:
    """A single extxyz frame: ``(id, structure, error)`` with crystal.io's checks."""
    from ase.io import read
    from pymatgen.io.ase import AseAtomsAdaptor

    try:
        frames = read(io.StringIO(text), index=":", format="extxyz")
    except Exception as exc:
        return ident, None, f"not a valid extended XYZ frame: {short_error(exc)}"
    if len(frames) != 1:
        return ident, None, f"expected one extended XYZ frame, found {len(frames)}"
    atoms = frames[0]
    if not atoms.pbc.all() or abs(atoms.cell.volume) < 1e-9:
        return ident, None, "frame has no periodic 3-D cell (Lattice= and pbc are needed)"
    return ident, AseAtomsAdaptor.get_structure(atoms), None


def _read_parquet_rows(path: str, start: int, stop: int | None, id_column: str | None, entries: _Entries) -> None:
    """Rows ``[start, stop)`` of a Parquet table with a ``cif`` (or ``extxyz``) column, reading
    only the row groups that hold them, batch by batch."""
    pq = require_pyarrow(path)
    stem = Path(path).stem
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:
        entries.add(stem, None, f"not a valid Parquet file: {short_error(exc)}", path)
        return
    names = pf.schema_arrow.names
    if id_column and id_column not in names:
        raise ConfigError(f"{path}: id column {id_column!r} not found (columns: {', '.join(names)})")
    text_cols = [c for c in ("cif", "extxyz") if c in names]  # a row uses the first that is not null
    if not text_cols:
        why = f"not a structure file: a Parquet table needs a 'cif' or 'extxyz' column (columns: {', '.join(names)})"
        entries.add(stem, None, why, path)
        return
    id_col = id_column or next((c for c in _ID_COLUMNS if c in names), None)
    meta = pf.metadata
    stop = meta.num_rows if stop is None else min(stop, meta.num_rows)
    groups, first, row0 = [], None, 0
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        if row0 < stop and row0 + n > start:
            groups.append(g)
            first = row0 if first is None else first
        row0 += n
    if not groups or first is None:
        return
    k = first
    columns = text_cols + ([id_col] if id_col and id_col not in text_cols else [])
    for rb in pf.iter_batches(batch_size=4096, row_groups=groups, columns=columns):
        lo, hi = max(start - k, 0), min(stop - k, rb.num_rows)
        if hi > lo:
            texts = {c: rb.column(c).slice(lo, hi - lo).to_pylist() for c in text_cols}
            idents = rb.column(id_col).slice(lo, hi - lo).to_pylist() if id_col else [None] * (hi - lo)
            for j, ident in enumerate(idents):
                row = k + lo + j
                name = str(ident) if ident is not None else f"{stem}:{row}"
                col = next((c for c in text_cols if texts[c][j] is not None and str(texts[c][j]).strip()), None)
                if col is None:
                    which = " and ".join(repr(c) for c in text_cols)
                    entries.add(name, None, f"row {row}: field {which} is empty", path)
                elif col == "cif":
                    entries.add(*_cif_row(texts[col][j], name, f"row {row}", "cif"), path)
                else:
                    ident2, s, err = _extxyz_one(str(texts[col][j]), name)
                    entries.add(ident2, s, f"row {row}: field 'extxyz': {err}" if err else None, path)
        k += rb.num_rows
        if k >= stop:
            break


def _read_extxyz_rows(spec: BlockSpec, entries: _Entries) -> None:
    """Frames ``[start, stop)`` of a multi-frame extxyz file (ids ``<stem>:<k>``): parsed
    together, and one by one when that fails, so that a bad frame is its own failure."""
    from ase.io import read
    from pymatgen.io.ase import AseAtomsAdaptor

    assert spec.path is not None
    path, stem = spec.path, Path(spec.path).stem
    texts: list[tuple[int, str | None]] = []  # None: not UTF-8
    broken: tuple[int, str] | None = None
    with open(path, "rb") as fh:
        fh.seek(spec.offset)
        for k in range(spec.start, spec.stop):
            begin = fh.tell()
            try:
                more = _skip_extxyz_frame(fh)
            except ValueError as exc:
                broken = (k, f"frame {k} and the rest of the file cannot be read: {short_error(exc)}")
                break
            if not more:
                broken = (k, f"frame {k}: missing (the file is shorter than when planned)")
                break
            end = fh.tell()
            fh.seek(begin)
            raw = fh.read(end - begin)
            try:
                texts.append((k, raw.decode("utf-8")))
            except UnicodeDecodeError:
                texts.append((k, None))
    frames: list[Any] = []
    together = all(t is not None for _, t in texts)
    if together and texts:
        try:
            frames = read(io.StringIO("".join(t or "" for _, t in texts)), index=":", format="extxyz")
            together = len(frames) == len(texts)
        except Exception:
            together = False
    if together:
        for (k, _), atoms in zip(texts, frames, strict=True):
            ident = f"{stem}:{k}"
            if not atoms.pbc.all() or abs(atoms.cell.volume) < 1e-9:
                entries.add(ident, None, "frame has no periodic 3-D cell (Lattice= and pbc are needed)", path)
            else:
                entries.add(ident, AseAtomsAdaptor.get_structure(atoms), None, path)
    else:
        for k, text in texts:
            if text is None:
                entries.add(f"{stem}:{k}", None, f"frame {k}: cannot be decoded as UTF-8", path)
            else:
                entries.add(*_extxyz_one(text, f"{stem}:{k}"), path)
    if broken is not None:
        entries.add(f"{stem}:{broken[0]}", None, broken[1], path)
