"""A crystal whose relaxation runs away (volume or energy out of range, too many neighbours) is
stopped alone with a reason, fast (issue 15: a flipped stress ran for over 300 s on 4 atoms)."""

from __future__ import annotations

import time

import pytest
import torch
from ase.build import bulk

from crystal import CrystalBatch
from crystal.neighbors import NeighborLimitError
from crystal.testing import LennardJones
from crystal_sim.relax import relax


class FlippedStress(LennardJones):
    name = "flipped-stress-lj"

    def compute(self, batch, *, forces=True, stress=True):
        out = super().compute(batch, forces=forces, stress=stress)
        if out.stress is not None:
            out.stress = -out.stress
        return out


def _argon(a: float, seed: int = 0):
    atoms = bulk("Ar", "fcc", a=a, cubic=True)  # 4 atoms
    atoms.rattle(0.02, seed=seed)
    return atoms


def test_flipped_stress_collapse_is_stopped_quickly():
    batch = CrystalBatch.from_atoms([_argon(5.0)], ids=["ar"])  # compressed: the flipped stress shrinks it further
    start = time.perf_counter()
    res = relax(FlippedStress(device="cpu"), batch, max_steps=500)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, elapsed
    assert res.failures[0] is not None and "relaxation stopped at FIRE step" in res.failures[0]
    assert "energy rose" in res.failures[0] and "flipped-stress-lj" in res.failures[0]
    assert bool(res.failed[0]) and not bool(res.converged[0])
    assert int(res.steps[0]) < 60


def test_volume_bound_names_the_volumes():
    batch = CrystalBatch.from_atoms([_argon(5.0)], ids=["ar"])
    res = relax(FlippedStress(device="cpu"), batch, max_steps=500, max_energy_rise_per_atom=None)
    assert res.failures[0] is not None and "cell volume left the sane range" in res.failures[0]
    assert "max_volume_factor=4" in res.failures[0]
    assert float(res.batch.volumes[0]) < 125.0 / 4 * 1.01  # stopped right after leaving the range


class FlippedForKr(LennardJones):
    """Lennard-Jones whose stress has the wrong sign for crystals that contain krypton."""

    name = "flipped-kr-lj"

    def compute(self, batch, *, forces=True, stress=True):
        out = super().compute(batch, forces=forces, stress=stress)
        if out.stress is not None:
            kr = torch.zeros(len(batch), dtype=torch.long).index_add_(
                0, batch.batch, (batch.atomic_numbers == 36).long()
            )
            out.stress = torch.where((kr > 0)[:, None, None], -out.stress, out.stress)
        return out


def test_only_the_runaway_crystal_fails_and_the_others_are_unchanged():
    good = [_argon(5.3, 1), _argon(5.25, 2)]
    alone = relax(LennardJones(device="cpu", cutoff=6.0), CrystalBatch.from_atoms(good, ids=["g1", "g2"]), fmax=0.1)
    kr = bulk("Kr", "fcc", a=5.0, cubic=True)  # compressed krypton: its flipped stress collapses it
    mixed = CrystalBatch.from_atoms([good[0], kr, good[1]], ids=["g1", "bad", "g2"])
    res = relax(FlippedForKr(device="cpu", cutoff=6.0), mixed, fmax=0.1, max_steps=500)
    assert res.failures[0] is None and res.failures[2] is None and res.failures[1] is not None
    assert bool(res.converged[0]) and bool(res.converged[2]) and not bool(res.converged[1])
    torch.testing.assert_close(res.energy[[0, 2]], alone.energy)
    torch.testing.assert_close(res.steps[[0, 2]], alone.steps)


def test_bounds_can_be_lifted_and_are_validated():
    from crystal import ConfigError

    batch = CrystalBatch.from_atoms([_argon(5.0)], ids=["ar"])
    res = relax(
        FlippedStress(device="cpu"),
        batch,
        max_steps=15,
        max_volume_factor=None,
        max_energy_rise_per_atom=None,
        max_energy_drop_per_atom=None,
    )
    assert res.failures == [None]
    with pytest.raises(ConfigError, match="max_volume_factor"):
        relax(LennardJones(device="cpu"), batch, max_volume_factor=0.5)


def test_non_finite_energy_is_a_per_crystal_failure():
    class NaNForNe(LennardJones):
        name = "nan-ne"

        def compute(self, batch, *, forces=True, stress=True):
            out = super().compute(batch, forces=forces, stress=stress)
            ne = torch.zeros(len(batch), dtype=torch.long).index_add_(
                0, batch.batch, (batch.atomic_numbers == 10).long()
            )
            out.energy = torch.where(ne > 0, torch.nan, out.energy)
            return out

    ne = bulk("Ne", "fcc", a=4.4, cubic=True)
    batch = CrystalBatch.from_atoms([_argon(5.3), ne], ids=["ar", "ne"])
    res = relax(NaNForNe(device="cpu"), batch, fmax=0.05)
    assert res.failures[0] is None and bool(res.converged[0])
    assert res.failures[1] is not None and "non-finite" in res.failures[1]


def test_neighbour_limit_fails_the_dense_crystal_only():
    dense = _argon(5.3)
    dense.set_cell(dense.cell * 0.2, scale_atoms=True)  # 1.2 Å^3: ~5000 neighbours within 8.5 Å
    batch = CrystalBatch.from_atoms([_argon(5.3, 1), dense], ids=["ok", "dense"])
    with pytest.raises(NeighborLimitError, match="'dense'"):
        LennardJones(device="cpu").compute(batch)
    res = relax(LennardJones(device="cpu"), batch, fmax=0.05)
    assert res.failures[0] is None and bool(res.converged[0])
    assert res.failures[1] is not None and "max_mean_neighbors" in res.failures[1]


def test_failed_crystal_has_no_energy_to_trust():
    batch = CrystalBatch.from_atoms([_argon(5.0)], ids=["ar"])
    res = relax(FlippedStress(device="cpu"), batch, max_steps=500)
    assert res.failures[0] is not None
    assert torch.isnan(res.energy[0]) and torch.isnan(res.batch.crystal_properties["energy"][0])
