"""MD stops a crystal whose total energy runs away (forces inconsistent with the energy) with an
error naming it, instead of integrating garbage (issue 15)."""

from __future__ import annotations

import time

import pytest
import torch
from ase.build import bulk

from crystal import CrystalBatch, StructureError
from crystal.testing import LennardJones
from crystal_sim.md import run_md


class ReversedForces(LennardJones):
    """Forces pointing uphill: atoms run into each other and the energy explodes."""

    name = "reversed-forces-lj"

    def compute(self, batch, *, forces=True, stress=True):
        out = super().compute(batch, forces=forces, stress=stress)
        if out.forces is not None:
            out.forces = -out.forces
        return out


def _argon():
    atoms = bulk("Ar", "fcc", a=5.3, cubic=True)
    atoms.rattle(0.05, seed=0)
    return CrystalBatch.from_atoms([atoms], ids=["ar"])


def test_runaway_md_is_stopped_naming_the_crystal():
    start = time.perf_counter()
    with pytest.raises(StructureError, match=r"total energy of \['ar'\] left the sane range.*reversed-forces-lj"):
        run_md(ReversedForces(device="cpu", cutoff=6.0), _argon(), steps=2000, timestep=5.0, temperature=300.0)
    assert time.perf_counter() - start < 10.0


def test_sane_md_and_lifted_bound_run_through():
    res = run_md(LennardJones(device="cpu", cutoff=6.0), _argon(), steps=20, timestep=2.0, temperature=40.0)
    assert torch.isfinite(res.total_energy).all()
    run_md(
        ReversedForces(device="cpu", cutoff=6.0),
        _argon(),
        steps=5,
        timestep=1.0,
        temperature=40.0,
        max_energy_change_per_atom=None,
    )
