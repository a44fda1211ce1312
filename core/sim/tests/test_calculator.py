"""The ASE calculator evaluates the potential once for energy, forces and stress of a periodic cell."""

from __future__ import annotations

import numpy as np
from ase.build import bulk

from crystal.testing.potentials import LennardJones
from crystal_sim.calculator import CrystalCalculator


class CountingLJ(LennardJones):
    calls = 0

    def compute(self, batch, *, forces=True, stress=True):
        CountingLJ.calls += 1
        return super().compute(batch, forces=forces, stress=stress)


def test_energy_forces_stress_in_one_evaluation():
    atoms = bulk("Ar", "fcc", a=5.3) * (2, 1, 1)
    atoms.rattle(0.05, seed=1)
    atoms.calc = CrystalCalculator(CountingLJ())
    e = atoms.get_potential_energy()
    f = atoms.get_forces()
    s = atoms.get_stress()
    assert CountingLJ.calls == 1
    assert np.isfinite(e) and f.shape == (2, 3) and s.shape == (6,)
    atoms.positions[0, 0] += 0.01  # a change recomputes
    atoms.get_stress()
    assert CountingLJ.calls == 2
