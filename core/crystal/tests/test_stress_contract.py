"""The potential contract checks the stress against finite differences of the energy under
strain (issue 15): a flipped sign, a per-atom stress or GPa instead of eV/Å³ must fail, named."""

from __future__ import annotations

import pytest
import torch

from crystal.testing import LennardJones, assert_stress_matches_finite_differences
from crystal.testing.contracts import check_plugin, check_potential, sample_batch, strained_batch

CONVENTION = r"σ = \(1/V\) ∂E/∂ε in eV/Å³"


class _Wrong(LennardJones):
    """Lennard-Jones with its stress transformed by ``fix(stress, batch)``."""

    name = "wrong-stress-lj"

    def fix(self, stress, batch):
        raise NotImplementedError

    def compute(self, batch, *, forces=True, stress=True):
        out = super().compute(batch, forces=forces, stress=stress)
        if out.stress is not None:
            out.stress = self.fix(out.stress, batch)
        return out


class FlippedSign(_Wrong):
    def fix(self, stress, batch):
        return -stress


class PerAtom(_Wrong):
    def fix(self, stress, batch):
        return stress / batch.num_atoms.to(stress.dtype)[:, None, None]


class InGPa(_Wrong):
    def fix(self, stress, batch):
        return stress * 160.21766208


@pytest.mark.parametrize(
    ("cls", "why"),
    [
        (FlippedSign, "sign is flipped"),
        (PerAtom, "divided by the number of atoms"),
        (InGPa, "in GPa"),
    ],
)
def test_contract_catches_a_wrong_stress(cls, why):
    pot = cls(device="cpu", cutoff=6.0)
    with pytest.raises(AssertionError, match="finite differences") as err:
        check_potential(pot, atol=1e-8, fd_atol=1e-6)
    msg = str(err.value)
    assert "wrong-stress-lj" in msg and why in msg, msg
    assert "eV/Å³" in msg and "ASE sign" in msg and "positive = tensile" in msg


def test_flipped_stress_passes_every_symmetry_check():
    """A flipped sign is invisible to every symmetry check (rotation, translation, permutation,
    supercell, dtype): only the finite differences of the energy can see it."""
    from crystal.testing import check_potential_symmetries

    check_potential_symmetries(
        FlippedSign(device="cpu", cutoff=6.0), sample_batch(), atol=1e-8, dtype_atol=float("inf")
    )


def test_reference_potential_passes_stress_check():
    lj = LennardJones(device="cpu", cutoff=6.0)
    check_potential(lj, atol=1e-8, fd_atol=1e-6)  # includes the strained-cell stress check
    assert_stress_matches_finite_differences(lj, strained_batch(), delta=1e-4, atol=1e-8, rtol=1e-6)


def test_strained_batch_is_non_cubic_and_stressed():
    b = strained_batch()
    lj = LennardJones(device="cpu", cutoff=6.0)
    s = lj.stress(b)
    assert bool((s.abs().amax(dim=(1, 2)) > 1e-2).all())  # well above the check's tolerance
    lengths = b.lattices.norm(dim=2)
    assert not torch.allclose(lengths[:, 0], lengths[:, 1])  # no longer equal cell edges


def test_message_without_a_known_mistake_still_states_the_convention():
    class Noisy(_Wrong):
        def fix(self, stress, batch):
            return stress + 0.05 * torch.ones_like(stress)

    with pytest.raises(AssertionError) as err:
        assert_stress_matches_finite_differences(Noisy(device="cpu", cutoff=6.0), strained_batch(), atol=1e-6)
    msg = str(err.value)
    assert "looks like" not in msg and "ASE sign" in msg


def test_check_plugin_runs_the_stress_check(fake_distribution):
    """An installed (entry-point) potential with a flipped stress fails ``check_plugin``."""
    source = (
        "from crystal.testing.potentials import LennardJones\n"
        "class Flipped(LennardJones):\n"
        "    name = 'flipped-lj'\n"
        "    def compute(self, batch, *, forces=True, stress=True):\n"
        "        out = super().compute(batch, forces=forces, stress=stress)\n"
        "        if out.stress is not None:\n"
        "            out.stress = -out.stress\n"
        "        return out\n"
    )
    fake_distribution(
        "fake-flipped",
        {"crystal.potentials": {"flipped-lj": "fake_flipped.pot:Flipped"}},
        {"fake_flipped/__init__.py": "", "fake_flipped/pot.py": source},
    )
    with pytest.raises(AssertionError, match="sign is flipped"):
        check_plugin("potential", "flipped-lj", config={"cutoff": 6.0})
