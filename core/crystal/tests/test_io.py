from __future__ import annotations

import json

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

from crystal import ConfigError, CrystalBatch
from crystal.io import atomic_write, read_structures, write_structures


def _nacl() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.mark.parametrize("fmt", ["cif", "poscar", "extxyz", "json"])
def test_write_read_round_trip(tmp_path, pmg_structures, fmt):
    structures = pmg_structures[:4]
    ids = ["Si", "LiFePO4", "SrTiO3", "CsCl"]
    target = tmp_path / ("out" if fmt in ("cif", "poscar") else f"out.{fmt}")
    write_structures(structures, target, fmt, ids=ids)
    res = read_structures(target)
    assert not res.failures
    assert len(res.structures) == 4
    by_comp = {s.composition.reduced_formula: s for s in res.structures}
    for s in structures:
        back = by_comp[s.composition.reduced_formula]
        assert back.matches(s)
        assert back.lattice.volume == pytest.approx(s.lattice.volume, rel=1e-5)
    if fmt in ("json", "extxyz"):
        assert res.ids == ids if fmt == "json" else len(res.ids) == 4


def test_csv_with_cif_column_reports_bad_rows(tmp_path):
    good = str(CifWriter(_nacl()))
    path = tmp_path / "data.csv"
    import csv

    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["material_id", "cif", "heat_ref"])
        w.writerow(["mp-1", good, "-1.0"])
        w.writerow(["mp-2", "data_broken\n_cell_length_a oops\n", "0.5"])
        w.writerow(["mp-3", "", "0.1"])
    res = read_structures(path)
    assert res.ids == ["mp-1"]
    reasons = {f.id: f.reason for f in res.failures}
    assert set(reasons) == {"mp-2", "mp-3"}
    assert "row 3" in reasons["mp-2"] and "cif" in reasons["mp-2"]
    assert "empty" in reasons["mp-3"]
    assert all(f.source == str(path) for f in res.failures)


def test_csv_without_cif_column_is_one_failure_row(tmp_path, pmg_structures):
    """A table of properties next to the CIFs is reported, never aborts the read (issue 13.5)."""
    (tmp_path / "props.csv").write_text("id,formula\n1,NaCl\n")
    pmg_structures[0].to(filename=str(tmp_path / "good.cif"))
    res = read_structures(tmp_path)
    assert res.ids == ["good"]
    [failure] = res.failures
    assert failure.id == "props" and "needs a 'cif' column (columns: id, formula)" in failure.reason
    with pytest.raises(ConfigError, match="id column 'nope' not found"):
        read_structures(tmp_path / "props.csv", id_column="nope")


def test_bad_files_are_failures_not_crashes(tmp_path):
    (tmp_path / "empty.cif").write_text("")
    (tmp_path / "garbage.cif").write_text("this is not a cif at all\n")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "POSCAR").write_text("Na\n1.0\n1 0 0\n0 1 0\n")
    (tmp_path / "ok.cif").write_text(str(CifWriter(_nacl())))
    res = read_structures(tmp_path)
    assert res.ids == ["ok"]
    reasons = {f.id: f.reason for f in res.failures}
    assert reasons["empty"] == "file is empty"
    assert "CIF" in reasons["garbage"]
    assert "JSON" in reasons["bad"]
    assert "POSCAR" in reasons["POSCAR"]


def test_nan_and_disordered_inputs_are_reported(tmp_path):
    bad = {"@module": "pymatgen.core.structure", "@class": "Structure", **_nacl().as_dict()}
    bad["sites"][0]["abc"] = [float("nan"), 0, 0]
    dis = Structure(Lattice.cubic(4), [{"Fe": 0.5, "Co": 0.5}], [[0, 0, 0]])
    (tmp_path / "s.json").write_text(json.dumps([bad, dis.as_dict(), _nacl().as_dict()]).replace("NaN", "NaN"))
    res = read_structures(tmp_path / "s.json")
    assert res.ids == ["s:2"]
    reasons = [f.reason for f in res.failures]
    assert any("NaN" in r for r in reasons) and any("disordered" in r for r in reasons)


def test_missing_path_and_unknown_extension(tmp_path):
    with pytest.raises(ConfigError, match="matches no file"):
        read_structures(tmp_path / "nope.cif")
    (tmp_path / "x.dat").write_text("1 2 3")
    with pytest.raises(ConfigError, match="cannot tell the structure format"):
        read_structures(tmp_path / "x.dat")


def test_multi_block_cif_and_extxyz_frames(tmp_path):
    text = str(CifWriter(_nacl())) + "\n" + str(CifWriter(Structure(Lattice.cubic(3), ["Cu"], [[0, 0, 0]])))
    (tmp_path / "two.cif").write_text(text)
    res = read_structures(tmp_path / "two.cif")
    assert len(res.ids) == 2 and len(set(res.ids)) == 2


def test_atomic_write_leaves_nothing_half_written(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")

    def write_then_fail() -> None:
        with atomic_write(target) as fh:
            fh.write("partial")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_then_fail()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_batch_to_sinks(tmp_path, pmg_structures):
    batch = CrystalBatch.from_structures(pmg_structures[:2], ids=["a/b", "c"])
    files = write_structures(batch, tmp_path / "cifs", "cif", symprec=0.1)
    assert sorted(p.name for p in files) == ["a_b.cif", "c.cif"]
    back = read_structures(tmp_path / "cifs")
    assert all(np.isfinite(s.frac_coords).all() for s in back.structures)


# ------------------------------------------------------------------ real published data
def test_reads_perov5_and_carbon24_csv(shared_data):
    perov = read_structures(shared_data / "perov_5" / "test.csv", limit=200)
    assert not perov.failures
    assert len(perov.ids) == 200 and len(set(perov.ids)) == 200
    assert all(len(s) == 5 for s in perov.structures)
    carbon = read_structures(shared_data / "carbon_24" / "test.csv", limit=100)
    assert not carbon.failures
    assert all({el.symbol for el in s.composition} == {"C"} and 6 <= len(s) <= 24 for s in carbon.structures)
    batch = carbon.to_batch()
    assert batch.num_nodes == sum(len(s) for s in carbon.structures)
    assert all(r is None for r in batch.validate(0.5))


def test_reads_jarvis_poscars_and_cgcnn_cifs(shared_data):
    jarvis = read_structures(shared_data / "jarvis_sample")  # LICENSE and id_prop.csv are skipped
    # the folder also holds ALIGNN's config_example.json: reported, not silently dropped
    assert [(f.id, f.reason) for f in jarvis.failures] == [
        ("config_example", "not a pymatgen Structure dict: KeyError: 'lattice'")
    ]
    assert len(jarvis.ids) == 70 and all(i.startswith("POSCAR-JVASP-") for i in jarvis.ids)
    cgcnn = read_structures(str(shared_data / "cgcnn" / "sample-regression" / "*.cif"))
    assert not cgcnn.failures
    assert sorted(cgcnn.ids) == sorted(p.stem for p in (shared_data / "cgcnn" / "sample-regression").glob("*.cif"))


def test_public_parsing_helpers(tmp_path, pmg_structures):
    from crystal.io import check_structure, json_default, parse_cif, read_file, short_error

    si = pmg_structures[0]
    [(ident, structure, error)] = list(parse_cif(str(CifWriter(si)), "si"))
    assert (ident, error) == ("si", None) and structure.composition == si.composition
    [(ident, structure, error)] = list(parse_cif("not a cif", "junk"))
    assert ident == "junk" and structure is None and error.startswith("not a valid CIF")
    assert check_structure(si) is None
    assert "no atoms" in check_structure(Structure(Lattice.cubic(3.0), [], []))
    assert short_error(ValueError("first line\nsecond")) == "ValueError: first line"
    assert json.dumps({"a": np.arange(2), "b": np.float32(0.5)}, default=json_default) == '{"a": [0, 1], "b": 0.5}'
    (tmp_path / "si.cif").write_text(str(CifWriter(si)))
    res = read_file(tmp_path / "si.cif")
    assert res.ids == ["si"] and not res.failures


def test_limit_stops_parsing_a_long_csv(tmp_path, pmg_structures):
    """read_structures(limit=k) parses only the rows it needs: rows after the first k
    readable ones are never parsed (so their problems are not reported, and a CSV of
    thousands of rows is not parsed whole for its first few)."""
    import csv

    from pymatgen.io.cif import CifWriter

    rows = [{"material_id": f"ok{k}", "cif": str(CifWriter(s))} for k, s in enumerate(pmg_structures[:2])]
    rows += [{"material_id": f"bad{k}", "cif": "not a cif"} for k in range(50)]
    with (tmp_path / "many.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["material_id", "cif"])
        writer.writeheader()
        writer.writerows(rows)
    res = read_structures(tmp_path / "many.csv", limit=2)
    assert res.ids == ["ok0", "ok1"] and not res.failures
    full = read_structures(tmp_path / "many.csv")
    assert full.ids == ["ok0", "ok1"] and len(full.failures) == 50
    assert read_structures(tmp_path / "many.csv", limit=1).ids == ["ok0"]
