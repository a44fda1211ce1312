"""``num_samples`` means valid crystals delivered; every rejected sample is a failure row with its
reason; a shortfall is reported; ids never repeat across calls and runs; ``validate`` checks what
the generator accepts (issue 15).

A fake generator (a real installed distribution, through ``fake_distribution``) rejects the
samples whose per-sample draw falls under ``reject`` and returns the others: one-atom Cu cells
whose lattice constant comes from ``(seed, slot)``, so what a seed means can be checked.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from crystal.components import GenerationConditions
from crystal.errors import ConfigError
from crystal.generation import generate_valid, round_seed
from crystal_pipeline import Pipeline

GENERATOR = """
from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from crystal.batch import CrystalBatch
from crystal.components import ComponentConfig, ConditionError, GenerationResult, Generator, RejectedSample


class FlakyConfig(ComponentConfig):
    reject: float = Field(0.5, ge=0.0, le=1.0, description="fraction of samples rejected (dimensionless)")
    plain: bool = Field(False, description="implement generate only (a third-party generator of before)")


class Flaky(Generator):
    name = "flaky"
    version = "1.0"
    Config = FlakyConfig

    @classmethod
    def check_conditions(cls, conditions, config=None):
        if conditions.chemical_system is not None:
            raise ConditionError("generator 'flaky': no chemical_system; it supports composition", "chemical_system")

    def generate_detailed(self, num_samples, conditions=None, *, seed=None):
        seed = 0 if seed is None else int(seed)
        keep, rejected, cells = [], [], []
        for k in range(num_samples):
            rng = np.random.default_rng([seed, k])
            a, u = rng.uniform(2.5, 4.0), rng.uniform()
            if u < self.config.reject:
                rejected.append(RejectedSample(k, f"flaky: draw {u:.3f} below {self.config.reject}"))
            else:
                keep.append(k)
                cells.append(a)
        b = len(keep)
        batch = CrystalBatch(
            atomic_numbers=torch.full((b,), 29, dtype=torch.long),
            frac_coords=torch.zeros((b, 3), dtype=torch.float64),
            lattices=torch.stack([torch.eye(3, dtype=torch.float64) * a for a in cells]) if b else torch.zeros((0, 3, 3), dtype=torch.float64),
            num_atoms=torch.ones(b, dtype=torch.long),
            ids=[f"flaky-{seed}-{k}" for k in keep],
            info=[{"seed": seed, "sample": k} for k in keep],
        )
        return GenerationResult(batch, rejected)

    def generate(self, num_samples, conditions=None, *, seed=None):
        res = self.generate_detailed(num_samples, conditions, seed=seed)
        return res.batch
"""

PLAIN = '''
from crystal.components import Generator
from flaky_gen.gen import Flaky


class Plain(Generator):
    """Only generate(): the missing samples get a generic reason."""

    name = "plain"
    version = "1.0"
    Config = Flaky.Config

    def __init__(self, config=None, *, device="auto", **kw):
        super().__init__(config, device=device, **kw)
        self._inner = Flaky(self.config, device="cpu")

    def generate(self, num_samples, conditions=None, *, seed=None):
        return self._inner.generate(num_samples, conditions, seed=seed)
'''


@pytest.fixture
def flaky(fake_distribution):
    fake_distribution(
        "flaky-gen",
        {"crystal.generators": {"flaky": "flaky_gen.gen:Flaky", "plain": "flaky_gen.plain:Plain"}},
        {"flaky_gen/__init__.py": "", "flaky_gen/gen.py": GENERATOR, "flaky_gen/plain.py": PLAIN},
    )
    from crystal.plugins import load_class

    return load_class("generator", "flaky")


def _lattice_constant(seed: int, slot: int) -> float:
    import numpy as np

    return float(np.random.default_rng([seed, slot]).uniform(2.5, 4.0))


# ------------------------------------------------------------------------------ the core helper
def test_generate_valid_delivers_num_samples_and_a_row_per_rejected_sample(flaky) -> None:
    gen = flaky({"reject": 0.5}, device="cpu")
    plain = gen.generate(8, seed=3)
    assert len(plain) < 8  # one call alone falls short: the bug of the issue
    out = generate_valid(gen, 8, seed=3)
    assert len(out.batch) == 8 and out.missing == 0 and out.shortfall is None
    assert 0 < len(out.rejected) <= out.drawn - 8 and out.rounds >= 2  # the over-draw surplus is dropped
    assert all(r.reason.startswith("flaky: draw") for r in out.rejected)
    ids = list(out.batch.ids) + [r.id for r in out.rejected]
    assert len(set(ids)) == len(ids)
    # round 0 is exactly generate(8, seed=3): same crystals first, in order
    n0 = len(plain)
    assert torch.equal(out.batch.lattices[:n0], plain.lattices)
    # every crystal is the one its round seed and slot say (structures stay reproducible)
    assert {i["round_seed"] for i in out.batch.info} == {round_seed(3, r) for r in range(out.rounds)}
    for k, info in enumerate(out.batch.info):
        expect = _lattice_constant(info["round_seed"], info["sample"])
        assert float(out.batch.lattices[k, 0, 0]) == pytest.approx(expect)
    again = generate_valid(gen, 8, seed=3)
    assert torch.equal(again.batch.lattices, out.batch.lattices)  # same seed, same crystals
    assert not set(again.batch.ids) & set(out.batch.ids)  # ... but never the same ids


def test_budget_exhausted_reports_the_shortfall(flaky) -> None:
    gen = flaky({"reject": 0.9}, device="cpu")
    out = generate_valid(gen, 6, seed=0, max_attempts=10)
    assert out.drawn == 10 and out.missing > 0
    assert out.shortfall is not None
    assert f"delivered {len(out.batch)} of 6" in out.shortfall and "attempt budget 10" in out.shortfall
    assert "flaky: draw … below …" in out.shortfall
    assert len(out.batch) + len(out.rejected) == 10
    with pytest.raises(ConfigError, match="max_attempts"):
        generate_valid(gen, 6, seed=0, max_attempts=5)


def test_generator_without_reasons_still_gets_rows(flaky) -> None:
    from crystal.plugins import load_class

    gen = load_class("generator", "plain")({"reject": 0.5}, device="cpu")
    res = gen.generate_detailed(8, seed=3)  # the base class's default: slots from info["sample"]
    assert len(res.batch) + len(res.rejected) == 8
    assert res.slots(8) == [i["sample"] for i in res.batch.info]
    assert all("gave no reason" in r.reason for r in res.rejected)
    out = generate_valid(gen, 8, seed=3)
    assert len(out.batch) == 8


def test_check_conditions_runs_before_sampling(flaky) -> None:
    gen = flaky({}, device="cpu")
    with pytest.raises(ConfigError, match="no chemical_system"):
        generate_valid(gen, 2, GenerationConditions(chemical_system=("Cu",)), seed=0)


# ------------------------------------------------------------------------------ the pipeline
def _pipeline(tmp_path: Path, pipeline: dict | None = None, **source: object) -> Pipeline:
    data = {
        "pipeline": {"name": "gen", "device": "cpu", "seed": 0, "chunk_size": 4, **(pipeline or {})},
        "source": {"type": "generate", "generator": "flaky", "num_samples": 8, "composition": "Cu", **source},
        "steps": [],
    }
    return Pipeline.from_dict(data, base_dir=tmp_path)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [r for r in csv.DictReader(fh) if not r["id"].startswith("#")]


def test_pipeline_delivers_num_samples_and_rejected_rows_are_failures(tmp_path: Path, flaky) -> None:
    events = []
    res = _pipeline(tmp_path, config={"reject": 0.5}).run(tmp_path / "run", listeners=[events.append])
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    failures = _rows(tmp_path / "run" / "failures.csv")
    assert len(res.batch) == 8
    assert failures and {f["step"] for f in failures} == {"generate"}
    assert all(f["reason"].startswith("flaky: draw") and f["source"] == "generator:flaky" for f in failures)
    counts = manifest["counts"]
    assert counts["ok"] == 8 and counts["failed"] == len(failures) and counts["inputs"] == 8 + len(failures)
    gen = manifest["generation"]
    assert gen["requested"] == gen["delivered"] == 8 and gen["rejected"] == len(failures) and gen["shortfall"] is None
    rid = manifest["run_id"]
    assert all(i.startswith(f"flaky-{rid}-") for i in list(res.batch.ids) + [f["id"] for f in failures])
    assert not [e for e in events if e.kind == "failure" and "shortfall" in e.data]
    # a second run: same crystals (same seed), other ids
    res2 = _pipeline(tmp_path, config={"reject": 0.5}).run(tmp_path / "run2")
    assert torch.equal(res2.batch.lattices, res.batch.lattices)
    assert not set(res2.batch.ids) & set(res.batch.ids)


def test_pipeline_shortfall_is_reported(tmp_path: Path, flaky) -> None:
    events = []
    res = _pipeline(tmp_path, config={"reject": 0.9}, max_attempts=1.5).run(tmp_path / "run", listeners=[events.append])
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    gen = manifest["generation"]
    assert gen["delivered"] == len(res.batch) < 8 and gen["max_attempts"] == 1.5
    assert gen["shortfall"] and f"delivered {len(res.batch)} of num_samples=8" in gen["shortfall"]
    assert "max_attempts" in gen["shortfall"]
    warned = [e for e in events if e.kind == "failure" and e.step == "source" and "shortfall" in e.data]
    assert len(warned) == 1 and warned[0].message == gen["shortfall"]
    # blocks of 4 with a budget of ceil(4 x 1.5) = 6 samples each: 12 inputs in all
    assert manifest["counts"]["inputs"] == 12 == len(res.batch) + manifest["counts"]["failed"]


def test_resumed_run_keeps_generated_ids(tmp_path: Path, flaky) -> None:
    p = _pipeline(tmp_path, config={"reject": 0.5})
    first = p.run(tmp_path / "run")
    again = p.run(tmp_path / "run", resume=True)
    assert again.batch.ids == first.batch.ids


def test_validate_checks_what_the_generator_accepts(tmp_path: Path, flaky) -> None:
    with pytest.raises(ConfigError, match=r"source: field 'chemical_system': generator 'flaky': no chemical_system"):
        _pipeline(tmp_path, composition=None, chemical_system=["Cu"]).check()


def test_validate_refuses_diffcsp_with_a_chemical_system(tmp_path: Path) -> None:
    """The issue's example: ``--set source.generator=diffcsp`` on a source with a chemical system."""
    pytest.importorskip("crystal_diffcsp")
    toml = tmp_path / "p.toml"
    toml.write_text(
        '[pipeline]\nname = "g"\ndevice = "cpu"\n\n'
        '[source]\ntype = "generate"\ngenerator = "pyxtal"\nnum_samples = 2\nchemical_system = ["Li", "Mn", "O"]\n'
    )
    Pipeline.from_toml(toml).check()  # pyxtal accepts it
    with pytest.raises(ConfigError) as info:  # what `crystal validate p.toml --set source.generator=diffcsp` runs
        Pipeline.from_toml(toml, ["source.generator=diffcsp"]).check()
    assert "source: field 'chemical_system': generator 'diffcsp'" in str(info.value)
    assert "supports composition and formula_units" in str(info.value)


@pytest.mark.slow
def test_crystal_validate_exits_2_for_diffcsp_with_a_chemical_system(tmp_path: Path) -> None:
    pytest.importorskip("crystal_diffcsp")
    from support import crystal_cli

    toml = tmp_path / "p.toml"
    toml.write_text(
        '[pipeline]\nname = "g"\ndevice = "cpu"\n\n'
        '[source]\ntype = "generate"\ngenerator = "pyxtal"\nnum_samples = 2\nchemical_system = ["Li", "Mn", "O"]\n'
    )
    out = crystal_cli("validate", str(toml), "--set", "source.generator=diffcsp")
    assert out.returncode == 2, out.stdout + out.stderr
    text = " ".join((out.stdout + out.stderr).split())
    assert "source: field 'chemical_system': generator 'diffcsp'" in text
    assert "supports composition and formula_units" in text


def test_validate_refuses_elements_outside_the_diffcsp_weights(tmp_path: Path) -> None:
    pytest.importorskip("crystal_diffcsp")
    data = {
        "pipeline": {"name": "g", "device": "cpu"},
        "source": {"type": "generate", "generator": "diffcsp", "num_samples": 2, "composition": "UO2"},
        "steps": [],
    }
    with pytest.raises(ConfigError, match=r"source: field 'composition': .*contains U, outside the elements"):
        Pipeline.from_dict(data, base_dir=tmp_path).check()
    data["source"]["composition"] = "SrTiO3"
    Pipeline.from_dict(data, base_dir=tmp_path).check()  # fine


@pytest.mark.slow
def test_ray_executor_reports_rejected_samples_as_the_local_runner_does(tmp_path: Path, tmp_path_factory) -> None:
    """The generate source read by Ray workers: the same crystals, failure rows and counts."""
    import os
    import sys

    ray = pytest.importorskip("ray")
    from crystal.testing.pytest_plugin import FakeDistributions

    with pytest.MonkeyPatch.context() as mp:
        fakes = FakeDistributions(tmp_path_factory.mktemp("site"), mp)
        fakes(
            "flaky-gen",
            {"crystal.generators": {"flaky": "flaky_gen.gen:Flaky"}},
            {"flaky_gen/__init__.py": "", "flaky_gen/gen.py": GENERATOR},
        )
        mp.setenv("PYTHONPATH", os.pathsep.join([str(fakes.site), *sys.path]))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=80 * 2**20)
        try:
            local = _pipeline(tmp_path, config={"reject": 0.9}, max_attempts=1.5).run(tmp_path / "local")
            ray_cfg = {"executor": "ray", "ray": {"workers": 2}}
            remote = _pipeline(tmp_path, ray_cfg, config={"reject": 0.9}, max_attempts=1.5).run(tmp_path / "ray")
        finally:
            ray.shutdown()
            fakes.close()
    a, b = _rows(tmp_path / "local" / "failures.csv"), _rows(tmp_path / "ray" / "failures.csv")
    strip = [(r["step"], r["reason"], r["id"].rsplit("-", 2)[1:]) for r in a]
    assert strip == [(r["step"], r["reason"], r["id"].rsplit("-", 2)[1:]) for r in b]  # ids differ by run id only
    assert {r["step"] for r in b} == {"generate"}
    assert remote.manifest["counts"] == local.manifest["counts"]
    gen_a, gen_b = local.manifest["generation"], remote.manifest["generation"]
    assert gen_b["shortfall"] and {k: v for k, v in gen_b.items() if k != "shortfall"} == {
        k: v for k, v in gen_a.items() if k != "shortfall"
    }
    assert torch.equal(remote.batch.lattices, local.batch.lattices)
