"""A corpus of bad inputs and faults (issue 13): nothing lost, nothing mislabelled.

The corpus is built here, by the tests: good crystals mixed with every kind of bad file. Each
input (file, CIF data block, CSV row) must end up in exactly one row — results or failures —
with a reason a person understands, and no run exits 1 with good structures unreported.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter
from support import crystal_cli

from crystal import ConfigError, WeightsError
from crystal.batch import CrystalBatch
from crystal.io import read_structures

NACL_BLOCK = """data_{name}
_cell_length_a {a}
_cell_length_b 5.64
_cell_length_c 5.64
_cell_angle_alpha 90
_cell_angle_beta {beta}
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
{el}1 {el} 0 0 0
Cl1 Cl 0.5 0.5 0.5
"""


def _block(name: str = "x", a: str = "5.64", beta: str = "90", el: str = "Na") -> str:
    return NACL_BLOCK.format(name=name, a=a, beta=beta, el=el)


def _argon(a: float, seed: int) -> Structure:
    s = Structure(Lattice.cubic(a), ["Ar"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    s.perturb(0.05, min_distance=0.0)
    return s


def make_corpus(folder: Path) -> dict[str, str | None]:
    """Write the corpus; returns ``{expected row id: expected reason fragment or None (good)}``."""
    folder.mkdir()
    expected: dict[str, str | None] = {}
    for k, a in enumerate((5.3, 5.4, 5.5)):
        (folder / f"good{k}.cif").write_text(str(CifWriter(_argon(a, k))))
        expected[f"good{k}"] = None
    (folder / "unknown_element.cif").write_text(_block(el="Xx"))
    expected["unknown_element"] = "unknown element symbol(s) 'Xx'"
    (folder / "multi.cif").write_text(
        _block("A") + "\n" + "data_B\n_cell_length_a 4\n_cell_length_b oops\n" + "\n" + _block("C")
    )
    expected |= {"multi:A": None, "multi:B": "_cell_length_b = 'oops' is not a number", "multi:C": None}
    (folder / "negative_a.cif").write_text(_block(a="-4"))
    expected["negative_a"] = "_cell_length_a = -4 (must be > 0 Å)"
    (folder / "zero_beta.cif").write_text(_block(beta="0"))
    expected["zero_beta"] = "_cell_angle_beta = 0"
    (folder / "nan_a.cif").write_text(_block(a="?"))
    expected["nan_a"] = "_cell_length_a = ?"
    (folder / "properties.csv").write_text("material_id,band_gap\nmp-1,1.2\n")
    expected["properties"] = "not a structure file: a CSV needs a 'cif' column"
    (folder / "empty.cif").write_text("")
    expected["empty"] = "file is empty"
    (folder / "garbage.cif").write_text("this is not a CIF at all\n\x00\x01")
    expected["garbage"] = "CIF"
    (folder / "broken.vasp").write_text("Si\n1.0\n5 0 0\n0 5 0\n")
    expected["broken"] = "not a valid POSCAR: the file ends early or is malformed"
    # a very dilute cell: its atoms have no neighbour within a graph encoder's cutoff
    (folder / "huge_cell.cif").write_text(str(CifWriter(Structure(Lattice.cubic(30.0), ["Ar"], [[0, 0, 0]]))))
    expected["huge_cell"] = "isolated atom"
    # two atoms on top of each other
    (folder / "overlap.cif").write_text(
        str(CifWriter(Structure(Lattice.cubic(5.0), ["Ar", "Ar"], [[0, 0, 0], [0.01, 0, 0]])))
    )
    expected["overlap"] = "atoms closer than"
    return expected


def test_reader_gives_every_input_one_row(tmp_path):
    expected = make_corpus(tmp_path / "in")
    res = read_structures(tmp_path / "in")
    rows = {i: None for i in res.ids} | {f.id: f.reason for f in res.failures}
    assert len(res.ids) + len(res.failures) == len(rows)  # no id twice
    read_ok = {k for k, v in expected.items() if v is None or k in ("huge_cell", "overlap")}
    assert set(res.ids) == read_ok
    for ident, fragment in expected.items():
        assert ident in rows, f"{ident} has no row"
        if ident not in read_ok:
            assert fragment in (rows[ident] or ""), (ident, rows[ident])
    # the multi-block CIF keeps each block on its own structure (issue 13.2)
    multi = dict(zip(res.ids, res.structures, strict=True))
    assert multi["multi:A"].composition.reduced_formula == "NaCl"
    assert multi["multi:C"].composition.reduced_formula == "NaCl"


@pytest.fixture
def lj(fake_distribution):
    fake_distribution(
        "fake-lj-bad",
        {"crystal.potentials": {"lennard-jones": "crystal.testing.potentials:LennardJones"}},
        {"fake_lj_bad/__init__.py": ""},
    )


def test_pipeline_over_the_corpus_reports_every_input_once(tmp_path, lj):
    """read → validate → relax (LJ) → predict (SchNet) → metrics: every input exactly one row."""
    from crystal_pipeline import Pipeline

    expected = make_corpus(tmp_path / "in")
    data = {
        "pipeline": {"name": "bad", "chunk_size": 4, "device": "cpu"},
        "source": {"type": "files", "paths": [str(tmp_path / "in")]},
        "steps": [
            {"id": "relax", "type": "relax", "potential": "lennard-jones", "fmax": 0.5, "max_steps": 20},
            {"id": "predict", "type": "predict", "encoder": "schnet", "random_init": True},  # untrained on purpose
            {"id": "m", "type": "metrics", "names": ["density", "min_distance"]},
        ],
    }
    result = Pipeline.from_dict(data).run(tmp_path / "run")
    out = tmp_path / "run"
    with (out / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(expected) and len({r["id"] for r in rows}) == len(rows)  # one row per input
    ok = [r["id"] for r in rows if r["status"] == "ok"]
    with (out / "failures.csv").open() as fh:
        failed = {r["id"]: r["reason"] for r in csv.DictReader(fh)}
    assert sorted(ok) == sorted(k for k, v in expected.items() if v is None)
    assert set(ok).isdisjoint(failed) and set(ok) | set(failed) == set(expected)
    for ident, fragment in expected.items():
        if fragment is not None:
            assert fragment in failed[ident], (ident, failed[ident])
    assert "isolated atom(s): no neighbour within encoder 'schnet'" in failed["huge_cell"]
    assert result.manifest["counts"]["inputs"] == len(expected)


def test_unknown_element_is_refused_with_its_symbol_also_from_python():
    s = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    s.replace(0, "Xx")  # pymatgen makes a DummySpecies with a random "atomic number"
    from crystal import StructureError

    with pytest.raises(StructureError, match="unknown element symbol"):
        CrystalBatch.from_structures([s], ["x"])


def test_min_distance_check_is_linear_and_exact(tmp_path):
    """A 2,744-atom cell (issue 13.3) is checked with a cell list, not an N² distance matrix."""
    import numpy as np

    rng = np.random.default_rng(1)
    medium = Structure(Lattice.from_parameters(9.1, 10.3, 11.7, 71, 97, 113), ["Si"] * 120, rng.random((120, 3)))
    batch = CrystalBatch.from_structures([medium])
    brute = medium.distance_matrix[np.triu_indices(120, 1)].min()
    assert batch.min_distances().item() == pytest.approx(brute, rel=1e-12)
    assert batch._min_distances_images().item() == pytest.approx(brute, rel=1e-12)
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    big = CrystalBatch.from_structures([nacl * (7, 7, 7)])  # 2,744 atoms
    assert big.num_nodes == 2744
    import tracemalloc

    tracemalloc.start()
    t0 = time.perf_counter()
    d = big.min_distances().item()
    elapsed = time.perf_counter() - t0
    tracemalloc.stop()
    assert d == pytest.approx(2.82, abs=1e-9)
    assert elapsed < 30
    thin = Structure(
        Lattice.from_parameters(1.5, 30, 30, 90, 90, 90), ["H"] * 70, np.c_[np.zeros(70), rng.random((70, 2))]
    )
    tb = CrystalBatch.from_structures([thin])  # a cell thinner than the search radius
    assert tb.min_distances().item() == pytest.approx(tb._min_distances_images().item(), rel=1e-12)


OOM_POTENTIAL = '''
from crystal.testing.potentials import LennardJones


class HungryLJ(LennardJones):
    """Lennard-Jones that runs out of memory on any chunk holding a crystal of more than 8 atoms."""

    name = "hungry-lj"

    def compute(self, batch, *, forces=True, stress=True):
        if (batch.num_atoms > 8).any():
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 13500000000 bytes")
        return super().compute(batch, forces=forces, stress=stress)
'''


def test_out_of_memory_fails_the_crystal_not_the_batch(tmp_path, fake_distribution):
    from crystal_pipeline import Pipeline

    fake_distribution(
        "fake-hungry",
        {"crystal.potentials": {"hungry-lj": "fake_hungry.pot:HungryLJ"}},
        {"fake_hungry/__init__.py": "", "fake_hungry/pot.py": OOM_POTENTIAL},
    )
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(3):
        (folder / f"small{k}.cif").write_text(str(CifWriter(_argon(5.3 + 0.1 * k, k))))
    (folder / "large.cif").write_text(str(CifWriter(_argon(5.4, 9) * (3, 1, 1))))
    data = {
        "pipeline": {"name": "oom", "chunk_size": 8, "device": "cpu"},
        "source": {"type": "files", "paths": [str(folder)]},
        "steps": [{"id": "relax", "type": "relax", "potential": "hungry-lj", "fmax": 0.5, "max_steps": 5}],
    }
    result = Pipeline.from_dict(data).run(tmp_path / "run")
    assert sorted(result.batch.ids) == ["small0", "small1", "small2"]
    [failure] = result.failures
    assert failure.id == "large" and failure.reason.startswith("out of memory in step 'relax' on this crystal alone")


def test_validation_out_of_memory_is_isolated(tmp_path, monkeypatch):
    from crystal_pipeline.runner import _validate_in_chunks

    original = CrystalBatch.validate

    def hungry(self, min_distance=0.5):
        if (self.num_atoms > 8).any():
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory")
        return original(self, min_distance)

    monkeypatch.setattr(CrystalBatch, "validate", hungry)
    batch = CrystalBatch.from_structures([_argon(5.3, 0), _argon(5.4, 1) * (3, 1, 1), _argon(5.5, 2)], ["a", "b", "c"])
    reasons = _validate_in_chunks(batch, 0.5, chunk_size=3)
    assert reasons[0] is None and reasons[2] is None
    assert reasons[1] is not None and "out of memory in the input check on this crystal alone (12 atoms" in reasons[1]


def test_config_error_after_start_leaves_no_run_directory(tmp_path):
    """Exit 2 means nothing ran: a configuration error found while starting removes the run directory."""
    from crystal_pipeline import Pipeline

    data = {
        "pipeline": {"name": "x", "device": "cpu"},
        "source": {"type": "files", "paths": [str(tmp_path / "in" / "*.cif")]},
    }
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.cif").write_text(_block())
    p = Pipeline.from_dict(data)
    (tmp_path / "in" / "a.cif").unlink()  # the input disappears between the check and the run
    with pytest.raises(ConfigError, match="matches no file"):
        p.run(tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_results_are_readable_under_the_umask(tmp_path):
    from crystal_pipeline import Pipeline

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.cif").write_text(_block())
    data = {
        "pipeline": {"name": "u", "device": "cpu"},
        "source": {"type": "files", "paths": [str(tmp_path / "in")]},
        "sinks": [{"type": "cif", "path": "structures"}, {"type": "csv", "path": "summary.csv"}],
    }
    old = os.umask(0o027)
    try:
        Pipeline.from_dict(data).run(tmp_path / "run")
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert files
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o640, f


def test_weights_clash_fails_only_its_users(fake_distribution, tmp_path, capsys):
    from crystal.weights import find_weights, list_weights, weights_clashes

    first_party = next(n for n, (d, e) in sorted(list_weights().items()) if e.file.startswith("package:"))
    owner = list_weights()[first_party][0]
    (tmp_path / "w.pt").write_bytes(b"x")
    fake_distribution(
        "fake-clash",
        {"crystal.manifests": {"fake-clash": "fake_clash:crystal_plugin.toml"}},
        {
            "fake_clash/__init__.py": "",
            "fake_clash/crystal_plugin.toml": f'''[plugin]
description = "clash"

[[weights]]
name = "{first_party}"
file = "{tmp_path / "w.pt"}"
sha256 = "{hashlib.sha256(b"x").hexdigest()}"
licence = "MIT"
training_data = "none"
''',
        },
    )
    both = sorted([owner, "fake-clash"])
    assert weights_clashes() == {first_party: both}
    with pytest.raises(WeightsError, match=f"declared by more than one distribution \\({', '.join(both)}\\)"):
        find_weights(first_party)
    others = [n for n in list_weights() if n != first_party]
    assert others and find_weights(others[0])  # everything else still works
    from crystal_cli.main import main

    assert main(["plugins", "check"]) == 1
    assert f"FAIL weights '{first_party}': declared by {', '.join(both)}" in capsys.readouterr().out


def test_checksum_cache_notices_a_file_changed_in_place(tmp_path):
    """Same size, same mtime, new content (issue 13.11): the file is hashed again."""
    from crystal.manifest import WeightsManifest
    from crystal.weights import resolve_weights

    path = tmp_path / "w.pt"
    path.write_bytes(b"A" * 64)
    entry = WeightsManifest(
        name="w", file=str(path), sha256=hashlib.sha256(b"A" * 64).hexdigest(), licence="MIT", training_data="-"
    )
    resolve_weights(entry)
    st = path.stat()
    time.sleep(0.01)
    path.write_bytes(b"B" * 64)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size
    with pytest.raises(WeightsError, match="corrupted or replaced"):
        resolve_weights(entry)


def test_messages_are_for_people(tmp_path):
    from crystal.weights import read_checkpoint
    from crystal_pipeline.config import parse_pipeline_config

    with pytest.raises(ConfigError) as err:
        parse_pipeline_config({"source": {"type": "dataset", "name": "dcdft"}, "steps": [{"id": "r"}]}, "p.toml")
    assert "no 'type' given; type must be one of: " in str(err.value) and "'relax'" in str(err.value)
    assert "Unable to extract tag" not in str(err.value)
    with pytest.raises(ConfigError, match="did you mean 'fmax'"):
        parse_pipeline_config(
            {
                "source": {"type": "dataset", "name": "dcdft"},
                "steps": [{"id": "r", "type": "relax", "potential": "x", "fmaxx": 1}],
            },
            "p.toml",
        )

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError) as err:
        read_checkpoint(tmp_path / "evil.pt", format="f", version=1, kind="encoder", who="encoder 'x'")
    msg = str(err.value)
    assert "\n" not in msg and "weights_only=False" not in msg
    assert "evil.pt: refused to load: it holds the Python object 'posix.system'" in msg


@pytest.mark.slow
def test_sigterm_is_an_interruption_and_the_hint_resumes(tmp_path):
    """SIGTERM (timeout, schedulers) marks the run interrupted and prints a resume command that works,
    also for the `crystal relax` shortcut (issue 13.7, 13.8)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(6):
        (folder / f"ar{k}.cif").write_text(str(CifWriter(_argon(5.2 + 0.05 * k, k))))
    out = tmp_path / "run"
    exe = str(Path(sys.executable).with_name("crystal"))
    proc = subprocess.Popen(
        [exe, "relax", str(folder), "-p", "chgnet", "--run-dir", str(out), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while not (out / "manifest.json").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 143, err
    assert f"crystal run --resume --run-dir {out}" in err
    assert json.loads((out / "manifest.json").read_text())["status"] == "interrupted"
    r = crystal_cli("run", "--resume", "--run-dir", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["inputs"] == 6
