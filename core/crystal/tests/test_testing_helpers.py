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
    assert_dtype_follows_input,
    assert_equivariant_forces,
    assert_forces_match_finite_differences,
    assert_invariant,
    assert_outputs_close,
    assert_permutation_invariant,
    assert_stress_matches_finite_differences,
    assert_supercell_extensive,
    assert_translation_invariant,
    check_potential_symmetries,
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


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_check_potential_symmetries_passes_for_lennard_jones(lj, dtype, atol):
    batch, _ = _batch(dtype)
    # float32 vs float64 requests differ by float32 round-off whatever the batch's dtype
    check_potential_symmetries(lj, batch, atol=atol, rtol=1e-6, supercell_reps=(2, 1, 2), dtype_atol=1e-5)


class _Tweaked(LennardJones):
    """Lennard-Jones with one physical promise broken, chosen by ``flaw``."""

    name = "tweaked-lj"
    flaw = ""

    def compute(self, batch, *, forces=True, stress=True):
        out = super().compute(batch, forces=forces, stress=stress)
        if self.flaw == "position" and len(batch):  # energy depends on where the crystal sits
            out.energy = out.energy + 1e-3 * batch.cart_coords[:, 0].sum().detach()
        if self.flaw == "order" and out.forces is not None and len(out.forces):  # forces tied to atom index
            out.forces = out.forces + 1e-3 * torch.arange(len(out.forces), dtype=out.forces.dtype)[:, None]
        if self.flaw == "intensive" and len(batch):  # energy per atom returned as the energy
            out.energy = out.energy / batch.num_atoms
        if self.flaw == "float32" and batch.dtype == torch.float32:
            out.energy = out.energy.double()
        return out


@pytest.mark.parametrize(
    ("flaw", "check", "match"),
    [
        ("position", assert_translation_invariant, "energy"),
        ("order", assert_permutation_invariant, "under permutation: forces"),
        ("intensive", assert_supercell_extensive, r"energy under a 2x2x2 supercell \(extensive\)"),
        ("float32", assert_dtype_follows_input, "energy is torch.float64 for a torch.float32 batch"),
        ("intensive", check_potential_symmetries, "extensive"),
    ],
)
def test_potential_checks_catch_broken_potentials(flaw, check, match):
    pot = _Tweaked(device="cpu")
    pot.flaw = flaw
    batch = supercell(_batch(torch.float64)[0], (2, 2, 1))  # 8 atoms each: a permutation moves some
    with pytest.raises(AssertionError, match=match):
        check(pot, batch, atol=1e-8)


def test_assert_outputs_close_names_the_field(lj):
    batch, _ = _batch(torch.float64)
    out = lj.compute(batch)
    assert_outputs_close(out, out, atol=0, rtol=0)
    bad = type(out)(out.energy, out.forces, out.stress * 2)
    with pytest.raises(AssertionError, match="reloaded: stress"):
        assert_outputs_close(bad, out, atol=1e-8, what="reloaded")
