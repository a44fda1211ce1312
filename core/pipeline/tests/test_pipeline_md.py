"""The ``md`` pipeline step: batched MD on each chunk, per-crystal columns, failures isolated."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from ase.build import bulk
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.io.cif import CifWriter

from crystal import ConfigError
from crystal.testing.potentials import LennardJones
from crystal_pipeline import Pipeline, run_pipeline
from crystal_pipeline.config import MDStep
from crystal_pipeline.steps import md_seed
from crystal_sim.md import MDConfig, run_md

POTENTIALS = '''
import torch

from crystal.testing.potentials import LennardJones


class PickyLJ(LennardJones):
    """Lennard-Jones for Ne and Ar only; returns NaN energies for crystals containing neon."""

    name = "picky-lj"
    elements = frozenset({10, 18})

    def compute(self, batch, *, forces=True, stress=True):
        out = super().compute(batch, forces=forces, stress=stress)
        neon = torch.zeros(len(batch), dtype=torch.long, device=batch.device).index_add_(
            0, batch.batch, (batch.atomic_numbers == 10).long()
        ) > 0
        out.energy = torch.where(neon, torch.nan, out.energy)
        return out
'''


@pytest.fixture
def lj_plugin(fake_distribution):
    fake_distribution(
        "fake-md-lj",
        {
            "crystal.potentials": {
                "lennard-jones": "crystal.testing.potentials:LennardJones",
                "picky-lj": "fake_md_lj.pot:PickyLJ",
            },
        },
        {"fake_md_lj/__init__.py": "", "fake_md_lj/pot.py": POTENTIALS},
    )


def _write(folder: Path, name: str, symbol: str, a: float, seed: int) -> None:
    atoms = bulk(symbol, "fcc", a=a, cubic=True)
    atoms.rattle(0.02, seed=seed)
    (folder / f"{name}.cif").write_text(str(CifWriter(AseAtomsAdaptor.get_structure(atoms))))


def _argon_inputs(folder: Path) -> list[str]:
    folder.mkdir()
    for k, a in enumerate([5.3, 5.4, 5.5, 5.6]):
        _write(folder, f"ar{k}", "Ar", a, k)
    return [f"ar{k}" for k in range(4)]


def _pipeline(inputs: str, chunk: int = 2, **md: object) -> dict:
    step = {
        "id": "dyn",
        "type": "md",
        "potential": "lennard-jones",
        "timestep": 2.0,
        "steps": 20,
        "temperature": 40.0,
        **md,
    }
    return {
        "pipeline": {"name": "t", "chunk_size": chunk, "device": "cpu", "seed": 3},
        "source": {"type": "files", "paths": [inputs]},
        "steps": [step],
        "sinks": [{"type": "csv", "path": "summary.csv"}, {"type": "extxyz", "path": "final.extxyz"}],
    }


def _rows(path: Path) -> list[dict]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_nve_md_step_adds_columns_and_moves_atoms(tmp_path, lj_plugin):
    ids = _argon_inputs(tmp_path / "in")
    data = _pipeline(str(tmp_path / "in"))
    res = run_pipeline(data, tmp_path / "run")
    assert sorted(res.batch.ids) == ids and not res.failures
    cols = res.batch.crystal_properties
    assert {"energy", "energy_per_atom", "md_temperature_mean", "md_energy_drift_per_atom"} <= set(cols)
    assert torch.isfinite(cols["energy_per_atom"]).all() and (cols["energy_per_atom"] < 0).all()
    assert ((cols["md_temperature_mean"] > 1) & (cols["md_temperature_mean"] < 80)).all()
    assert cols["md_energy_drift_per_atom"].abs().max() < 1e-4  # velocity Verlet, 2 fs, argon
    rows = {r["id"]: r for r in _rows(tmp_path / "run" / "results.csv")}
    assert all(rows[i]["status"] == "ok" and rows[i]["md_temperature_mean"] for i in ids)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["plugins"][0]["step"] == "dyn" and manifest["plugins"][0]["name"] == "lennard-jones"
    assert "dyn" in manifest["timings_s"]

    # the structures are the final frames: exactly what run_md gives each crystal with its seed
    from crystal.io import read_structures

    inputs = read_structures([str(tmp_path / "in")]).to_batch()
    k = inputs.ids.index("ar1")
    one = inputs.select(torch.tensor([k]))
    ref = run_md(
        LennardJones({}), one, MDConfig(timestep=2.0, steps=20, temperature=40.0, seed=[md_seed(3, "dyn", "ar1")])
    )
    j = res.batch.ids.index("ar1")
    got = res.batch.select(torch.tensor([j]))
    assert torch.allclose(got.cart_coords, ref.batch.cart_coords, atol=1e-8)
    assert not torch.allclose(got.cart_coords, one.cart_coords, atol=1e-3)
    assert cols["energy"][j].item() == pytest.approx(ref.batch.crystal_properties["energy"][0].item())


def test_langevin_results_do_not_depend_on_chunking_and_seed_defaults_to_pipeline(tmp_path, lj_plugin):
    _argon_inputs(tmp_path / "in")
    md = {"ensemble": "nvt-langevin", "friction": 0.05}
    a = run_pipeline(_pipeline(str(tmp_path / "in"), chunk=1, **md), tmp_path / "a")
    b = run_pipeline(_pipeline(str(tmp_path / "in"), chunk=8, seed=3, **md), tmp_path / "b")
    c = run_pipeline(_pipeline(str(tmp_path / "in"), chunk=8, seed=4, **md), tmp_path / "c")
    assert a.batch.ids == b.batch.ids
    ea, eb, ec = (r.batch.crystal_properties["energy_per_atom"] for r in (a, b, c))
    assert torch.allclose(ea, eb, rtol=0, atol=1e-10)  # pipeline seed 3 == explicit seed 3, any chunk size
    assert not torch.allclose(ea, ec)
    assert "md_energy_drift_per_atom" not in a.batch.crystal_properties  # NVE only
    assert "md_temperature_mean" in a.batch.crystal_properties


def test_uncovered_element_and_nan_are_isolated(tmp_path, lj_plugin):
    ids = _argon_inputs(tmp_path / "in")
    _write(tmp_path / "in", "kr", "Kr", 5.8, 7)
    _write(tmp_path / "in", "ne", "Ne", 4.5, 8)
    data = _pipeline(str(tmp_path / "in"), chunk=8, potential="picky-lj")
    res = run_pipeline(data, tmp_path / "run")
    assert sorted(res.batch.ids) == ids
    reasons = {f.id: (f.step, f.reason) for f in res.failures}
    assert set(reasons) == {"kr", "ne"}
    assert reasons["kr"][0] == "dyn" and "does not cover element(s) Kr" in reasons["kr"][1]
    assert reasons["ne"][0] == "dyn" and "non-finite" in reasons["ne"][1]
    rows = {r["id"]: r for r in _rows(tmp_path / "run" / "results.csv")}
    assert rows["kr"]["status"] == rows["ne"]["status"] == "failed"
    assert all(rows[i]["status"] == "ok" for i in ids)


# ------------------------------------------------------------------ validation
def _check_error(data: dict, *fragments: str) -> None:
    with pytest.raises(ConfigError) as err:
        Pipeline.from_dict(data)
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)


def test_config_errors_name_step_and_field(tmp_path):
    data = _pipeline(str(tmp_path), friction=0.1)
    _check_error(data, "step 'dyn' (steps[0])", "friction", "nvt-langevin")
    _check_error(_pipeline(str(tmp_path), timestep=0), "step 'dyn' (steps[0]): field 'timestep'", "greater than 0")
    _check_error(_pipeline(str(tmp_path), ensemble="npt"), "field 'ensemble'", "'nvt-langevin'")
    _check_error(_pipeline(str(tmp_path), steps=5, log_every=10), "step 'dyn'", "log_every (10)", "steps (5)")
    _check_error(_pipeline(str(tmp_path), temprature=300), "step 'dyn' (steps[0]): field 'temprature': unknown field")
    _check_error(_pipeline(str(tmp_path), seed=[1, 2]), "field 'seed'")
    # the same field through --set: nvt-langevin makes friction valid
    p = Pipeline.from_dict(data, ["dyn.ensemble='nvt-langevin'", "dyn.steps=50"])
    step = p.config.steps[0]
    assert isinstance(step, MDStep) and step.friction == 0.1 and step.steps == 50


def test_unknown_potential_fails_before_running(tmp_path, lj_plugin):
    data = _pipeline(str(tmp_path), potential="lenard-jones")
    with pytest.raises(ConfigError, match=r"step 'dyn'.*did you mean 'lennard-jones'"):
        Pipeline.from_dict(data).run(tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_md_step_mirrors_md_config():
    """Every MDConfig field (but the per-crystal seed) is an md step field with the same default."""
    step = MDStep(id="d", type="md", potential="x")
    for name, info in MDConfig.model_fields.items():
        if name == "seed":
            continue
        assert name in MDStep.model_fields, name
        assert getattr(step, name) == info.default, name
        assert MDStep.model_fields[name].description == info.description
    cfg = step.md_config([5])
    assert cfg.seed == [5] and cfg.ensemble == "nve" and cfg.steps == MDConfig().steps
