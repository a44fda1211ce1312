"""Tests of the crystal-sevennet potential plugin (CPU, one thread).

SevenNet-0 runs in float32 like upstream; the finite-difference checks use the same
weights in float64 (``dtype="float64"``), so their tolerances are float64-tight. Symmetry
tolerances are set from measured float32 round-off (see the comments next to each).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sevenn")

import crystal.weights
from crystal.batch import CrystalBatch
from crystal.errors import ConfigError, StructureError, WeightsError
from crystal.manifest import locate_manifest, read_manifest
from crystal.testing import (
    assert_forces_match_finite_differences,
    assert_outputs_close,
    assert_stress_matches_finite_differences,
    assert_supercell_extensive,
    check_potential_symmetries,
)
from crystal_sevennet.potential import SEVENNET_0_ELEMENTS, SevenNetPotential

torch.set_num_threads(1)

PYMATGEN_STRUCTURES = Path(__import__("pymatgen.core").core.__file__).parent.parent / "util" / "structures"


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def pot() -> SevenNetPotential:
    return SevenNetPotential(device="cpu")


@pytest.fixture(scope="module")
def pot64() -> SevenNetPotential:
    return SevenNetPotential(device="cpu", dtype="float64")


def _bulk_atoms():
    from ase.build import bulk

    out = []
    for k, a in enumerate(
        [
            bulk("Si", "diamond", 5.43, cubic=True),
            bulk("Cu", "fcc", 3.60, cubic=True),
            bulk("NaCl", "rocksalt", 5.64, cubic=True),
        ]
    ):
        a.rattle(0.05, seed=k + 1)
        out.append(a)
    return out


@pytest.fixture(scope="module")
def small() -> CrystalBatch:
    """Si (8 atoms), Cu (4), NaCl (8), rattled."""
    return CrystalBatch.from_atoms(_bulk_atoms(), ids=["Si", "Cu", "NaCl"])


@pytest.fixture(scope="module")
def mixed() -> CrystalBatch:
    """Rattled Si/Cu/NaCl, LiFePO4 (28 atoms, left-handed cell), SrTiO3 (pymatgen test files)."""
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    real = [
        AseAtomsAdaptor.get_atoms(Structure.from_file(PYMATGEN_STRUCTURES / f"{n}.json")) for n in ("LiFePO4", "SrTiO3")
    ]
    return CrystalBatch.from_atoms([*_bulk_atoms(), *real], ids=["Si", "Cu", "NaCl", "LiFePO4", "SrTiO3"])


@pytest.fixture(scope="module")
def mixed_out(pot, mixed):
    return pot.compute(mixed)


# ---------------------------------------------------------------------- metadata
def test_manifest_matches_class():
    manifest = read_manifest(locate_manifest("crystal_sevennet:crystal_plugin.toml"))
    comp = manifest.component("potential", "sevennet")
    assert comp is not None
    for attr in ("consumes", "produces", "devices", "weights", "default_weights"):
        assert getattr(comp, attr) == getattr(SevenNetPotential, attr), attr
    for w in manifest.weights:
        path, entry = crystal.weights.resolve_weights(w.name)  # verifies the sha256
        assert path.is_file() and entry.licence == "MIT"


def test_core_contract():
    from crystal.testing.contracts import check_plugin

    check_plugin("potential", "sevennet", device="cpu")


def test_listing_does_not_import_torch():
    code = (
        "import sys; from crystal.plugins import list_plugins; "
        "names = [p.name for p in list_plugins('potential')]; assert 'sevennet' in names, names; "
        "assert 'torch' not in sys.modules and 'sevenn' not in sys.modules, 'imported torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_config_is_validated():
    with pytest.raises(ConfigError, match="unknown parameter"):
        SevenNetPotential.make_config(cutoff=6.0)
    with pytest.raises(ConfigError, match="batch_size"):
        SevenNetPotential.make_config(batch_size=0)
    with pytest.raises(ConfigError, match="weights"):
        SevenNetPotential.make_config(weights="sevennet-9")


def test_elements_match_checkpoint(pot):
    assert set(pot.model.type_map) == SEVENNET_0_ELEMENTS and len(SEVENNET_0_ELEMENTS) == 89
    assert pot.cutoff == 5.0


# ---------------------------------------------------------------------- parity with sevenn
def test_parity_with_sevenn_calculator(mixed, mixed_out):
    """Energy, forces and stress equal sevenn's own ASE calculator (same float32 model)."""
    from sevenn.calculator import SevenNetCalculator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calc = SevenNetCalculator("7net-0", device="cpu")
    out = mixed_out
    ptr = mixed.ptr.tolist()
    for b, atoms in enumerate(mixed.to_atoms()):
        atoms.calc = calc
        e = atoms.get_potential_energy()
        n = len(atoms)
        # measured: <= 4e-6 eV total, <= 6e-7 eV/Å, <= 3e-8 eV/Å³ (float32 sums in another order)
        assert abs(float(out.energy[b]) - e) / n < 1e-5, mixed.ids[b]
        np.testing.assert_allclose(out.forces[ptr[b] : ptr[b + 1]].numpy(), atoms.get_forces(), atol=1e-4)
        np.testing.assert_allclose(out.stress[b].numpy(), atoms.get_stress(voigt=False), atol=1e-6)


def test_weights_22may2024_match_sevenn(small):
    from sevenn.calculator import SevenNetCalculator

    pot_old = SevenNetPotential(weights="sevennet-0-22may2024", device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calc = SevenNetCalculator("7net-0_22May2024", device="cpu")
    out = pot_old.compute(small, stress=False)
    ptr = small.ptr.tolist()
    for b, atoms in enumerate(small.to_atoms()):
        atoms.calc = calc
        assert float(out.energy[b]) == pytest.approx(atoms.get_potential_energy(), abs=1e-4)
        np.testing.assert_allclose(out.forces[ptr[b] : ptr[b + 1]].numpy(), atoms.get_forces(), atol=1e-4)


# ---------------------------------------------------------------------- batching
def test_batched_equals_one_by_one(mixed, mixed_out):
    pot2 = SevenNetPotential(device="cpu", batch_size=2)  # 3 chunks
    chunked = pot2.compute(mixed)
    ptr = mixed.ptr.tolist()
    for b in range(len(mixed)):
        single = pot2.compute(mixed.select([b]))
        for out in (mixed_out, chunked):
            assert float(out.energy[b]) == pytest.approx(float(single.energy[0]), abs=1e-4)
            torch.testing.assert_close(out.forces[ptr[b] : ptr[b + 1]], single.forces, atol=1e-4, rtol=0)
            torch.testing.assert_close(out.stress[b], single.stress[0], atol=1e-6, rtol=0)


def test_float64_agrees_with_float32(pot, pot64, small):
    # measured 3.5e-6 eV, 1.2e-6 eV/Å
    assert_outputs_close(pot.compute(small), pot64.compute(small), atol=1e-4, rtol=0, stress_atol=1e-6)


# ---------------------------------------------------------------------- physics
def test_forces_match_finite_differences(pot64, small):
    assert_forces_match_finite_differences(pot64, small.select([0, 1]), delta=1e-4, atol=1e-5, max_atoms=3)


def test_stress_matches_finite_differences(pot64, mixed):
    sub = mixed.select([2, 3])  # NaCl, and LiFePO4 with a left-handed cell
    assert float(torch.linalg.det(sub.lattices[1])) < 0
    assert_stress_matches_finite_differences(pot64, sub, delta=1e-4, atol=1e-6)


def test_symmetries_extensivity_and_dtypes(pot, small):
    """Rotation, translation, permutation, a 1x2x1 supercell, float32/float64 requests, empty batch
    (float32 model: tolerances from float32 round-off)."""
    check_potential_symmetries(
        pot,
        small,
        atol=1e-4,
        rtol=0,
        stress_atol=1e-6,
        supercell_reps=(1, 2, 1),
        supercell_atol=3e-4,
        supercell_stress_atol=1e-5,
        seed=7,
    )


def test_supercell_extensivity(pot, small):
    sub = small.select([1, 2])  # Cu (4 atoms), NaCl (8 atoms)
    assert_supercell_extensive(pot, sub, (2, 2, 2), atol=5e-4, rtol=0, forces_atol=1e-4, stress_atol=1e-5)


# ---------------------------------------------------------------------- errors
def _one(z: list[int], frac: list[list[float]], a: float = 4.0) -> CrystalBatch:
    return CrystalBatch(
        atomic_numbers=torch.tensor(z),
        frac_coords=torch.tensor(frac, dtype=torch.float64),
        lattices=(a * torch.eye(3, dtype=torch.float64))[None],
        num_atoms=torch.tensor([len(z)]),
        ids=["x"],
    )


def test_uncovered_element_raises(pot):
    with pytest.raises(StructureError, match=r"does not cover element\(s\) Po, Fm"):
        pot.compute(_one([84, 100, 8], [[0, 0, 0], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]]))


def test_empty_structure_and_nan_raise(pot, small):
    empty = CrystalBatch(
        atomic_numbers=torch.zeros(0, dtype=torch.long),
        frac_coords=torch.zeros((0, 3), dtype=torch.float64),
        lattices=(4.0 * torch.eye(3, dtype=torch.float64))[None],
        num_atoms=torch.tensor([0]),
        ids=["void"],
    )
    with pytest.raises(StructureError, match="'void' have no atoms"):
        pot.compute(CrystalBatch.concat([small.select([1]), empty]))
    with pytest.raises(StructureError, match="NaN or inf coordinates"):
        pot.compute(_one([14, 14], [[0, 0, 0], [float("nan"), 0.25, 0.25]]))


def test_sha256_mismatch_raises(monkeypatch, tmp_path):
    real_path, entry = crystal.weights.resolve_weights("sevennet-0")
    corrupted = tmp_path / real_path.name
    shutil.copyfile(real_path, corrupted)
    with open(corrupted, "r+b") as fh:
        fh.seek(100_000)
        byte = fh.read(1)
        fh.seek(100_000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    fake = entry.model_copy(update={"file": str(corrupted)})
    monkeypatch.setattr(crystal.weights, "find_weights", lambda name: fake)
    with pytest.raises(WeightsError, match="sha256"):
        SevenNetPotential(device="cpu")
