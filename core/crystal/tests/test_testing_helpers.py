"""The public testing helpers, exercised on the exact Lennard-Jones reference potential."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.lj import LennardJones as AseLJ

from crystal import CrystalBatch
from crystal.testing import (
    LennardJones,
    assert_equivariant_forces,
    assert_forces_match_finite_differences,
    assert_invariant,
    assert_stress_matches_finite_differences,
    permute,
    random_rotation,
    supercell,
    translate,
    unimodular_recell,
)


def _batch(dtype):
    a = bulk("Ar", "fcc", a=5.3) * (2, 1, 1)
    a.rattle(0.1, seed=1)
    b = bulk("Ar", "hcp", a=3.8, c=6.1)
    b.rattle(0.05, seed=2)
    return CrystalBatch.from_atoms([a, b]).to(dtype=dtype), [a, b]


@pytest.fixture(scope="module")
def lj():
    return LennardJones(device="cpu")


def test_lennard_jones_matches_ase(lj):
    batch, atoms = _batch(torch.float64)
    out = lj.compute(batch)
    for k, a in enumerate(atoms):
        a.calc = AseLJ(epsilon=0.0104, sigma=3.4, rc=8.5, smooth=False)
        assert float(out.energy[k]) == pytest.approx(a.get_potential_energy(), abs=1e-10)
        lo, hi = int(batch.ptr[k]), int(batch.ptr[k + 1])
        np.testing.assert_allclose(out.forces[lo:hi].numpy(), a.get_forces(), atol=1e-10)
        s = out.stress[k].numpy()
        np.testing.assert_allclose([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]], a.get_stress(), atol=1e-10)


def test_finite_differences(lj):
    batch, _ = _batch(torch.float64)
    assert_forces_match_finite_differences(lj, batch, atol=1e-7)
    assert_stress_matches_finite_differences(lj, batch, atol=1e-8)


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_symmetries(lj, dtype, atol):
    batch, _ = _batch(dtype)
    g = torch.Generator().manual_seed(0)
    assert_equivariant_forces(lj, batch, random_rotation(g, dtype=dtype), atol=atol)
    assert_invariant(lj.energy, batch, lambda b: translate(b, torch.tensor([0.3, -1.7, 2.2])), atol=atol)
    assert_invariant(lj.energy, batch, lambda b: permute(b, g)[0], atol=atol)
    assert_invariant(lj.energy, batch, unimodular_recell, atol=atol)
    assert_invariant(lj.energy, batch, lambda b: supercell(b, (2, 1, 3)), scale=6.0, atol=atol * 10, rtol=1e-5)


def test_permutation_moves_forces(lj):
    batch, _ = _batch(torch.float64)
    perm_batch, order = permute(batch, torch.Generator().manual_seed(1))
    torch.testing.assert_close(lj.forces(perm_batch), lj.forces(batch)[order])


def test_checks_catch_a_broken_potential(lj):
    class Broken(LennardJones):
        name = "broken-lj"

        def compute(self, batch, *, forces=True, stress=True):
            out = super().compute(batch, forces=forces, stress=stress)
            if out.forces is not None:
                out.forces = out.forces * 1.1  # wrong by 10 %
            return out

    batch, _ = _batch(torch.float64)
    with pytest.raises(AssertionError, match="force on atom"):
        assert_forces_match_finite_differences(Broken(device="cpu"), batch, atol=1e-7)
    with pytest.raises(AssertionError, match="invariance"):
        assert_invariant(lj.energy, batch, lambda b: b.with_positions(b.frac_coords, b.lattices * 1.01))
