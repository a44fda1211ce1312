"""Datasets and metrics that ship with crystal-core, registered like any plugin's.

Light at import: heavy modules are imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from crystal.hookspecs import hookimpl
from crystal.registries import DatasetSpec, MetricSpec

if TYPE_CHECKING:
    import torch
    from pymatgen.core import Structure

    from crystal.batch import CrystalBatch


def _dcdft(limit: int | None) -> tuple[Sequence[str], Sequence[Structure]]:
    from ase.collections import dcdft
    from pymatgen.io.ase import AseAtomsAdaptor

    names = list(dcdft.names)[:limit]
    return names, [AseAtomsAdaptor.get_structure(dcdft[n]) for n in names]


def _pymatgen_test(limit: int | None) -> tuple[Sequence[str], Sequence[Structure]]:
    from pathlib import Path

    import pymatgen.util
    from pymatgen.core import Structure

    folder = Path(pymatgen.util.__file__).parent / "structures"
    files = sorted(folder.glob("*.json"))
    structures = [(f.stem, Structure.from_file(f)) for f in files]
    ordered = [(n, s) for n, s in structures if s.is_ordered][:limit]
    return [n for n, _ in ordered], [s for _, s in ordered]


@hookimpl
def register_datasets(register: Callable[[DatasetSpec], None]) -> None:
    register(
        DatasetSpec(
            name="dcdft",
            description="71 elemental crystals of the Delta-test (ase.collections.dcdft)",
            load=_dcdft,
            licence="LGPL-2.1 (ASE)",
            source="Lejaeghere et al., Crit. Rev. Solid State 39, 1 (2014)",
        )
    )
    register(
        DatasetSpec(
            name="pymatgen-test",
            description="pymatgen's bundled ordered test structures (Si, LiFePO4, SrTiO3, ...)",
            load=_pymatgen_test,
            licence="MIT (pymatgen)",
            source="pymatgen.util.structures",
        )
    )


def _volume_per_atom(batch: CrystalBatch) -> torch.Tensor:
    return batch.volumes / batch.num_atoms.to(batch.dtype)


def _density(batch: CrystalBatch) -> torch.Tensor:
    import torch
    from ase.data import atomic_masses

    masses = torch.as_tensor(atomic_masses, dtype=batch.dtype, device=batch.device)[batch.atomic_numbers]
    total = torch.zeros(len(batch), dtype=batch.dtype, device=batch.device).index_add_(0, batch.batch, masses)
    amu_per_a3_to_g_cm3 = 1.66053906660
    return total / batch.volumes * amu_per_a3_to_g_cm3


def _min_distance(batch: CrystalBatch) -> torch.Tensor:
    return batch.min_distances()


def _num_atoms(batch: CrystalBatch) -> torch.Tensor:
    return batch.num_atoms.to(batch.dtype)


@hookimpl
def register_metrics(register: Callable[[MetricSpec], None]) -> None:
    register(MetricSpec("volume_per_atom", "Å^3/atom", "cell volume divided by atom count", _volume_per_atom))
    register(MetricSpec("density", "g/cm^3", "mass density from standard atomic weights", _density))
    register(MetricSpec("min_distance", "Å", "shortest interatomic distance incl. periodic images", _min_distance))
    register(MetricSpec("num_atoms", "atoms", "atoms in the cell", _num_atoms))
