from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE

from crystal import CrystalBatch, StructureError
from crystal.testing import LennardJones
from crystal_sim.calculator import CrystalCalculator
from crystal_sim.relax import relax


def _argon_set():
    a = bulk("Ar", "fcc", a=5.6) * (2, 1, 1)
    a.rattle(0.2, seed=1)
    b = bulk("Ar", "hcp", a=3.6, c=6.3)
    b.rattle(0.1, seed=2)
    c = bulk("Ar", "sc", a=3.5)
    return [a, b, c]


@pytest.fixture(scope="module")
def lj():
    return LennardJones(device="cpu", cutoff=6.0)


def test_matches_ase_fire_with_frechet_filter_structure_by_structure(lj):
    # ASE's filter is slow here (scipy logm/expm_frechet on 3x3 matrices), so two crystals
    atoms = [_argon_set()[0], _argon_set()[2]]
    res = relax(lj, CrystalBatch.from_atoms(atoms), fmax=2e-3, max_steps=1000)
    assert res.converged.all()
    for k, a in enumerate(atoms):
        ref = a.copy()
        ref.calc = CrystalCalculator(lj)
        opt = FIRE(FrechetCellFilter(ref), logfile=None)
        opt.run(fmax=2e-3, steps=1000)
        assert int(res.steps[k]) == opt.nsteps
        assert float(res.energy[k]) == pytest.approx(ref.get_potential_energy(), abs=1e-8)
        relaxed = res.batch.to_atoms()[k]
        np.testing.assert_allclose(relaxed.cell[:], ref.cell[:], atol=1e-6)
        np.testing.assert_allclose(relaxed.positions, ref.positions, atol=1e-6)


def test_positions_only_keeps_cell(lj):
    batch = CrystalBatch.from_atoms(_argon_set()[:2])
    res = relax(lj, batch, fmax=1e-3, relax_cell=False, max_steps=500)
    assert torch.equal(res.batch.lattices, batch.lattices)
    assert res.stress is None
    assert res.converged.all()
    assert (res.forces.norm(dim=1) < 1e-3).all()


def test_convergence_is_per_structure_and_max_steps(lj):
    batch = CrystalBatch.from_atoms(_argon_set())
    res = relax(lj, batch, fmax=1e-4, max_steps=5)
    assert not res.converged.any()
    assert res.steps.tolist() == [5, 5, 5]
    # the sc cell converges fastest: it stops while the others go on
    res = relax(lj, batch, fmax=1e-3, max_steps=1000)
    assert len(set(res.steps.tolist())) > 1


def test_energy_decreases_and_trajectory_recorded(lj):
    batch = CrystalBatch.from_atoms(_argon_set())
    e0 = lj.energy(batch)
    res = relax(lj, batch, fmax=1e-3, trajectory_every=5)
    assert (res.energy <= e0 + 1e-12).all()
    steps = [s for s, _ in res.trajectory]
    assert steps[0] == 0 and steps == sorted(steps) and steps[-1] == int(res.steps.max())
    assert all(len(frame) == 3 for _, frame in res.trajectory)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes(lj, dtype):
    batch = CrystalBatch.from_atoms(_argon_set()).to(dtype=dtype)
    res = relax(lj, batch, fmax=5e-3)
    assert res.energy.dtype == dtype
    assert res.converged.all()


def test_empty_and_nan(lj):
    res = relax(lj, CrystalBatch.empty())
    assert len(res.batch) == 0
    batch = CrystalBatch.from_atoms(_argon_set())
    batch.frac_coords[0, 0] = float("nan")
    with pytest.raises(StructureError, match="NaN"):
        relax(lj, batch)


def test_pressure_compresses(lj):
    batch = CrystalBatch.from_atoms([bulk("Ar", "fcc", a=5.3)])
    v0 = relax(lj, batch, fmax=1e-4).batch.volumes
    v1 = relax(lj, batch, fmax=1e-4, scalar_pressure=1e-3).batch.volumes
    assert float(v1) < float(v0)


def test_bad_options_are_config_errors(lj):
    from crystal import ConfigError

    batch = CrystalBatch.from_atoms(_argon_set()[:1])
    with pytest.raises(ConfigError, match="fmaxx: unknown parameter"):
        relax(lj, batch, fmaxx=0.1)
    with pytest.raises(ConfigError, match="fmax: Input should be greater than 0"):
        relax(lj, batch, fmax=-1)
