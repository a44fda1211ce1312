from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase.build import bulk
from pymatgen.core import Lattice, Structure

from crystal import CrystalBatch, StructureError


def _skewed() -> Structure:
    return Structure(
        Lattice.from_parameters(3.1, 4.2, 5.3, 71, 97, 112),
        ["Li", "O", "O"],
        [[0.1, 0.2, 0.3], [0.5, 0.55, 0.6], [0.9, 0.1, 0.75]],
        site_properties={"magmom": [0.5, -1.0, 2.0], "label": ["a", "b", "c"], "forces": [[0, 0, 1]] * 3},
        properties={"energy": -12.5, "note": "hand-made"},
    )


def test_pymatgen_round_trip_is_exact(pmg_structures):
    structures = [*pmg_structures, _skewed()]
    batch = CrystalBatch.from_structures(structures, ids=[f"s{i}" for i in range(len(structures))])
    assert batch.num_crystals == len(structures)
    assert batch.num_nodes == sum(len(s) for s in structures)
    back = batch.to_structures()
    for a, b in zip(structures, back):
        np.testing.assert_array_equal(a.lattice.matrix, b.lattice.matrix)  # orientation kept
        np.testing.assert_array_equal(a.frac_coords, b.frac_coords)
        assert [s.specie.symbol for s in a] == [s.specie.symbol for s in b]
        assert a.properties == b.properties
        for key, values in a.site_properties.items():
            np.testing.assert_array_equal(np.asarray(values), np.asarray(b.site_properties[key]))


def test_site_properties_split_numeric_and_other():
    batch = CrystalBatch.from_structures([_skewed()])
    assert set(batch.atom_properties) == {"magmom", "forces"}
    assert batch.atom_properties["forces"].shape == (3, 3)
    assert batch.info[0]["site_properties"] == {"label": ["a", "b", "c"]}


def test_property_present_in_some_structures_only_is_kept():
    s1, s2 = _skewed(), _skewed()
    s2.remove_site_property("magmom")
    back = CrystalBatch.from_structures([s1, s2]).to_structures()
    assert back[0].site_properties["magmom"] == [0.5, -1.0, 2.0]
    assert "magmom" not in back[1].site_properties


def test_ase_round_trip_is_exact():
    a = bulk("Cu", "fcc", a=3.6) * (2, 1, 1)
    a.rattle(0.05, seed=3)
    a.set_initial_magnetic_moments(np.arange(len(a), dtype=float))
    a.info["tag"] = "x"
    b = bulk("NaCl", "rocksalt", a=5.6, orthorhombic=True)
    b.pbc = [True, True, False]
    batch = CrystalBatch.from_atoms([a, b])
    for orig, back in zip((a, b), batch.to_atoms()):
        np.testing.assert_array_equal(orig.cell[:], back.cell[:])
        np.testing.assert_allclose(orig.positions, back.positions, atol=1e-12)
        np.testing.assert_array_equal(orig.numbers, back.numbers)
        np.testing.assert_array_equal(orig.pbc, back.pbc)
        assert orig.info == back.info
    np.testing.assert_array_equal(batch.to_atoms()[0].get_initial_magnetic_moments(), a.get_initial_magnetic_moments())


def test_pymatgen_to_ase_consistency(pmg_structures):
    from pymatgen.io.ase import AseAtomsAdaptor

    batch = CrystalBatch.from_structures(pmg_structures)
    for s, atoms in zip(pmg_structures, batch.to_atoms()):
        ref = AseAtomsAdaptor.get_atoms(s)
        np.testing.assert_allclose(atoms.positions, ref.positions, atol=1e-10)
        np.testing.assert_allclose(atoms.cell[:], ref.cell[:], atol=1e-12)


def test_disordered_structure_is_rejected():
    s = Structure(Lattice.cubic(4.0), [{"Fe": 0.5, "Co": 0.5}], [[0, 0, 0]])
    with pytest.raises(StructureError, match="partially occupied"):
        CrystalBatch.from_structures([s])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_to_select_concat_split(pmg_structures, dtype):
    batch = CrystalBatch.from_structures(pmg_structures, ids=[str(i) for i in range(8)]).to(dtype=dtype)
    assert batch.frac_coords.dtype == dtype and batch.atomic_numbers.dtype == torch.long
    sub = batch.select([5, 1, 3])
    assert sub.ids == ["5", "1", "3"]
    assert torch.equal(sub.num_atoms, batch.num_atoms[[5, 1, 3]])
    for k, i in enumerate([5, 1, 3]):
        lo, hi = int(batch.ptr[i]), int(batch.ptr[i + 1])
        slo, shi = int(sub.ptr[k]), int(sub.ptr[k + 1])
        assert torch.equal(sub.frac_coords[slo:shi], batch.frac_coords[lo:hi])
    mask = torch.zeros(8, dtype=torch.bool)
    mask[[0, 7]] = True
    assert batch.select(mask).ids == ["0", "7"]
    parts = list(batch.split(3))
    assert [len(p) for p in parts] == [3, 3, 2]
    again = CrystalBatch.concat(parts)
    assert torch.equal(again.frac_coords, batch.frac_coords)
    assert torch.equal(again.batch, batch.batch)


def test_cart_coords_and_volumes(pmg_structures):
    batch = CrystalBatch.from_structures(pmg_structures)
    cart = batch.cart_coords.numpy()
    ref = np.concatenate([s.cart_coords for s in pmg_structures])
    np.testing.assert_allclose(cart, ref, atol=1e-10)
    np.testing.assert_allclose(batch.volumes.numpy(), [s.volume for s in pmg_structures], rtol=1e-12)


def test_min_distances_match_pymatgen(pmg_structures):
    batch = CrystalBatch.from_structures(pmg_structures)
    ours = batch.min_distances().numpy()
    for d, s in zip(ours, pmg_structures):
        dm = s.distance_matrix + np.eye(len(s)) * 1e9
        ref = min(dm.min(), min(s.lattice.abc)) if len(s) > 1 else min(s.lattice.abc)
        assert d == pytest.approx(ref, abs=1e-8)


def test_validate_reports_each_problem():
    good = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    close = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.01, 0, 0]])
    nan = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    batch = CrystalBatch.from_structures([good, close, nan])
    batch.frac_coords[4, 1] = math.nan
    reasons = batch.validate(min_distance=0.5)
    assert reasons[0] is None
    assert "closer than 0.5" in reasons[1]
    assert "NaN" in reasons[2]


def test_shape_errors_are_clear():
    with pytest.raises(StructureError, match="num_atoms sums"):
        CrystalBatch(
            atomic_numbers=torch.tensor([1, 1]),
            frac_coords=torch.zeros(2, 3),
            lattices=torch.eye(3)[None],
            num_atoms=torch.tensor([3]),
        )


def test_empty_batch():
    b = CrystalBatch.from_structures([])
    assert len(b) == 0 and b.num_nodes == 0
    assert b.to_structures() == []
