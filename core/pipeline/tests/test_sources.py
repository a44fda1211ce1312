"""Streaming sources: lazy block planning, reading blocks, ids as crystal.io reads them."""

from __future__ import annotations

import csv
import glob
import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

import crystal.io
import crystal_pipeline.sources as sources
from crystal.batch import CrystalBatch
from crystal.errors import ConfigError
from crystal.hookspecs import DatasetSpec
from crystal.io import expand_paths, read_structures, write_structures
from crystal_pipeline.config import DatasetSource, FilesSource, GenerateSource
from crystal_pipeline.sources import (
    BlockSpec,
    block_seed,
    check_source_paths,
    iter_source_files,
    plan_blocks,
    read_block,
)


def _cells() -> list[Structure]:
    rng = np.random.default_rng(0)
    out = [
        Structure(Lattice.cubic(4.1), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        Structure(Lattice.cubic(2.9), ["Fe"], [[0, 0, 0]]),
    ]
    for k in range(4):  # triclinic cells, coordinates with many digits
        lat = Lattice.from_parameters(3.5 + k * 0.3, 4.0, 4.4, 85 + k, 95, 100)
        base = np.array([[0, 0, 0], [0.5, 0.5, 0.5], [0.25, 0.75, 0.5]])
        out.append(Structure(lat, ["Li", "O", "Mg"], base + rng.uniform(-0.05, 0.05, (3, 3))))
    return out


def _read_all(source, tmp_path, chunk_size=3, **kw):
    """Plan and read every block; (batch ids, failure ids, structures, failures, blocks)."""
    blocks = list(plan_blocks(source, base_dir=tmp_path, chunk_size=chunk_size, seed=0))
    ids, fails, structs, failures = [], [], [], []
    for spec in blocks:
        blk = read_block(spec, source, base_dir=tmp_path, **kw)
        assert blk.ids == list(blk.batch.ids) + [f.id for f in blk.failures]
        assert blk.batch.dtype == torch.float64 and blk.batch.device.type == "cpu"
        assert all(inf.get("source") for inf in blk.batch.info)
        ids += blk.batch.ids
        fails += [f.id for f in blk.failures]
        failures += blk.failures
        structs += blk.batch.to_structures()
    return ids, fails, structs, failures, blocks


def _csv(path: Path, rows: list[tuple[str, str]], id_name: str = "material_id", newline: str = "\n") -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator=newline)
        w.writerow([id_name, "formation_energy", "cif"])
        for ident, cif in rows:
            w.writerow([ident, 0.5, cif])


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """A folder of every input kind, with bad entries among them."""
    d = tmp_path / "in"
    cells = _cells()
    write_structures(cells[:3], d, "cif", ids=["a", "b", "c"])
    (d / "bad.cif").write_text("data_x\n_cell_length_a 0\n")
    two = str(CifWriter(cells[0])).replace("data_NaCl", "data_one") + str(CifWriter(cells[1])).replace(
        "data_Fe", "data_two"
    )
    (d / "multi.cif").write_text(two)
    write_structures(cells[3:4], d, "poscar", ids=["p"])
    (d / "list.json").write_text(json.dumps([s.as_dict() for s in cells[:3]]))
    write_structures(cells, d / "frames.extxyz", "extxyz")
    rows = [(f"m{k}", str(CifWriter(cells[k % len(cells)]))) for k in range(7)]
    rows[4] = ("m4", "not a cif")
    _csv(d / "table.csv", rows, newline="\r\n")
    (d / "id_prop.csv").write_text("a,1\n")
    (d / "notes.txt").write_text("ignored")
    with open(d / "props.csv", "w") as fh:  # no cif column: one failure row
        fh.write("material_id,energy\nx,1\n")
    return d


# ---------------------------------------------------------------------------- ids and contents
@pytest.mark.parametrize("chunk_size", [1, 3, 100])
def test_blocks_give_read_structures_ids_and_structures(mixed: Path, tmp_path: Path, chunk_size: int) -> None:
    ref = read_structures([mixed])
    source = FilesSource(type="files", paths=["in"])
    ids, fails, structs, failures, blocks = _read_all(source, tmp_path, chunk_size)
    assert ids == ref.ids
    assert fails == [f.id for f in ref.failures]
    assert [(f.step, f.reason, f.source) for f in failures] == [(f.step, f.reason, f.source) for f in ref.failures]
    for s, r in zip(structs, ref.structures, strict=True):
        assert np.allclose(s.lattice.matrix, r.lattice.matrix) and np.allclose(s.frac_coords, r.frac_coords)
        assert [x.symbol for x in s.species] == [x.symbol for x in r.species]
    assert [b.index for b in blocks] == list(range(len(blocks)))
    if chunk_size == 3:  # the CSV and the extxyz are read in rows blocks of 3
        rows = [(Path(b.path or "").name, b.start, b.stop) for b in blocks if b.kind == "rows"]
        assert ("table.csv", 3, 6) in rows and ("frames.extxyz", 3, 6) in rows
        assert all(len(b.paths) <= 3 for b in blocks if b.kind == "files")


def test_plan_is_deterministic_and_specs_serialise(mixed: Path, tmp_path: Path) -> None:
    source = FilesSource(type="files", paths=["in/*.cif", "in/table.csv", "in"])
    a = list(plan_blocks(source, base_dir=tmp_path, chunk_size=2, seed=3))
    b = list(plan_blocks(source, base_dir=tmp_path, chunk_size=2, seed=3))
    assert a == b and len(a) > 5
    for spec in a:
        assert BlockSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
        assert pickle.loads(pickle.dumps(spec)) == spec
        assert all(os.path.isabs(p) for p in (*spec.paths, *([spec.path] if spec.path else [])))
    with pytest.raises(ConfigError, match="unknown field"):
        BlockSpec.from_dict({**a[0].to_dict(), "colour": 1})


def test_rows_block_read_alone_seeks_to_its_rows(mixed: Path, tmp_path: Path) -> None:
    """A worker reading only block k (out of order) gets exactly rows [start, stop)."""
    ref = read_structures([mixed / "table.csv", mixed / "frames.extxyz"])
    every = ref.ids + [f.id for f in ref.failures]
    source = FilesSource(type="files", paths=["in/table.csv", "in/frames.extxyz"])
    blocks = list(plan_blocks(source, base_dir=tmp_path, chunk_size=2, seed=0))
    assert [(Path(b.path or "").suffix, b.start, b.stop) for b in blocks] == [
        (".csv", 0, 2),
        (".csv", 2, 4),
        (".csv", 4, 6),
        (".csv", 6, 7),
        (".extxyz", 0, 2),
        (".extxyz", 2, 4),
        (".extxyz", 4, 6),
    ]
    assert all(b.offset > 0 for b in blocks[1:4]) and blocks[4].offset == 0
    for spec in reversed(blocks):
        blk = read_block(spec, source, base_dir=tmp_path)
        assert sorted(blk.ids) == sorted(i for i in every if i in blk.ids) and len(blk.ids) == spec.count
    bad = read_block(blocks[2], source, base_dir=tmp_path)  # rows 4-5: row 4 is not a CIF
    assert [f.id for f in bad.failures] == ["m4"] and bad.failures[0].reason.startswith("row 6: field 'cif'")
    assert bad.batch.ids == ["m5"]


def test_limit_is_lazy_and_exact(mixed: Path, tmp_path: Path) -> None:
    good = tmp_path / "good"
    write_structures(_cells(), good, "cif", ids=[f"g{k}" for k in range(6)])
    (good / "h-multi.cif").write_text((mixed / "multi.cif").read_text())
    write_structures(_cells(), good / "z.extxyz", "extxyz")
    for limit in (2, 7, 8, 10):
        source = FilesSource(type="files", paths=["good"], limit=limit)
        ids, fails, *_ = _read_all(source, tmp_path, chunk_size=3)
        assert ids == read_structures([good], limit=limit).ids and not fails
        assert len(ids) == limit


# ---------------------------------------------------------------------------- laziness
def test_planning_a_huge_glob_is_lazy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "many"
    d.mkdir()
    text = str(CifWriter(_cells()[1]))
    for k in range(2000):
        (d / f"s{k:04d}.cif").write_text(text)
    calls = {"stat": 0, "parse": 0, "count": 0}
    real_stat, real_parse, real_count = os.stat, crystal.io.parse_cif, sources._count_entries

    def stat(*a, **k):
        calls["stat"] += 1
        return real_stat(*a, **k)

    def parse(*a, **k):
        calls["parse"] += 1
        return real_parse(*a, **k)

    def count(*a, **k):
        calls["count"] += 1
        return real_count(*a, **k)

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(crystal.io, "parse_cif", parse)
    monkeypatch.setattr(sources, "_count_entries", count)
    source = FilesSource(type="files", paths=["many/s*.cif"])
    plan = plan_blocks(source, base_dir=tmp_path, chunk_size=16, seed=0)
    first = next(plan)
    assert first.paths == tuple(str(d / f"s{k:04d}.cif") for k in range(16))
    assert calls == {"stat": calls["stat"], "parse": 0, "count": 0} and calls["stat"] < 20
    blk = read_block(first, source, base_dir=tmp_path)
    assert calls["parse"] == 16 and blk.batch.ids == [f"s{k:04d}" for k in range(16)]
    assert sum(1 for _ in plan) == 2000 // 16 - 1 + (2000 % 16 > 0)
    assert calls["parse"] == 16 and calls["stat"] < 20  # the rest listed, none parsed or stat'ed
    limited = FilesSource(type="files", paths=["many"], limit=40)
    assert sum(b.count for b in plan_blocks(limited, base_dir=tmp_path, chunk_size=16, seed=0)) == 40
    assert calls["count"] == 40  # with a limit only the planned files are opened, to count their entries


def test_glob_order_and_rules_match_expand_paths(tmp_path: Path) -> None:
    for folder in ("b2", "a1", "a10", ".hidden", "c"):
        (tmp_path / folder).mkdir()
        for name in ("z.cif", "m.cif", ".h.cif", "x.vasp", "n.txt"):
            (tmp_path / folder / name).write_text("")
    (tmp_path / "c" / "sub").mkdir()
    for pattern in ("*/*.cif", "a*", "*", "[ab]*/?.cif", ".*/*.cif", "c"):
        assert list(iter_source_files([pattern], tmp_path)) == [str(p) for p in expand_paths([str(tmp_path / pattern)])]
    assert sorted(glob.glob(str(tmp_path / "*/*.cif"))) == list(iter_source_files(["*/*.cif"], tmp_path))
    for bad in ("nothing/*.cif", "missing.cif"):
        with pytest.raises(ConfigError, match=re.escape(f"input path '{bad}' matches no file")):
            list(plan_blocks(FilesSource(type="files", paths=["c", bad]), base_dir=tmp_path, chunk_size=2, seed=0))
        with pytest.raises(ConfigError, match="matches no file"):
            check_source_paths(["*/*.cif", bad], tmp_path)
    check_source_paths(["*/*.cif", "c/m.cif"], tmp_path)


# ---------------------------------------------------------------------------- tables
def test_parquet_rows_read_by_row_group(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    cells = _cells()
    cifs = [str(CifWriter(cells[k % len(cells)])) for k in range(10)]
    cifs[7] = None
    ids = [f"mp-{k}" for k in range(10)]
    pq.write_table(
        pa.table({"material_id": ids, "cif": cifs, "e": list(range(10))}), tmp_path / "t.parquet", row_group_size=3
    )
    source = FilesSource(type="files", paths=["t.parquet"])
    got, fails, structs, failures, blocks = _read_all(source, tmp_path, chunk_size=4)
    assert [(b.kind, b.start, b.stop) for b in blocks] == [("rows", 0, 4), ("rows", 4, 8), ("rows", 8, 10)]
    assert got == [i for i in ids if i != "mp-7"] and fails == ["mp-7"]
    assert "row 7: field 'cif' is empty" in failures[0].reason
    for k, s in enumerate(structs):
        assert (
            s.composition.reduced_formula
            == cells[[0, 1, 2, 3, 4, 5, 6, 8, 9][k] % len(cells)].composition.reduced_formula
        )
    # an extxyz column and no id column: ids <stem>:<row>
    from crystal_pipeline.shards import structure_texts

    texts = structure_texts(CrystalBatch.from_structures(cells), "extxyz")
    pq.write_table(pa.table({"extxyz": texts}), tmp_path / "x.parquet")
    got, fails, structs, *_ = _read_all(FilesSource(type="files", paths=["x.parquet"]), tmp_path, chunk_size=4)
    assert got == [f"x:{k}" for k in range(len(cells))] and not fails
    assert all(np.allclose(s.lattice.matrix, c.lattice.matrix) for s, c in zip(structs, cells, strict=True))
    # a table without structures is one failure row; a missing id column is a config error
    pq.write_table(pa.table({"a": [1, 2]}), tmp_path / "p.parquet")
    got, fails, _, failures, _ = _read_all(FilesSource(type="files", paths=["p.parquet"]), tmp_path)
    assert not got and fails == ["p"] and "needs a 'cif' or 'extxyz' column" in failures[0].reason
    with pytest.raises(ConfigError, match="id column 'nope' not found"):
        list(
            plan_blocks(
                FilesSource(type="files", paths=["t.parquet"], id_column="nope"),
                base_dir=tmp_path,
                chunk_size=4,
                seed=0,
            )
        )


def test_bad_frames_are_failures_of_their_block(tmp_path: Path) -> None:
    cells = _cells()
    write_structures(cells, tmp_path / "f.extxyz", "extxyz")
    text = (tmp_path / "f.extxyz").read_text()
    frames = text.split("\n")
    # frame 3 loses its periodic cell; the file ends with a header that is not a number
    lines_before = (2 + 2) + (1 + 2) + (3 + 2)  # frames 0-2 hold 2, 1 and 3 atoms
    frames[lines_before + 1] = frames[lines_before + 1].replace('pbc="T T T"', 'pbc="F F F"')
    (tmp_path / "f.extxyz").write_text("\n".join(frames).rstrip("\n") + "\nxx\ngarbage\n")
    source = FilesSource(type="files", paths=["f.extxyz"])
    blocks = list(plan_blocks(source, base_dir=tmp_path, chunk_size=2, seed=0))
    assert [(b.start, b.stop) for b in blocks] == [(0, 2), (2, 4), (4, 6), (6, 7)]
    got = [read_block(b, source, base_dir=tmp_path) for b in blocks]
    assert [f.id for f in got[1].failures] == ["f:3"] and "no periodic 3-D cell" in got[1].failures[0].reason
    assert got[1].batch.ids == ["f:2"]
    assert [f.id for f in got[3].failures] == ["f:6"] and "rest of the file cannot be read" in got[3].failures[0].reason
    assert sum(len(g.ids) for g in got) == 7


# ---------------------------------------------------------------------------- generate and dataset
class FakeGenerator:
    """Draws `n` one-atom cubic cells; the lattice constant comes from the seed."""

    name = "fake"

    def __init__(self) -> None:
        self.calls: list[tuple[int, int | None]] = []

    def generate(self, num_samples, conditions=None, *, seed=None):
        self.calls.append((num_samples, seed))
        rng = np.random.default_rng(seed)
        cells = [Structure(Lattice.cubic(rng.uniform(2.5, 4)), ["Cu"], [[0, 0, 0]]) for _ in range(num_samples)]
        return CrystalBatch.from_structures(
            cells, [f"fake-{seed}-{k}" for k in range(num_samples)], dtype=torch.float32
        )


def test_generate_blocks_use_block_seeds(tmp_path: Path) -> None:
    source = GenerateSource(type="generate", generator="fake", num_samples=10, composition="Cu")
    blocks = list(plan_blocks(source, base_dir=tmp_path, chunk_size=4, seed=7))
    assert [(b.kind, b.count, b.seed) for b in blocks] == [
        ("generate", n, block_seed(7, k)) for k, n in enumerate((4, 4, 2))
    ]
    gen = FakeGenerator()
    got = [read_block(b, source, base_dir=tmp_path, generator=gen) for b in blocks]  # type: ignore[arg-type]
    assert gen.calls == [(4, 7), (4, block_seed(7, 1)), (2, block_seed(7, 2))]
    ids = [i for g in got for i in g.ids]
    assert len(set(ids)) == 10 and got[0].batch.dtype == torch.float64
    assert got[0].batch.info[0]["source"] == "generator:fake"
    one = read_block(
        next(plan_blocks(source, base_dir=tmp_path, chunk_size=100, seed=7)), source, base_dir=tmp_path, generator=gen
    )  # type: ignore[arg-type]
    assert torch.equal(one.batch.lattices[:4], got[0].batch.lattices)  # one block draws what the unblocked run draws
    with pytest.raises(ConfigError, match="generator component"):
        read_block(blocks[0], source, base_dir=tmp_path)


def test_block_seed_properties() -> None:
    for seed in (0, 1, 12345, 2**31 - 1, 2**40 + 3):
        seeds = [block_seed(seed, k) for k in range(1, 5000)]
        assert block_seed(seed, 0) == seed
        assert len(set(seeds)) == len(seeds) and seed not in seeds and all(0 <= s < 2**31 for s in seeds)
    assert block_seed(0, 1) != block_seed(1, 1) and block_seed(5, 3) == block_seed(5, 3)


def test_dataset_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import crystal.registries

    cells = _cells()
    loads = []

    def load(limit):
        loads.append(limit)
        n = len(cells) if limit is None else min(limit, len(cells))
        return [f"d{k}" for k in range(n)], cells[:n]

    spec = DatasetSpec("toy", "test data", load)
    monkeypatch.setattr(crystal.registries, "datasets", lambda: {"toy": spec})
    sources._load_dataset.cache_clear()
    try:
        source = DatasetSource(type="dataset", name="toy", limit=5)
        ids, fails, structs, *_ = _read_all(source, tmp_path, chunk_size=2)
        assert ids == [f"d{k}" for k in range(5)] and not fails
        assert all(np.allclose(s.frac_coords, c.frac_coords) for s, c in zip(structs, cells[:5], strict=True))
        assert loads == [5]  # loaded once per process, sliced per block
        with pytest.raises(ConfigError, match="no dataset 'nope'; allowed: toy"):
            list(plan_blocks(DatasetSource(type="dataset", name="nope"), base_dir=tmp_path, chunk_size=2, seed=0))
    finally:
        sources._load_dataset.cache_clear()


# ---------------------------------------------------------------------------- ids and checks
def test_ids_unique_within_a_block_and_min_distance(tmp_path: Path) -> None:
    cells = _cells()
    close = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.02, 0, 0]])
    for folder in ("a", "b"):
        write_structures([cells[0], close], tmp_path / folder, "cif", ids=["x", "y"])
    source = FilesSource(type="files", paths=["a", "b"])
    (blk,) = [
        read_block(b, source, base_dir=tmp_path, min_distance=0.5)
        for b in plan_blocks(source, base_dir=tmp_path, chunk_size=4, seed=0)
    ]
    assert blk.batch.ids == ["x", "x#1"]
    assert [(f.id, f.step) for f in blk.failures] == [("y", "source"), ("y#1", "source")]
    assert blk.ids == ["x", "x#1", "y", "y#1"]
    split = [
        read_block(b, source, base_dir=tmp_path) for b in plan_blocks(source, base_dir=tmp_path, chunk_size=2, seed=0)
    ]
    assert [s.ids for s in split] == [["x", "y"], ["x", "y"]]  # other blocks: the inputs' own ids
