from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk
from ase.md.verlet import VelocityVerlet

from crystal import CrystalBatch
from crystal.errors import ConfigError
from crystal.testing import LennardJones
from crystal_sim.calculator import CrystalCalculator
from crystal_sim.md import MDConfig, MDState, maxwell_boltzmann_velocities, run_md


def _ar_fcc(rattle: float = 0.0, seed: int = 0):
    a = bulk("Ar", "fcc", a=5.26, cubic=True) * (2, 2, 2)  # 32 atoms
    if rattle:
        a.rattle(rattle, seed=seed)
    return a


def _argon_set():
    a = _ar_fcc(0.05, 1)
    b = bulk("Ar", "hcp", a=3.75, c=6.1) * (2, 2, 1)
    b.rattle(0.05, seed=2)
    c = bulk("Ar", "sc", a=3.6) * (2, 2, 2)
    return [a, b, c]


@pytest.fixture(scope="module")
def lj():
    return LennardJones(device="cpu", cutoff=6.0)


def test_nve_energy_conservation(lj):
    batch = CrystalBatch.from_atoms([_ar_fcc(), _ar_fcc(0.05, 3)])
    v0 = maxwell_boltzmann_velocities(batch, 50.0, seed=[4, 5])
    res = run_md(lj, batch, steps=200, timestep=2.0, velocities=v0)
    masses = torch.full((batch.num_nodes,), 39.948, dtype=torch.float64)
    ke0 = torch.zeros(2, dtype=torch.float64).index_add_(0, batch.batch, 0.5 * masses * (v0 / units.fs).pow(2).sum(1))
    e0 = lj.compute(batch, forces=False, stress=False).energy + ke0
    drift = (res.total_energy - e0).abs().max(0).values / batch.num_atoms
    # measured: max |E_total(t) - E_total(0)| = 6.7e-7 eV/atom over 200 x 2 fs at 50 K (cutoff 6 Å,
    # float64); the bound is 3x that
    assert (drift < 2e-6).all(), drift
    assert res.total_energy.shape == (200, 2)
    assert res.steps.tolist() == list(range(1, 201))
    assert torch.equal(res.batch.lattices, batch.lattices)


def test_matches_ase_velocity_verlet(lj):
    atoms = _argon_set()
    batch = CrystalBatch.from_atoms(atoms)
    v0 = maxwell_boltzmann_velocities(batch, 80.0, seed=7)
    res = run_md(lj, batch, steps=40, timestep=2.0, velocities=v0, log_every=10)
    assert res.total_energy.shape == (4, 3)
    final = res.batch.to_atoms()
    for k, a in enumerate(atoms):
        ref = a.copy()
        ref.calc = CrystalCalculator(lj)
        ref.set_velocities(v0[batch.batch == k].numpy() / units.fs)
        VelocityVerlet(ref, timestep=2.0 * units.fs, logfile=None).run(40)
        np.testing.assert_allclose(final[k].positions, ref.positions, rtol=0, atol=1e-8)
        np.testing.assert_allclose(
            res.velocities[batch.batch == k].numpy(), ref.get_velocities() * units.fs, rtol=0, atol=1e-10
        )
        assert float(res.potential_energy[-1, k]) == pytest.approx(ref.get_potential_energy(), abs=1e-8)
        assert float(res.kinetic_energy[-1, k]) == pytest.approx(ref.get_kinetic_energy(), abs=1e-8)
        assert float(res.temperature[-1, k]) == pytest.approx(ref.get_temperature(), rel=1e-8)


@pytest.mark.parametrize("ensemble", ["nve", "nvt-langevin"])
def test_batched_equals_one_by_one(lj, ensemble):
    atoms = _argon_set()
    batch = CrystalBatch.from_atoms(atoms)
    kw = {"ensemble": ensemble, "steps": 30, "timestep": 2.0, "temperature": 60.0, "log_every": 5}
    together = run_md(lj, batch, seed=11, **kw)
    for k, a in enumerate(atoms):
        alone = run_md(lj, CrystalBatch.from_atoms([a]), seed=11 + k, **kw)
        sel = batch.batch == k
        torch.testing.assert_close(together.velocities[sel], alone.velocities, rtol=0, atol=1e-12)
        torch.testing.assert_close(together.batch.frac_coords[sel], alone.batch.frac_coords, rtol=0, atol=1e-12)
        torch.testing.assert_close(together.total_energy[:, k], alone.total_energy[:, 0], rtol=0, atol=1e-10)


def test_langevin_temperature_and_reproducibility(lj):
    batch = CrystalBatch.from_atoms([_ar_fcc()] * 6)
    cfg = MDConfig(ensemble="nvt-langevin", temperature=40.0, friction=0.05, steps=300, timestep=2.0, seed=3)
    res = run_md(lj, batch, cfg)
    mean_t = float(res.temperature[100:].mean())
    # 6 crystals x 200 steps, kinetic-energy correlation time ~1/(2γ) = 10 fs: statistical error
    # ≈ 1 % (measured 39.5-39.9 K for seeds 3, 10, 20); the bound is loose
    assert mean_t == pytest.approx(40.0, rel=0.08), mean_t
    cfg = cfg.model_copy(update={"steps": 40})
    res = run_md(lj, batch, cfg)
    again = run_md(lj, batch, cfg)
    assert torch.equal(res.batch.frac_coords, again.batch.frac_coords)
    assert torch.equal(res.velocities, again.velocities)
    other = run_md(lj, batch, cfg, seed=4)
    assert not torch.equal(res.velocities, other.velocities)
    # the crystals are identical but their noise is independent
    assert not torch.equal(res.velocities[batch.batch == 0], res.velocities[batch.batch == 1])


def test_initial_velocities_zero_momentum_and_temperature(lj):
    batch = CrystalBatch.from_atoms(_argon_set() + [_ar_fcc()] * 4)
    v = maxwell_boltzmann_velocities(batch, 100.0, seed=2)
    m = 39.948
    p = torch.zeros(len(batch), 3, dtype=torch.float64).index_add_(0, batch.batch, m * v)
    assert p.abs().max() < 1e-12
    t = (m * (v / units.fs).pow(2).sum() / (3 * batch.num_nodes * units.kB)).item()
    assert 70 < t < 130
    # run_md draws the same velocities for the same seed; steps=0 returns them unchanged
    res = run_md(lj, batch, steps=0, temperature=100.0, seed=2)
    assert torch.equal(res.velocities, v)
    assert res.total_energy.shape == (0, len(batch))
    rest = run_md(lj, batch, steps=0, init_temperature=0.0)
    assert torch.equal(rest.velocities, torch.zeros_like(v))


def test_wrap_and_callback(lj):
    batch = CrystalBatch.from_atoms([_ar_fcc(0.05, 9)])
    seen: list[MDState] = []
    res = run_md(lj, batch, steps=20, timestep=5.0, temperature=300.0, wrap=True, log_every=4, callback=seen.append)
    assert [s.step for s in seen] == [4, 8, 12, 16, 20]
    f = res.batch.frac_coords
    assert (f >= 0).all() and (f < 1).all()
    nowrap = run_md(lj, batch, steps=20, timestep=5.0, temperature=300.0)
    torch.testing.assert_close(res.total_energy[-1], nowrap.total_energy[-1], rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"friction": 0.01}, "friction"),
        ({"timestep": -1.0}, "timestep"),
        ({"stepz": 3}, "unknown parameter"),
        ({"ensemble": "npt"}, "ensemble"),
        ({"log_every": 0}, "log_every"),
        ({"seed": [1, 2]}, "seeds given"),
    ],
)
def test_config_errors(lj, overrides, message):
    batch = CrystalBatch.from_atoms([_ar_fcc()])
    with pytest.raises(ConfigError, match=message):
        run_md(lj, batch, steps=1, **overrides)


def test_float32(lj):
    batch = CrystalBatch.from_atoms([_ar_fcc()]).to(dtype=torch.float32)
    res = run_md(lj, batch, steps=10, timestep=2.0, temperature=50.0)
    assert res.velocities.dtype == torch.float32 and res.total_energy.dtype == torch.float32
