"""An ASE :class:`~ase.calculators.calculator.Calculator` for any crystal Potential."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from crystal.batch import CrystalBatch
from crystal.components import Potential

__all__ = ["CrystalCalculator"]


class CrystalCalculator(Calculator):  # type: ignore[misc]
    """Expose ``potential`` to ASE (MD, optimisers, phonons, EOS ...).

    Results: ``energy``/``free_energy`` (eV), ``forces`` (eV/Å, (N, 3)), ``stress``
    (eV/Å³, Voigt order xx, yy, zz, yz, xz, xy; ASE sign convention).

    >>> atoms.calc = CrystalCalculator(crystal.load("potential", "chgnet"))
    """

    implemented_properties: ClassVar[list[str]] = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, potential: Potential, *, dtype: torch.dtype = torch.float64, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.potential = potential
        self.dtype = dtype

    def calculate(self, atoms: Any = None, properties: Any = ("energy",), system_changes: Any = all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        a = self.atoms
        device = self.potential.device
        cell = torch.as_tensor(np.asarray(a.cell[:]), dtype=self.dtype, device=device)
        pos = torch.as_tensor(a.positions, dtype=self.dtype, device=device)
        batch = CrystalBatch(
            atomic_numbers=torch.as_tensor(a.numbers, dtype=torch.long, device=device),
            frac_coords=torch.linalg.solve(cell.T, pos.T).T,
            lattices=cell[None],
            num_atoms=torch.tensor([len(a)], device=device),
            pbc=torch.as_tensor(np.asarray(a.pbc), device=device)[None],
        )
        # energy, forces and stress come from one evaluation (autograd through the cell): compute
        # the stress of a fully periodic cell always, so that ASE asking for energy, then forces,
        # then stress (as optimisers and MD loggers do) does not run the model twice
        want_stress = "stress" in properties or bool(np.asarray(a.pbc).all())
        out = self.potential.compute(batch, forces=True, stress=want_stress)
        e = float(out.energy[0])
        self.results["energy"] = e
        self.results["free_energy"] = e
        assert out.forces is not None
        self.results["forces"] = out.forces.detach().double().cpu().numpy()
        if want_stress and out.stress is not None:
            s = out.stress[0].detach().double().cpu().numpy()
            self.results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
