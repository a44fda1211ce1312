"""Every installed component honours the contract of its kind (crystal.testing.contracts)."""

from __future__ import annotations

import pytest

from crystal.plugins import list_plugins
from crystal.testing.contracts import check_plugin, check_potential
from crystal.testing.potentials import LennardJones

PLUGINS = [(i.kind, i.name) for i in list_plugins()]


#: configs that keep a contract check fast (the contract does not depend on them)
FAST = {("generator", "mattergen"): {"steps": 10}, ("generator", "diffcsp"): {"steps": 200}}


@pytest.mark.parametrize(("kind", "name"), PLUGINS, ids=[f"{k}:{n}" for k, n in PLUGINS])
def test_installed_plugin_contract(kind, name):
    check_plugin(kind, name, config=FAST.get((kind, name)))


def test_contract_on_reference_potential():
    check_potential(LennardJones(device="cpu", cutoff=6.0), atol=1e-8, fd_atol=1e-6)


def test_contract_catches_non_extensive_energy():
    class PerCrystalOffset(LennardJones):
        name = "offset-lj"

        def compute(self, batch, *, forces=True, stress=True):
            out = super().compute(batch, forces=forces, stress=stress)
            out.energy = out.energy + 1.0  # a constant per crystal is not extensive
            return out

    with pytest.raises(AssertionError, match="extensivity"):
        check_potential(PerCrystalOffset(device="cpu", cutoff=6.0), atol=1e-8, fd_atol=1e-6)
