"""The ray executor against the local one: same ids and values, resume without recompute,
failures isolated per crystal, a worker killed mid-run, the install hint without Ray.

One Ray instance (2 CPUs) serves the module's Ray tests. Local vs Ray (same ids and values, a
crystal that makes a worker raise isolated as one failure row) runs by default (~20 s with
Ray's start on a 2-core machine); resume, a killed worker, a run-level error and a global-only
pipeline are marked slow (10-20 s each), as is the multi-node cluster test.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest
from ase.build import bulk
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.io.cif import CifWriter

from crystal import ConfigError, PipelineError
from crystal.testing.pytest_plugin import FakeDistributions
from crystal_pipeline import run_pipeline

PROBE = '''
import os
import signal
from pathlib import Path

from crystal.testing.potentials import LennardJones, LennardJonesConfig


class ProbeConfig(LennardJonesConfig):
    log: str | None = None
    kill_marker: str | None = None
    fail_all: bool = False


class ProbeLJ(LennardJones):
    """Lennard-Jones that logs the ids it computes (any process), breaks on krypton, and
    SIGKILLs its own process once when ``kill_marker`` does not exist yet."""

    name = "probe-lj"
    Config = ProbeConfig

    def compute(self, batch, *, forces=True, stress=True):
        cfg = self.config
        if cfg.kill_marker and not Path(cfg.kill_marker).exists():
            Path(cfg.kill_marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        if cfg.fail_all:
            raise RuntimeError("this potential is broken")
        if (batch.atomic_numbers == 36).any():
            raise RuntimeError("krypton breaks this potential")
        if cfg.log:
            with open(cfg.log, "a") as fh:
                fh.write(" ".join(batch.ids) + "\\n")
        return super().compute(batch, forces=forces, stress=stress)
'''


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    """The probe plugin installed in a site directory that the driver and the Ray workers see,
    and one local Ray instance with 2 CPUs."""
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as mp:
        fakes = FakeDistributions(tmp_path_factory.mktemp("site"), mp)
        fakes(
            "fake-probe",
            {"crystal.potentials": {"probe-lj": "fake_probe.pot:ProbeLJ"}},
            {
                "fake_probe/__init__.py": "",
                "fake_probe/pot.py": PROBE,
            },
        )
        mp.setenv("PYTHONPATH", os.pathsep.join([str(fakes.site), *sys.path]))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=80 * 2**20)
        try:
            yield ray
        finally:
            ray.shutdown()
            fakes.close()


def _inputs(folder: Path, n: int = 6, krypton: bool = False) -> list[str]:
    folder.mkdir()
    ids = []
    for k in range(n):
        a, kind = [(5.4, "fcc"), (3.9, "bcc"), (5.5, "fcc"), (4.0, "bcc")][k % 4]
        atoms = bulk("Ar", kind, a=a, cubic=True)
        atoms.rattle(0.05, seed=k)
        (folder / f"ar{k}.cif").write_text(str(CifWriter(AseAtomsAdaptor.get_structure(atoms))))
        ids.append(f"ar{k}")
    if krypton:
        kr = bulk("Kr", "fcc", a=5.7, cubic=True)
        (folder / "kr.cif").write_text(str(CifWriter(AseAtomsAdaptor.get_structure(kr))))
        ids.append("kr")
    (folder / "broken.cif").write_text("data_x\n_cell_length_a 3\n")
    return [*ids, "broken"]


def _pipeline(inputs: Path, executor: str = "ray", **probe) -> dict:
    return {
        "pipeline": {"name": "t", "chunk_size": 2, "device": "cpu", "executor": executor, "ray": {"workers": 2}},
        "source": {"type": "files", "paths": [str(inputs)]},
        "steps": [
            {"id": "relax", "type": "relax", "potential": "probe-lj", "config": probe, "fmax": 0.05, "max_steps": 60},
            {"id": "m", "type": "metrics", "names": ["density"]},
            {"id": "best", "type": "rank", "by": "energy_per_atom", "top": 4},
            {"id": "dense", "type": "filter", "where": [{"column": "density", "op": ">", "value": 0.1}]},
        ],
        "sinks": [{"type": "csv", "path": "summary.csv"}, {"type": "extxyz", "path": "best.extxyz"}],
    }


def _rows(path: Path) -> list[dict]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _computed(log: Path) -> set[str]:
    return {i for line in log.read_text().split("\n") for i in line.split()} if log.exists() else set()


def test_ray_matches_local(tmp_path, ray_session):
    ids = _inputs(tmp_path / "in", krypton=True)
    local = run_pipeline(_pipeline(tmp_path / "in", "local"), tmp_path / "local")
    res = run_pipeline(_pipeline(tmp_path / "in"), tmp_path / "ray")
    a, b = _rows(tmp_path / "local" / "results.csv"), _rows(tmp_path / "ray" / "results.csv")
    assert [r["id"] for r in b] == [r["id"] for r in a] and sorted(r["id"] for r in b) == sorted(ids)
    for ra, rb in zip(a, b, strict=True):
        assert ra.keys() == rb.keys()
        for k in ra:
            if k in ("energy", "energy_per_atom", "density", "relax_steps", "converged") and ra[k]:
                assert float(rb[k]) == pytest.approx(float(ra[k]), abs=1e-6), (ra["id"], k)
            else:
                assert rb[k] == ra[k], (ra["id"], k)
    by_id = {r["id"]: r for r in b}
    assert by_id["kr"]["status"] == "failed" and "krypton" in by_id["kr"]["reason"]  # isolated, not the block
    assert by_id["broken"]["status"] == "failed"
    assert _rows(tmp_path / "ray" / "summary.csv") == _rows(tmp_path / "local" / "summary.csv")
    assert (tmp_path / "ray" / "best.extxyz").read_text() == (tmp_path / "local" / "best.extxyz").read_text()
    m = res.manifest
    assert m["status"] == "complete" and m["counts"] == local.manifest["counts"]
    assert m["executor"]["type"] == "ray" and m["executor"]["workers"] == 2 and m["executor"]["nodes"] == 1
    assert m["executor"]["ray_version"] == ray_session.__version__
    assert [p["name"] for p in m["plugins"]] == ["probe-lj"]
    shards = sorted((tmp_path / "ray" / "results").glob("block-*.parquet"))
    assert len(shards) == 4  # 8 files in blocks of 2
    assert sorted((tmp_path / "ray" / ".state").glob("stage00-chunk*.pt"))


@pytest.mark.slow
def test_resume_recomputes_only_unfinished_blocks(tmp_path, ray_session):
    _inputs(tmp_path / "in", n=8)
    log = tmp_path / "calls.log"
    data = _pipeline(tmp_path / "in", log=str(log))
    run_pipeline(data, tmp_path / "run")
    state = tmp_path / "run" / ".state"
    first = {b: json.loads((state / f"stage00-chunk{b:05d}.rows.json").read_text()) for b in range(5)}
    ids_of = {b: {r["id"] for r in rows} for b, rows in first.items()}
    # as if the run stopped: block 1 finished its checkpoint but not its rows, block 3 and 4 never ran
    (state / "stage00-chunk00001.rows.json").unlink()
    for b in (3, 4):
        (state / f"stage00-chunk{b:05d}.rows.json").unlink()
        (state / f"stage00-chunk{b:05d}.pt").unlink()
    log.unlink()
    res = run_pipeline(data, tmp_path / "run", resume=True)
    assert _computed(log) == (ids_of[3] | ids_of[4]) - {"broken"}  # nothing finished is computed again
    assert res.manifest["resumed"] is True and res.manifest["counts"]["inputs"] == 9
    rows = _rows(tmp_path / "run" / "results.csv")
    assert sorted(r["id"] for r in rows) == sorted(set().union(*ids_of.values()))


@pytest.mark.slow
def test_worker_killed_mid_run_every_input_once(tmp_path, ray_session):
    ids = _inputs(tmp_path / "in", n=6)
    marker = tmp_path / "killed"
    res = run_pipeline(_pipeline(tmp_path / "in", kill_marker=str(marker)), tmp_path / "run")
    assert marker.exists()  # a worker process did die with SIGKILL
    rows = _rows(tmp_path / "run" / "results.csv")
    assert sorted(r["id"] for r in rows) == sorted(ids)  # every input exactly once
    assert {r["id"] for r in rows if r["status"] == "failed"} == {"broken"}
    assert res.manifest["counts"]["inputs"] == len(ids)


@pytest.mark.slow
def test_a_step_failing_on_every_crystal_stops_the_run(tmp_path, ray_session):
    _inputs(tmp_path / "in", n=2)
    with pytest.raises(PipelineError, match="every crystal"):
        run_pipeline(_pipeline(tmp_path / "in", fail_all=True), tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "this potential is broken" in manifest["error"]


@pytest.mark.slow
def test_dataset_source_without_map_steps(tmp_path, ray_session):
    data = {
        "pipeline": {"chunk_size": 3, "device": "cpu"},
        "source": {"type": "dataset", "name": "dcdft", "limit": 7},
        "steps": [{"id": "d", "type": "deduplicate"}],
        "sinks": [{"type": "json", "path": "out.json"}],
    }
    local = run_pipeline(data, tmp_path / "local")
    data["pipeline"]["executor"] = "ray"
    res = run_pipeline(data, tmp_path / "ray")
    assert _rows(tmp_path / "ray" / "results.csv") == _rows(tmp_path / "local" / "results.csv")
    assert json.loads((tmp_path / "ray" / "out.json").read_text()) == json.loads(
        (tmp_path / "local" / "out.json").read_text()
    )
    assert res.manifest["counts"] == local.manifest["counts"]
    assert sorted(p.name for p in (tmp_path / "ray" / ".state").glob("source-chunk*.pt")) == [
        "source-chunk00000.pt",
        "source-chunk00001.pt",
        "source-chunk00002.pt",
    ]


def test_without_ray_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    data = {
        "pipeline": {"executor": "ray"},
        "source": {"type": "dataset", "name": "dcdft", "limit": 2},
    }
    with pytest.raises(ConfigError, match=r"pip install 'crystal-pipeline\[ray\]'"):
        run_pipeline(data, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_cli_flags_override_the_toml(tmp_path, monkeypatch, capsys):
    from crystal_cli.main import main

    monkeypatch.setitem(sys.modules, "ray", None)
    toml = tmp_path / "p.toml"
    toml.write_text('[source]\ntype = "dataset"\nname = "dcdft"\nlimit = 2\n')
    assert main(["run", str(toml), "-o", str(tmp_path / "r"), "--executor", "ray", "--workers", "2"]) == 2
    assert "pip install 'crystal-pipeline[ray]'" in capsys.readouterr().err
    assert main(["run", str(toml), "-o", str(tmp_path / "r"), "--workers", "2"]) == 2
    assert "--workers: only with the ray executor" in capsys.readouterr().err
    toml.write_text(toml.read_text() + '[pipeline]\nexecutor = "ray"\n')
    assert main(["validate", str(toml)]) == 2  # validate checks the executor too
    assert "field 'executor'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
