"""Tests of the crystal-chgnet potential plugin (CPU; ~30 s on 2 cores).

CHGNet runs in float32, so finite-difference and symmetry tolerances are set from
measured float32 round-off (see the comments next to each tolerance), not float64 ones.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("chgnet")

import crystal.weights
from crystal.batch import CrystalBatch
from crystal.errors import ConfigError, StructureError, WeightsError
from crystal.manifest import locate_manifest, read_manifest
from crystal.testing import (
    assert_forces_match_finite_differences,
    assert_stress_matches_finite_differences,
    assert_supercell_extensive,
    check_potential_symmetries,
)
from crystal_chgnet.potential import CHGNetPotential
from crystal_sim.relax import relax

PYMATGEN_STRUCTURES = Path(__import__("pymatgen.core").core.__file__).parent.parent / "util" / "structures"


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def pot() -> CHGNetPotential:
    torch.manual_seed(0)
    return CHGNetPotential(device="cpu")


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


def _pmg(name: str):
    from pymatgen.core import Structure

    return Structure.from_file(PYMATGEN_STRUCTURES / f"{name}.json")


@pytest.fixture(scope="module")
def small() -> CrystalBatch:
    """Si (8 atoms), Cu (4), NaCl (8), rattled."""
    return CrystalBatch.from_atoms(_bulk_atoms(), ids=["Si", "Cu", "NaCl"])


@pytest.fixture(scope="module")
def mixed() -> CrystalBatch:
    """Five different crystals: rattled Si/Cu/NaCl, LiFePO4 (28 atoms, left-handed cell), SrTiO3."""
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = [*_bulk_atoms(), *(AseAtomsAdaptor.get_atoms(_pmg(n)) for n in ("LiFePO4", "SrTiO3"))]
    return CrystalBatch.from_atoms(atoms, ids=["Si", "Cu", "NaCl", "LiFePO4", "SrTiO3"])


@pytest.fixture(scope="module")
def mixed_out(pot, mixed):
    return pot.compute(mixed)


@pytest.fixture(scope="module")
def reference_calculator():
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator

    with contextlib.redirect_stdout(io.StringIO()):
        return CHGNetCalculator(model=CHGNet.load(verbose=False, use_device="cpu"), use_device="cpu")


# ---------------------------------------------------------------------- metadata
def test_manifest_matches_class():
    manifest = read_manifest(locate_manifest("crystal_chgnet:crystal_plugin.toml"))
    comp = manifest.component("potential", "chgnet")
    assert comp is not None
    for attr in ("consumes", "produces", "devices", "weights", "default_weights"):
        assert getattr(comp, attr) == getattr(CHGNetPotential, attr), attr
    for w in manifest.weights:
        path, entry = crystal.weights.resolve_weights(w.name)  # verifies the sha256
        assert path.is_file() and entry.licence == "BSD-3-Clause-LBNL"


def test_core_contract():
    from crystal.testing.contracts import check_plugin

    check_plugin("potential", "chgnet", device="cpu")


def test_listing_does_not_import_torch():
    code = (
        "import sys; from crystal.plugins import list_plugins; "
        "names = [p.name for p in list_plugins('potential')]; assert 'chgnet' in names, names; "
        "assert 'torch' not in sys.modules and 'chgnet' not in sys.modules, 'imported torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_config_is_validated():
    with pytest.raises(ConfigError, match="unknown parameter"):
        CHGNetPotential.make_config(cutoff=5.0)
    with pytest.raises(ConfigError, match="batch_size"):
        CHGNetPotential.make_config(batch_size=0)
    with pytest.raises(ConfigError, match="weights"):
        CHGNetPotential.make_config(weights="chgnet-9.9")


# ---------------------------------------------------------------------- parity with chgnet
def test_parity_with_chgnet_calculator(pot, mixed, mixed_out, reference_calculator):
    """Energy, forces and stress equal chgnet's own ASE calculator (same float32 model)."""
    out = mixed_out
    ptr = mixed.ptr.tolist()
    for b, atoms in enumerate(mixed.to_atoms()):
        atoms.calc = reference_calculator
        e = atoms.get_potential_energy()
        f = atoms.get_forces()
        s = atoms.get_stress(voigt=False)
        # chgnet divides by the signed cell volume: its stress has the wrong sign for
        # left-handed cells (LiFePO4 here); the plugin uses |V| (checked by finite differences)
        s = s * np.sign(np.linalg.det(atoms.cell[:]))
        assert abs(float(out.energy[b]) - e) < 1e-4, mixed.ids[b]  # measured: 0 eV
        np.testing.assert_allclose(out.forces[ptr[b] : ptr[b + 1]].numpy(), f, atol=1e-4)  # measured <= 2e-5
        np.testing.assert_allclose(out.stress[b].numpy(), s, atol=1e-6)  # measured <= 2e-7 eV/Å³


def test_weights_020_match_chgnet(small):
    from chgnet.model import CHGNet

    pot020 = CHGNetPotential(weights="chgnet-0.2.0", device="cpu")
    assert pot020.cutoff == 5.0
    with contextlib.redirect_stdout(io.StringIO()):
        model = CHGNet.load(model_name="0.2.0", verbose=False, use_device="cpu")
    ref = model.predict_structure(small.to_structures(), task="ef")
    out = pot020.compute(small, stress=False)
    ptr = small.ptr.tolist()
    for b, r in enumerate(ref):
        assert float(out.energy[b]) == pytest.approx(float(r["e"]) * int(small.num_atoms[b]), abs=1e-4)
        np.testing.assert_allclose(out.forces[ptr[b] : ptr[b + 1]].numpy(), r["f"], atol=1e-4)


# ---------------------------------------------------------------------- batching
def test_batched_equals_one_by_one(mixed, mixed_out):
    pot2 = CHGNetPotential(device="cpu", batch_size=2)  # 3 chunks, different graph sizes
    chunked = pot2.compute(mixed)
    ptr = mixed.ptr.tolist()
    for b in range(len(mixed)):
        single = pot2.compute(mixed.select([b]))
        for out in (mixed_out, chunked):
            # float32 sums in another order: measured 0 eV, <= 5e-6 eV/Å, <= 2e-7 eV/Å³
            assert float(out.energy[b]) == pytest.approx(float(single.energy[0]), abs=1e-4)
            torch.testing.assert_close(out.forces[ptr[b] : ptr[b + 1]], single.forces, atol=1e-4, rtol=0)
            torch.testing.assert_close(out.stress[b], single.stress[0], atol=1e-6, rtol=0)


# ---------------------------------------------------------------------- physics
def test_forces_match_finite_differences(pot, small):
    # float32 energies (~1e-7 relative, a few 1e-6 eV at 40 eV) over 2*delta = 2e-3 Å give ~2e-3 eV/Å
    # of noise; measured max deviation 1.9e-3 eV/Å (9e-4 at delta = 3e-3)
    assert_forces_match_finite_differences(pot, small.select([0, 1]), delta=1e-3, atol=5e-3, max_atoms=3)


def test_stress_matches_finite_differences(pot, mixed):
    # includes LiFePO4, whose cell is left-handed (negative triple product)
    sub = mixed.select([0, 3])
    assert float(torch.linalg.det(sub.lattices[1])) < 0
    # measured max deviation 3e-5 eV/Å³ (stress entries up to 1.8e-2 eV/Å³)
    assert_stress_matches_finite_differences(pot, sub, delta=1e-3, atol=1e-4)


def test_symmetries_extensivity_and_dtypes(pot, small):
    """Rotation, translation, permutation, a 1x2x1 supercell, float32/float64 requests, empty batch.

    CHGNet runs in float32; tolerances are set from measured round-off: rotation 4e-6 eV,
    7e-6 eV/Å, 2e-7 eV/Å³; translation 2e-6 eV; permutation 4e-6 eV, 1.4e-5 eV/Å, 1.3e-7 eV/Å³.
    """
    check_potential_symmetries(
        pot,
        small,
        atol=1e-4,
        rtol=0,
        stress_atol=1e-6,
        supercell_reps=(1, 2, 1),
        supercell_atol=2e-4,
        supercell_stress_atol=1e-5,
        dtype_atol=1e-5,
        seed=7,
    )


def test_supercell_extensivity(pot, small):
    # energy 8x (float32 over 96 atoms: measured 1.5e-5 eV of 234 eV), stress unchanged (1e-7 eV/Å³),
    # every image of an atom feels the same force
    sub = small.select([1, 2])  # Cu (4 atoms), NaCl (8 atoms)
    assert_supercell_extensive(pot, sub, (2, 2, 2), atol=2e-4, rtol=0, forces_atol=1e-4, stress_atol=1e-5)


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
    with pytest.raises(StructureError, match=r"does not cover element\(s\) Fm"):
        pot.compute(_one([100, 8], [[0, 0, 0], [0.5, 0.5, 0.5]]))


def test_empty_structure_raises(pot, small):
    empty = CrystalBatch(
        atomic_numbers=torch.zeros(0, dtype=torch.long),
        frac_coords=torch.zeros((0, 3), dtype=torch.float64),
        lattices=(4.0 * torch.eye(3, dtype=torch.float64))[None],
        num_atoms=torch.tensor([0]),
        ids=["void"],
    )
    with pytest.raises(StructureError, match="'void' have no atoms"):
        pot.compute(CrystalBatch.concat([small.select([1]), empty]))


def test_nan_coordinates_raise(pot):
    with pytest.raises(StructureError, match="NaN or inf coordinates"):
        pot.compute(_one([14, 14], [[0, 0, 0], [float("nan"), 0.25, 0.25]]))


def test_isolated_atoms_error_or_warn(pot):
    lonely = _one([6], [[0.0, 0.0, 0.0]], a=12.0)  # nearest image 12 Å away, cutoff 6 Å
    with pytest.raises(StructureError, match="isolated atoms"):
        pot.compute(lonely)
    warn_pot = CHGNetPotential(device="cpu", on_isolated_atoms="warn")
    with pytest.warns(RuntimeWarning, match="isolated atoms"):
        out = warn_pot.compute(lonely)
    assert torch.isfinite(out.energy).all()


def test_sha256_mismatch_raises(monkeypatch, tmp_path):
    real_path, entry = crystal.weights.resolve_weights("chgnet-0.3.0")
    corrupted = tmp_path / real_path.name
    shutil.copyfile(real_path, corrupted)
    with open(corrupted, "r+b") as fh:
        fh.seek(1000)
        byte = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    fake = entry.model_copy(update={"file": str(corrupted)})
    monkeypatch.setattr(crystal.weights, "find_weights", lambda name: fake)
    with pytest.raises(WeightsError, match="sha256"):
        CHGNetPotential(device="cpu")


# ---------------------------------------------------------------------- relaxation
def test_core_relax_converges_and_lowers_energy(pot):
    from ase.build import bulk

    atoms = []
    for k, (a, scale) in enumerate(
        [
            (bulk("Si", "diamond", 5.43, cubic=True), 1.03),
            (bulk("NaCl", "rocksalt", 5.64), 0.97),
            (bulk("Cu", "fcc", 3.6, cubic=True), 1.02),
        ]
    ):
        a.set_cell(a.cell[:] * scale, scale_atoms=True)
        a.rattle(0.08, seed=10 + k)
        atoms.append(a)
    batch = CrystalBatch.from_atoms(atoms)
    e0 = pot.energy(batch)
    result = relax(pot, batch, fmax=0.1, max_steps=300)
    assert result.converged.all(), result.steps
    assert (result.energy < e0 - 1e-3).all(), (e0, result.energy)
    # converged cell rows |V σ / N| < fmax  =>  |σ| <~ fmax N / V (eV/Å³)
    bound = 0.1 * batch.num_atoms / result.batch.volumes
    assert (result.stress.abs().flatten(1).amax(dim=1) < 1.5 * bound).all()
