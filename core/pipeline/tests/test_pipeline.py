from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from ase.build import bulk
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.io.cif import CifWriter

from crystal import ConfigError
from crystal_pipeline import Pipeline, load_pipeline, run_pipeline

POTENTIALS = '''
from crystal.errors import StructureError
from crystal.testing.potentials import LennardJones

CALLS = []


class CountingLJ(LennardJones):
    """Lennard-Jones that records the ids it was called on; refuses krypton."""

    name = "counting-lj"

    def compute(self, batch, *, forces=True, stress=True):
        if (batch.atomic_numbers == 36).any():
            raise StructureError("krypton is not allowed here")
        CALLS.append(tuple(batch.ids))
        return super().compute(batch, forces=forces, stress=stress)
'''


@pytest.fixture
def lj_plugin(fake_distribution):
    fake_distribution(
        "fake-lj",
        {
            "crystal.potentials": {
                "lennard-jones": "crystal.testing.potentials:LennardJones",
                "counting-lj": "fake_lj.pot:CountingLJ",
            },
        },
        {"fake_lj/__init__.py": "", "fake_lj/pot.py": POTENTIALS},
    )


def _argon_inputs(folder: Path) -> list[str]:
    folder.mkdir()
    ids = []
    for k, (a, kind) in enumerate([(5.4, "fcc"), (5.5, "fcc"), (3.9, "bcc"), (5.6, "fcc")]):
        atoms = bulk("Ar", kind, a=a, cubic=True)
        atoms.rattle(0.05, seed=k)
        s = AseAtomsAdaptor.get_structure(atoms)
        (folder / f"ar{k}.cif").write_text(str(CifWriter(s)))
        ids.append(f"ar{k}")
    return ids


def _pipeline(inputs: str, potential: str = "lennard-jones", chunk: int = 2) -> dict:
    return {
        "pipeline": {"name": "t", "chunk_size": chunk, "device": "cpu"},
        "source": {"type": "files", "paths": [inputs]},
        "steps": [
            {"id": "relax", "type": "relax", "potential": potential, "fmax": 0.01, "max_steps": 300},
            {"id": "m", "type": "metrics", "names": ["volume_per_atom", "density"]},
            {"id": "rank", "type": "rank", "by": "energy_per_atom"},
            {"id": "dedupe", "type": "deduplicate"},
        ],
        "sinks": [{"type": "cif", "path": "structures"}, {"type": "csv", "path": "summary.csv"}],
    }


def _rows(path: Path) -> list[dict]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_relax_rank_dedupe_and_accounting(tmp_path, lj_plugin):
    ids = _argon_inputs(tmp_path / "in")
    (tmp_path / "in" / "broken.cif").write_text("data_x\n_cell_length_a 3\n")
    (tmp_path / "in" / "empty.cif").write_text("")
    close = Structure(Lattice.cubic(5.0), ["Ar", "Ar"], [[0, 0, 0], [0.02, 0, 0]])
    (tmp_path / "in" / "overlap.cif").write_text(str(CifWriter(close)))
    res = run_pipeline(_pipeline(str(tmp_path / "in")), tmp_path / "run")
    rows = {r["id"]: r for r in _rows(tmp_path / "run" / "results.csv")}
    assert set(rows) == {*ids, "broken", "empty", "overlap"}  # every input accounted for
    assert rows["broken"]["status"] == "failed" and "CIF" in rows["broken"]["reason"]
    assert rows["empty"]["reason"] == "file is empty"
    assert rows["overlap"]["status"] == "failed" and "closer than" in rows["overlap"]["reason"]
    # the three fcc inputs relax to the same crystal: two are duplicates of the best one
    statuses = sorted(rows[i]["status"] for i in ids)
    assert statuses == ["duplicate", "duplicate", "ok", "ok"]
    ok = [i for i in ids if rows[i]["status"] == "ok"]
    assert len(res.batch) == 2 and sorted(res.batch.ids) == sorted(ok)
    e = res.batch.crystal_properties["energy_per_atom"].tolist()
    assert e == sorted(e)
    summary = _rows(tmp_path / "run" / "summary.csv")
    assert [r["id"] for r in summary] == res.batch.ids and "density" in summary[0]
    assert sorted(p.stem for p in (tmp_path / "run" / "structures").iterdir()) == sorted(ok)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["counts"] == {"inputs": 7, "ok": 2, "duplicate": 2, "failed": 3}
    assert manifest["plugins"][0]["name"] == "lennard-jones"
    assert manifest["plugins"][0]["distribution"] == "fake-lj"
    assert manifest["packages"]["torch"] and manifest["device"] == "cpu"
    assert set(manifest["timings_s"]) >= {"source", "relax+m", "rank", "dedupe", "total"}


def test_bad_structure_in_a_chunk_is_isolated(tmp_path, lj_plugin):
    ids = _argon_inputs(tmp_path / "in")
    kr = bulk("Kr", "fcc", a=5.7, cubic=True)
    (tmp_path / "in" / "kr.cif").write_text(str(CifWriter(AseAtomsAdaptor.get_structure(kr))))
    data = _pipeline(str(tmp_path / "in"), potential="counting-lj", chunk=8)
    data["steps"] = data["steps"][:1]
    res = run_pipeline(data, tmp_path / "run")
    assert sorted(res.batch.ids) == sorted(ids)
    assert [(f.id, f.step) for f in res.failures] == [("kr", "relax")]
    assert "krypton" in res.failures[0].reason


def test_resume_redoes_nothing_finished(tmp_path, lj_plugin):
    _argon_inputs(tmp_path / "in")
    data = _pipeline(str(tmp_path / "in"), potential="counting-lj", chunk=2)
    from fake_lj import pot

    class Stop(Exception):
        pass

    def interrupt(event):
        if event.kind == "progress" and event.step == "m" and event.message.startswith("chunk 1/"):
            raise Stop

    with pytest.raises(Stop):
        run_pipeline(data, tmp_path / "run", listeners=[interrupt])
    first = {i for call in pot.CALLS for i in call}
    interrupted = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert first and interrupted["status"] == "failed" and "Stop" in interrupted["error"]
    with pytest.raises(ConfigError, match="not empty"):
        run_pipeline(data, tmp_path / "run")
    changed = json.loads(json.dumps(data))
    changed["steps"][0]["fmax"] = 0.02
    with pytest.raises(ConfigError, match=r"stage stage00 \(steps relax\+m\).*step 'relax' \(fmax: 0.01 -> 0.02\)"):
        run_pipeline(changed, tmp_path / "run", resume=True)
    pot.CALLS.clear()
    res = run_pipeline(data, tmp_path / "run", resume=True)
    second = {i for call in pot.CALLS for i in call}
    assert first.isdisjoint(second)  # the finished chunk was not relaxed again
    assert len(first | second) == 4
    assert res.manifest["status"] == "complete" and res.manifest["resumed"] is True
    fresh = run_pipeline(data, tmp_path / "fresh")
    assert fresh.batch.ids == res.batch.ids


def test_filter_and_dataset_source(tmp_path):
    data = {
        "source": {"type": "dataset", "name": "dcdft", "limit": 12},
        "steps": [
            {"id": "m", "type": "metrics", "names": ["density", "min_distance"]},
            {"id": "dense", "type": "filter", "where": [{"column": "density", "op": ">=", "value": 1.0}]},
            {"id": "top", "type": "rank", "by": "density", "descending": True, "top": 3},
        ],
    }
    res = run_pipeline(data, tmp_path / "run")
    d = res.batch.crystal_properties["density"].tolist()
    assert len(d) == 3 and d == sorted(d, reverse=True) and min(d) >= 1.0
    statuses = [r["status"] for r in res.rows]
    assert statuses.count("ok") == 3 and statuses.count("filtered") == 9
    assert any("not in the top 3" in r["reason"] for r in res.rows)


def test_unknown_column_is_a_clear_error(tmp_path):
    data = {
        "source": {"type": "dataset", "name": "dcdft", "limit": 2},
        "steps": [{"id": "r", "type": "rank", "by": "energy"}],
    }
    with pytest.raises(ConfigError, match="step 'r': field 'by': unknown column 'energy'"):  # before anything runs
        run_pipeline(data, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ validation
def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "p.toml"
    p.write_text(text)
    return p


def test_malformed_toml_names_the_file(tmp_path):
    p = _write(tmp_path, "[source\ntype = 'files'\n")
    with pytest.raises(ConfigError, match=f"{p}: malformed TOML"):
        load_pipeline(p)


def test_unknown_field_names_step_and_field(tmp_path):
    p = _write(
        tmp_path,
        """
[source]
type = "dataset"
name = "dcdft"

[[steps]]
id = "relax"
type = "relax"
potential = "lennard-jones"
fmaxx = 0.1
""",
    )
    with pytest.raises(ConfigError) as err:
        load_pipeline(p)
    assert f"{p}: step 'relax' (steps[0]): field 'fmaxx': unknown field" in str(err.value)


def test_bad_value_and_unknown_step_type_list_allowed_values(tmp_path):
    p = _write(
        tmp_path,
        """
[source]
type = "dataset"
name = "dcdft"

[[steps]]
id = "r"
type = "rank"
by = "x"
top = 0

[[steps]]
id = "q"
type = "relx"

[[sinks]]
type = "pdf"
path = "x"
""",
    )
    with pytest.raises(ConfigError) as err:
        load_pipeline(p)
    msg = str(err.value)
    assert "step 'r' (steps[0]): field 'top': Input should be greater than or equal to 1" in msg
    assert "step 'q' (steps[1])" in msg and "'relax'" in msg and "'deduplicate'" in msg
    assert "sinks[0]" in msg and "'cif'" in msg


def test_unknown_plugin_and_metric_fail_before_running(tmp_path, lj_plugin):
    data = _pipeline(str(tmp_path), potential="lenard-jones")
    data["steps"][1]["names"] = ["densty"]
    with pytest.raises(ConfigError) as err:
        Pipeline.from_dict(data).run(tmp_path / "run")
    msg = str(err.value)
    assert "step 'relax'" in msg and "did you mean 'lennard-jones'" in msg
    assert "unknown metric 'densty'" in msg and "density" in msg
    assert not (tmp_path / "run").exists()  # nothing ran


def test_component_config_is_validated_before_running(tmp_path, lj_plugin):
    data = _pipeline(str(tmp_path))
    data["steps"][0]["config"] = {"epsilon": -1}
    with pytest.raises(ConfigError, match=r"step 'relax'.*epsilon"):
        Pipeline.from_dict(data).check()


def test_set_overrides(tmp_path, lj_plugin):
    data = _pipeline(str(tmp_path))
    p = Pipeline.from_dict(
        data, ["relax.fmax=0.05", "pipeline.seed=7", "relax.relax_cell=false", "sinks.1.path='t.csv'"]
    )
    step = p.config.steps[0]
    assert step.fmax == 0.05 and step.relax_cell is False and p.config.pipeline.seed == 7
    assert p.config.sinks[1].path == "t.csv"
    with pytest.raises(ConfigError, match="no step with id 'relx'"):
        Pipeline.from_dict(data, ["relx.fmax=1"])
    with pytest.raises(ConfigError, match="field 'fmax'"):
        Pipeline.from_dict(data, ["relax.fmax=-1"])


CHARACTERIZE = '''
from typing import ClassVar

import torch

from crystal import Characterizer, ComponentConfig, Representation


class Histogram(Representation):
    """Signal: counts of Z = 1..10 per crystal (B, 10)."""

    name = "z-histogram"
    version = "1"
    produces = "signal"

    def represent(self, batch):
        onehot = torch.nn.functional.one_hot((batch.atomic_numbers - 1).clamp(0, 9), 10).to(torch.float64)
        out = torch.zeros(len(batch), 10, dtype=torch.float64).index_add_(0, batch.batch, onehot)
        return {"signal": out}


class Light(Characterizer):
    """Probability that a crystal contains an element lighter than Z = 4."""

    name = "light-elements"
    version = "1"
    consumes = "z-histogram"

    def characterize(self, signals):
        light = signals[:, :3].sum(dim=1) > 0
        p = torch.where(light, 0.9, 0.1).to(torch.float64)
        return {"light": torch.stack([1 - p, p], dim=1)}

    def labels(self, head):
        return ["heavy", "light"]
'''


def test_characterize_step(tmp_path, fake_distribution):
    fake_distribution(
        "fake-char",
        {
            "crystal.representations": {"z-histogram": "fake_char.mod:Histogram"},
            "crystal.characterizers": {"light-elements": "fake_char.mod:Light"},
        },
        {"fake_char/__init__.py": "", "fake_char/mod.py": CHARACTERIZE},
    )
    data = {
        "source": {"type": "dataset", "name": "dcdft", "limit": 6},  # H, He, Li, Be, B, C
        "steps": [{"id": "kind", "type": "characterize", "characterizer": "light-elements"}],
        "sinks": [{"type": "csv", "path": "summary.csv"}],
    }
    res = run_pipeline(data, tmp_path / "run")
    assert res.batch.crystal_properties["light_index"].tolist() == [1, 1, 1, 0, 0, 0]
    assert res.batch.crystal_properties["light_prob"].tolist() == pytest.approx([0.9] * 6)
    rows = _rows(tmp_path / "run" / "summary.csv")
    assert [r["light"] for r in rows] == ["light"] * 3 + ["heavy"] * 3
    assert [p["name"] for p in res.manifest["plugins"]] == ["z-histogram", "light-elements"]
