"""Sharded outputs: one Parquet file per block, atomic and idempotent, merged on demand."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from crystal.batch import CrystalBatch
from crystal.errors import ConfigError, CrystalError
from crystal.io import read_structures

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from crystal_pipeline.shards import (  # noqa: E402
    merge_shards,
    read_shards,
    shard_files,
    shard_path,
    structures_from_shard,
    write_shard,
)
from crystal_pipeline.sources import require_pyarrow  # noqa: E402


def _batch(ids: list[str], seed: int = 0) -> CrystalBatch:
    """Triclinic 3-atom cells with coordinates full of digits."""
    rng = np.random.default_rng(seed)
    cells = []
    for k in range(len(ids)):
        lat = Lattice.from_parameters(*(rng.uniform(3.2, 4.5, 3)), *(rng.uniform(80, 100, 3)))
        base = np.array([[0, 0, 0], [0.5, 0.5, 0.5], [0.25, 0.75, 0.5]]) + rng.uniform(-0.05, 0.05, (3, 3))
        cells.append(Structure(lat, ["Li", "O", ["Mg", "Al"][k % 2]], base))
    batch = CrystalBatch.from_structures(cells, ids)
    for info in batch.info:
        info["source"] = "test"
    return batch


def _rows(batch: CrystalBatch, extra: list[str]) -> list[dict]:
    formulas = batch.formulas()
    rows = [
        {
            "id": i,
            "status": "ok",
            "step": "",
            "reason": "",
            "source": "test",
            "formula": formulas[k],
            "energy": -1.25 * (k + 1),
            "converged": k % 2 == 0,
            "relax_steps": 10 + k,
        }
        for k, i in enumerate(batch.ids)
    ]
    rows += [{"id": i, "status": "failed", "step": "read", "reason": "not a CIF", "source": "x.csv"} for i in extra]
    return rows


def _lj_energy(structure: Structure) -> float:
    """Lennard-Jones energy from ASE (an independent reference), eV."""
    from ase.calculators.lj import LennardJones
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = LennardJones(sigma=1.8, epsilon=1.0, rc=5.0, smooth=True)
    return float(atoms.get_potential_energy())


def test_write_read_round_trip_and_schema_union(tmp_path: Path) -> None:
    a, b = _batch(["a0", "a1", "a2"]), _batch(["b0", "b1"], seed=1)
    write_shard(shard_path(tmp_path, 0), _rows(a, ["bad"]), a)
    rows_b = _rows(b, [])
    for r in rows_b:
        r["energy"] = int(r["energy"])  # int here, float in shard 0: merged as float
        r["note"] = "only here"
        del r["relax_steps"]
    write_shard(shard_path(tmp_path, 1), rows_b, b, structure_format="extxyz")
    assert [p.name for p in shard_files(tmp_path)] == ["block-00000000.parquet", "block-00000001.parquet"]
    tables = list(read_shards(tmp_path))
    assert [t.num_rows for t in tables] == [4, 2]
    assert tables[0].schema == tables[1].schema
    names = tables[0].column_names
    assert names[:6] == ["id", "status", "step", "reason", "source", "formula"]
    assert {"energy", "converged", "relax_steps", "note", "cif", "extxyz"} <= set(names)
    first = tables[0].to_pylist()
    assert [r["id"] for r in first] == ["a0", "a1", "a2", "bad"]
    assert [r["energy"] for r in first] == [-1.25, -2.5, -3.75, None]
    assert [r["converged"] for r in first] == [True, False, True, None]
    assert first[3]["cif"] is None and first[3]["reason"] == "not a CIF" and first[0]["note"] is None
    assert tables[1].column("energy").type == pa.float64() and tables[1].column("relax_steps").null_count == 2
    only = list(read_shards(tmp_path, columns=["id", "energy"]))
    assert [t.column_names for t in only] == [["id", "energy"]] * 2
    with pytest.raises(ConfigError, match="unknown shard column"):
        list(read_shards(tmp_path, columns=["nope"]))


def test_structures_round_trip(tmp_path: Path) -> None:
    batch = _batch([f"s{k}" for k in range(4)])
    for fmt in ("extxyz", "cif"):
        write_shard(tmp_path / f"{fmt}.parquet", _rows(batch, ["gone"]), batch, structure_format=fmt)
        table = pq.read_table(tmp_path / f"{fmt}.parquet")
        back = structures_from_shard(table)
        assert back.ids == batch.ids and [i["source"] for i in back.info] == ["test"] * 4
        assert torch.equal(
            back.crystal_properties["energy"], torch.tensor([-1.25, -2.5, -3.75, -5.0], dtype=torch.float64)
        )
        assert back.crystal_properties["converged"].tolist() == [True, False, True, False]
        assert torch.equal(back.num_atoms, batch.num_atoms)
        if fmt == "extxyz":  # exact: atoms and lattice rows as they were, positions to float round-off
            assert torch.equal(back.atomic_numbers, batch.atomic_numbers)
            assert torch.equal(back.lattices, batch.lattices)
            assert torch.allclose(back.cart_coords, batch.cart_coords, atol=1e-13, rtol=0)
        else:  # a CIF re-orients the lattice and orders atoms by species; energies agree to 1e-6 eV
            assert back.formulas() == batch.formulas()
            assert torch.allclose(back.volumes, batch.volumes, rtol=1e-10)
        for s, r in zip(back.to_structures(), batch.to_structures(), strict=True):
            assert abs(_lj_energy(s) - _lj_energy(r)) < 1e-6


def test_atomic_idempotent_and_umask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    batch = _batch(["x", "y"])
    target = shard_path(tmp_path, 3)
    old = os.umask(0o027)
    try:
        write_shard(target, _rows(batch, []), batch)
        write_shard(target, _rows(batch, ["z"]), batch)  # a retried block replaces its shard
    finally:
        os.umask(old)
    assert os.stat(target).st_mode & 0o777 == 0o640
    assert sorted(os.listdir(tmp_path)) == [target.name]  # no temporary file left
    assert merge_shards(tmp_path, tmp_path / "out" / "all.parquet", format="parquet") == 3

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        write_shard(target, _rows(batch, ["w", "v"]), batch)
    assert sorted(os.listdir(tmp_path)) == sorted([target.name, "out"])  # the old shard is intact
    assert pq.read_table(target).num_rows == 3
    with pytest.raises(CrystalError, match="without a result row: y"):
        write_shard(target, _rows(batch, [])[:1], batch)


def test_merge_formats(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    a, b = _batch(["a0", "a1"]), _batch(["b0", "b1", "b2"], seed=2)
    write_shard(shard_path(shards, 1), _rows(b, ["b-bad"]), b, structure_format="extxyz")
    write_shard(shard_path(shards, 0), _rows(a, ["a-bad"]), a)
    assert merge_shards(shards, tmp_path / "all.parquet", format="parquet") == 7
    merged = pq.read_table(tmp_path / "all.parquet")
    assert merged.column("id").to_pylist() == ["a0", "a1", "a-bad", "b0", "b1", "b2", "b-bad"]
    assert pq.ParquetFile(tmp_path / "all.parquet").metadata.num_row_groups == 2  # streamed, shard by shard
    assert merge_shards(shards, tmp_path / "all.csv", format="csv") == 7
    with open(tmp_path / "all.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["id"] for r in table] == merged.column("id").to_pylist()
    assert "cif" not in table[0] and float(table[1]["energy"]) == -2.5 and table[2]["energy"] == ""
    keep = {"a1", "b0", "b2"}
    assert merge_shards(shards, tmp_path / "cifs", format="cif", ids=keep) == 3
    assert merge_shards(shards, tmp_path / "all.extxyz", format="extxyz") == 5
    ref = {i: s for i, s in zip(a.ids + b.ids, a.to_structures() + b.to_structures(), strict=True)}
    cifs = read_structures(tmp_path / "cifs")
    assert sorted(cifs.ids) == sorted(keep) and not cifs.failures
    for i, s in zip(cifs.ids, cifs.structures, strict=True):
        assert abs(_lj_energy(s) - _lj_energy(ref[i])) < 1e-6
    frames = read_structures(tmp_path / "all.extxyz")
    assert len(frames.ids) == 5 and not frames.failures
    for s, i in zip(frames.structures, ["a0", "a1", "b0", "b1", "b2"], strict=True):
        assert abs(_lj_energy(s) - _lj_energy(ref[i])) < 1e-6
    # merged tables are sources again: the parquet with its cif/extxyz columns reads back
    from crystal_pipeline.config import FilesSource
    from crystal_pipeline.sources import plan_blocks, read_block

    source = FilesSource(type="files", paths=["all.parquet"])
    blocks = [
        read_block(s, source, base_dir=tmp_path) for s in plan_blocks(source, base_dir=tmp_path, chunk_size=4, seed=0)
    ]
    assert [i for blk in blocks for i in blk.batch.ids] == ["a0", "a1", "b0", "b1", "b2"]
    assert [f.id for blk in blocks for f in blk.failures] == ["a-bad", "b-bad"]


def test_empty_directory_and_missing_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty").mkdir()
    assert list(read_shards(tmp_path / "empty")) == []
    assert merge_shards(tmp_path / "empty", tmp_path / "e.parquet", format="parquet") == 0
    assert pq.read_table(tmp_path / "e.parquet").column_names[:2] == ["id", "status"]
    with pytest.raises(ConfigError, match="no shard directory"):
        list(read_shards(tmp_path / "absent"))
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ConfigError, match="pip install pyarrow"):
        require_pyarrow(tmp_path / "t.parquet")
