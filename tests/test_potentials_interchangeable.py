"""CHGNet, SevenNet-0 and MACE are interchangeable: the same pipeline (relax → md), the same
Python calls (relax, run_md, CrystalCalculator) and the same outputs, by plugin name only."""

from __future__ import annotations

import csv

import pytest
import torch
from ase.build import bulk
from ase.md.verlet import VelocityVerlet
from ase.units import fs
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.io.cif import CifWriter

import crystal
from crystal.batch import CrystalBatch
from crystal_pipeline import run_pipeline
from crystal_sim.calculator import CrystalCalculator
from crystal_sim.md import run_md
from crystal_sim.relax import relax

#: (plugin, config): pretrained weights where the plugin ships them; MACE with its shipped Si model
POTENTIALS = [
    ("chgnet", {}),
    ("sevennet", {}),
    ("mace", {"weights": "mace-mlearn-si"}),
]


def _silicon(seed: int) -> object:
    atoms = bulk("Si", "diamond", a=5.47, cubic=True)
    atoms.rattle(0.03, seed=seed)
    return atoms


@pytest.mark.parametrize(("name", "config"), POTENTIALS, ids=[p[0] for p in POTENTIALS])
def test_same_pipeline_any_potential(tmp_path, name, config):
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(2):
        (folder / f"si{k}.cif").write_text(str(CifWriter(AseAtomsAdaptor.get_structure(_silicon(k)))))
    pipeline = {
        "pipeline": {"name": f"swap-{name}", "chunk_size": 2, "device": "cpu", "seed": 0},
        "source": {"type": "files", "paths": [str(folder)]},
        "steps": [
            {"id": "relax", "type": "relax", "potential": name, "config": config, "fmax": 0.2, "max_steps": 5},
            {"id": "md", "type": "md", "potential": name, "config": config, "steps": 3, "timestep": 1.0},
        ],
        "sinks": [{"type": "csv", "path": "summary.csv"}],
    }
    res = run_pipeline(pipeline, tmp_path / "run")
    assert not res.failures and sorted(res.batch.ids) == ["si0", "si1"]
    cols = res.batch.crystal_properties
    assert torch.isfinite(cols["energy_per_atom"]).all()
    assert {"converged", "relax_steps", "md_temperature_mean"} <= set(cols)
    with (tmp_path / "run" / "results.csv").open() as fh:
        assert all(r["status"] == "ok" for r in csv.DictReader(fh))


@pytest.mark.parametrize(("name", "config"), POTENTIALS, ids=[p[0] for p in POTENTIALS])
def test_same_python_api_any_potential(name, config):
    pot = crystal.load("potential", name, config, device="cpu")
    batch = CrystalBatch.from_atoms([_silicon(0), _silicon(1)], ids=["a", "b"])
    out = pot.compute(batch)
    assert out.energy.shape == (2,) and out.forces.shape == (16, 3) and out.stress.shape == (2, 3, 3)
    relaxed = relax(pot, batch, fmax=0.2, max_steps=5)
    assert relaxed.batch.num_nodes == 16
    md = run_md(pot, batch, steps=3, timestep=1.0, temperature=300.0)
    assert torch.isfinite(md.batch.crystal_properties["energy"]).all()
    # and through ASE: the batched energy equals the calculator's
    atoms = _silicon(0)
    atoms.calc = CrystalCalculator(pot)
    assert atoms.get_potential_energy() == pytest.approx(float(out.energy[0]), abs=1e-4)
    VelocityVerlet(atoms, 1.0 * fs).run(2)
