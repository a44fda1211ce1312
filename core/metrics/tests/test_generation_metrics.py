"""Generation metrics (crystal_metrics) against values computed by hand on small cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pymatgen.core import Composition, Lattice, Structure

from crystal.batch import CrystalBatch
from crystal.errors import ConfigError, CrystalError
from crystal_metrics import (
    composition_validity,
    compute_coverage,
    coverage_cutoffs,
    csp_metrics,
    generation_metrics,
    smact_validity,
    structure_validity,
    sun_metrics,
)
from crystal_metrics._parallel import guarded_map
from crystal_metrics.fingerprints import composition_fingerprint, scale_composition, structure_fingerprint


def cscl_nacl(a: float = 4.0) -> Structure:
    """NaCl in the CsCl arrangement (simple cubic, 2 atoms)."""
    return Structure(Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def rocksalt(a: float = 5.64) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


# ----------------------------------------------------------------------------- CSP
def test_csp_rmse_of_a_displaced_atom_is_computed_by_hand():
    # Cl moved by d along x: after removing the mean translation the two sites are d/2 off,
    # rms = d/2, normalised by (V/N)^(1/3) = (64/2)^(1/3)
    ref = cscl_nacl()
    d = 0.1
    moved = ref.copy()
    moved.translate_sites([1], [d, 0, 0], frac_coords=False)
    expected = (d / 2) / (64 / 2) ** (1 / 3)
    res = csp_metrics([[rocksalt(), moved, ref.copy()]], [ref])
    assert res["k"]["1"] == {"match_rate": 0.0, "rmse": None, "num_matched": 0}  # rock salt ≠ CsCl type
    assert res["k"]["3"]["match_rate"] == 1.0
    assert res["k"]["3"]["rmse"] == pytest.approx(0.0, abs=1e-8)  # the exact copy is the best sample
    two = csp_metrics([[rocksalt(), moved, ref.copy()]], [ref], ks=[2])
    assert two["k"]["2"]["rmse"] == pytest.approx(expected, rel=1e-6)
    assert two["per_reference"][0]["first_match"] == 1


def test_csp_match_rate_averages_over_test_structures_and_rmse_over_matched_ones():
    a, b = cscl_nacl(4.0), rocksalt()
    moved = a.copy()
    moved.translate_sites([1], [0.2, 0, 0], frac_coords=False)
    res = csp_metrics([[moved], [a.copy()]], [a, b], ks=[1])  # second test structure gets a wrong sample
    assert res["k"]["1"]["match_rate"] == 0.5
    assert res["k"]["1"]["rmse"] == pytest.approx(0.1 / 32 ** (1 / 3), rel=1e-6)
    assert res["num_reference"] == 2 and res["num_samples"] == {"min": 1, "max": 1, "used": 1}


def test_csp_skips_invalid_samples_like_cdvae():
    # StructureMatcher scales volumes, so a cell shrunk to 0.43 Å bonds still "matches";
    # CDVAE/DiffCSP only match valid samples
    ref = cscl_nacl()
    tiny = cscl_nacl(0.5)
    assert csp_metrics([[tiny]], [ref])["k"]["1"]["match_rate"] == 0.0
    loose = csp_metrics([[tiny]], [ref], require_valid=False)
    assert loose["k"]["1"]["match_rate"] == 1.0


def test_csp_parallel_equals_serial():
    ref = cscl_nacl()
    moved = ref.copy()
    moved.translate_sites([0], [0.05, 0.02, 0], frac_coords=False)
    other = rocksalt()
    serial = csp_metrics([[moved], [other]], [ref, other])
    parallel = csp_metrics([[moved], [other]], [ref, other], workers=2)
    assert serial["k"]["1"]["match_rate"] == 1.0
    assert serial["k"] == parallel["k"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"ks": [0]}, "k must be >= 1"), ({"ks": [5]}, "no reference structure has more than 1")],
)
def test_csp_bad_k_is_a_clear_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        csp_metrics([[cscl_nacl()]], [cscl_nacl()], **kwargs)


def test_csp_mismatched_lengths_are_a_clear_error():
    with pytest.raises(ConfigError, match="2 lists of samples for 1 reference"):
        csp_metrics([[cscl_nacl()], []], [cscl_nacl()])


# ----------------------------------------------------------------------------- validity
def test_structural_validity_cutoff_volume_and_self_images():
    close = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.08, 0, 0]])  # 0.4 Å apart
    apart = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.12, 0, 0]])  # 0.6 Å apart
    # across the periodic boundary: 0.98 → 0.1 Å from the atom at 0 (minimum image)
    wrapped = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.98, 0, 0]])
    flat = Structure(Lattice([[5, 0, 0], [0, 5, 0], [0, 0, 0.003]]), ["Na"], [[0, 0, 0]])  # 0.075 Å^3
    # one atom with a 0.3 Å lattice vector: no two distinct atoms, volume 2.7 Å^3 -> valid (CDVAE)
    needle = Structure(Lattice([[0.3, 0, 0], [0, 3, 0], [0, 0, 3]]), ["C"], [[0, 0, 0]])
    got = structure_validity([close, apart, wrapped, flat, needle]).tolist()
    assert got == [False, True, False, False, True]


def test_structural_validity_agrees_with_pymatgen_distance_matrix():
    rng = np.random.default_rng(0)
    structures = []
    for _ in range(30):
        lat = Lattice.from_parameters(*rng.uniform(2.0, 4.0, 3), *rng.uniform(60, 120, 3))
        n = int(rng.integers(2, 6))
        structures.append(Structure(lat, ["Si"] * n, rng.random((n, 3))))
    got = structure_validity(structures).tolist()
    for s, ok in zip(structures, got, strict=True):
        d = s.distance_matrix + np.eye(len(s)) * 10.5
        assert ok == bool(d.min() >= 0.5 and s.volume >= 0.1)
    assert 0 < sum(got) < len(got)  # the sample exercises both outcomes


def test_structural_validity_rejects_nan():
    batch = CrystalBatch.from_structures([cscl_nacl(), cscl_nacl()])
    batch.frac_coords[0, 0] = math.nan
    assert structure_validity(batch).tolist() == [False, True]


def test_smact_validity_cases():
    assert smact_validity(("Na", "Cl"), (1, 1))
    assert not smact_validity(("Na", "Cl"), (1, 2))  # Na+ and one Cl state cannot balance NaCl2
    assert smact_validity(("Fe", "Ni"), (1, 3))  # all metals: an alloy counts as valid
    assert smact_validity(("C",), (1,))  # elemental crystals are valid
    assert smact_validity(("Fe", "O"), (2, 3))  # Fe(3+)2 O(2-)3
    assert not smact_validity(("Fe", "O"), (3, 4))  # Fe3O4 needs mixed valence: one state per element cannot
    nacl2 = Structure(Lattice.cubic(6.0), ["Na", "Cl", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0]])
    na2cl2 = Structure(
        Lattice.cubic(6.0), ["Na", "Na", "Cl", "Cl"], [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0.5, 0.5], [0, 0, 0.5]]
    )
    assert composition_validity([rocksalt(), nacl2, na2cl2]).tolist() == [True, False, True]


def test_smact_oxidation_state_lists():
    # SMACT's original lists (what CDVAE/DiffCSP ran with) accept KAlO3; SMACT >= 3's ICSD-2024 default does not
    assert smact_validity(("Al", "K", "O"), (1, 1, 3))
    assert not smact_validity(("Al", "K", "O"), (1, 1, 3), oxidation_states="icsd24")


@pytest.mark.slow
@pytest.mark.shared_data
def test_perov5_test_compositions_cap_the_csp_match_rate_at_diffcsps_number(shared_data):
    # CSP only matches valid samples and a sample has its test structure's composition, so
    # the fraction of SMACT-valid test compositions caps the match rate: 98.60 %, exactly
    # DiffCSP's published Perov-5 match rate at k = 20 (Jiao et al. 2023, Table 1)
    import csv
    import sys
    from collections import Counter

    csv.field_size_limit(sys.maxsize)
    with (shared_data / "perov_5" / "test.csv").open() as fh:
        formulas = Counter(row["formula"] for row in csv.DictReader(fh))
    valid = 0
    for formula, n in formulas.items():
        comp = Composition(formula)
        zs = [el.Z for el, amount in comp.items() for _ in range(int(amount))]
        batch = CrystalBatch(
            atomic_numbers=torch.tensor(zs),
            frac_coords=torch.zeros((len(zs), 3), dtype=torch.float64),
            lattices=torch.eye(3, dtype=torch.float64)[None] * 4.0,
            num_atoms=torch.tensor([len(zs)]),
        )
        valid += n * int(composition_validity(batch)[0])
    assert round(100 * valid / sum(formulas.values()), 2) == 98.60


# ----------------------------------------------------------------------------- fingerprints
def test_rocksalt_fingerprints_by_hand():
    fp = structure_fingerprint(rocksalt())
    assert fp.shape == (61,)
    # layout: CN 1 (wt + 1 motif), CN 2 (wt + 5), CN 3 (wt + 3), CN 4 (wt + 5), CN 5 (wt + 3) = 22 entries;
    # CN 6 starts at 22: wt, hexagonal planar, octahedral, pentagonal pyramidal
    assert fp[22] == pytest.approx(1.0)
    assert fp[24] == pytest.approx(1.0, abs=1e-6)  # perfect octahedra
    assert np.delete(fp, [22, 23, 24, 25]).max() == pytest.approx(0.0, abs=1e-9)
    comp = composition_fingerprint(Composition("NaCl")).reshape(22, 6)
    # "Number" (Z): min 11, max 17, range 6, mean 14, mean |Z - 14| = 3, mode (tie -> smaller) 11
    np.testing.assert_allclose(comp[0], [11, 17, 6, 14, 3, 11])
    comp2 = composition_fingerprint({11: 1.0, 17: 3.0}).reshape(22, 6)
    # weights 1/4, 3/4: mean 15.5, avg_dev 1/4*4.5 + 3/4*1.5 = 2.25, mode Cl (most abundant) = 17
    np.testing.assert_allclose(comp2[0], [11, 17, 6, 15.5, 2.25, 17])


def test_composition_scaling_maps_missing_data_to_zero():
    fp = composition_fingerprint(Composition("Og"))  # no Magpie data for Og
    assert np.isnan(fp).all()
    assert (scale_composition(fp) == 0).all()


# ----------------------------------------------------------------------------- coverage
def test_coverage_by_hand():
    gen_s = np.array([[0.0], [1.0]])
    ref_s = np.array([[0.05], [0.5], [3.0]])
    gen_c = np.zeros((2, 1))
    ref_c = np.array([[0.0], [0.0], [5.0]])
    # recall: ref 0 (s 0.05, c 0) yes; ref 1 (s 0.5 ≥ 0.2) no; ref 2 (c 5 > 4) no -> 1/3
    # precision: gen 0 yes (0.05); gen 1 nearest 0.5 -> no; over 4 generated in total -> 1/4
    out = compute_coverage(gen_s, gen_c, ref_s, ref_c, struc_cutoff=0.2, comp_cutoff=4.0, num_generated=4)
    assert out["cov_recall"] == pytest.approx(1 / 3)
    assert out["cov_precision"] == pytest.approx(1 / 4)
    assert out["amsd_recall"] == pytest.approx((0.05 + 0.5 + 2.0) / 3)
    assert out["amsd_precision"] == pytest.approx((0.05 + 0.5) / 2)
    assert coverage_cutoffs("perov_5") == {"struc": 0.2, "comp": 4.0}  # CDVAE's COV_Cutoffs
    assert coverage_cutoffs("mp20") == {"struc": 0.4, "comp": 10.0}
    with pytest.raises(ConfigError, match="unknown data set 'qm9'"):
        coverage_cutoffs("qm9")


def test_generation_metrics_identical_sets_and_wasserstein_by_hand():
    a, b = rocksalt(5.64), rocksalt(6.0)
    si = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])
    same = generation_metrics([a, si], [a, si], dataset="perov_5")
    assert same["cov_recall"] == 1.0 and same["cov_precision"] == 1.0
    assert same["wdist_density"] == pytest.approx(0.0) and same["wdist_num_elems"] == 0.0
    assert same["valid"] == 1.0
    # one generated crystal against two references: W1({x}, {y1, y2}) = (|x-y1| + |x-y2|) / 2
    out = generation_metrics([a], [b, si])
    expected = (abs(a.density - b.density) + abs(a.density - si.density)) / 2
    assert out["wdist_density"] == pytest.approx(expected, rel=1e-6)
    assert out["wdist_num_elems"] == pytest.approx(0.5)  # {2} vs {2, 1}
    assert out["cov_recall"] is None  # no cut-offs without a data set
    bad = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.08, 0, 0]])
    mixed = generation_metrics([a, bad], [a])
    assert mixed["struct_valid"] == 0.5 and mixed["wdist_samples"] == 1
    with pytest.raises(ConfigError, match="n_samples = 5 but only 1"):
        generation_metrics([a, bad], [a], n_samples=5)


# ----------------------------------------------------------------------------- S.U.N.
def test_sun_with_lennard_jones():
    from crystal.testing import LennardJones

    lj = LennardJones(device="cpu", cutoff=6.0)
    argon = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.3), ["Ar"], [[0, 0, 0]])
    strained = argon.copy()
    strained.scale_lattice(argon.volume * 1.05)
    neon = Structure(Lattice.cubic(3.0), ["Ne"], [[0, 0, 0]])
    res = sun_metrics([strained, argon.copy(), neon], lj, [argon], train=[rocksalt()], max_steps=300, fmax=0.01)
    per = res["per_structure"]
    # both argon crystals relax to the reference minimum: on the hull, the second is a duplicate
    assert per[0]["e_above_hull"] == pytest.approx(0.0, abs=1e-3) and per[0]["stable"]
    assert per[0]["unique"] is True and per[1]["unique"] is False
    assert per[0]["novel"] is True  # no argon in the training set
    assert per[2]["e_above_hull"] is None and "Ne" in per[2]["error"]
    assert res["sun_fraction"] == pytest.approx(1 / 3)
    again = sun_metrics([argon.copy()], lj, [argon], train=[argon], max_steps=50)
    assert again["novel_fraction"] == 0.0 and again["sun_fraction"] == 0.0


# ----------------------------------------------------------------------------- robustness
def test_guarded_map_survives_exceptions_and_dead_workers():
    import os

    assert guarded_map(math.sqrt, [4.0, -1.0, 9.0])[0] == (2.0, None)
    out = guarded_map(math.sqrt, [4.0, -1.0, 9.0], workers=2)
    assert out[0] == (2.0, None) and out[2] == (3.0, None)
    assert out[1][0] is None and "ValueError" in out[1][1]
    died = guarded_map(os._exit, [3, 4], workers=2)
    assert all(v is None and "died" in e for v, e in died)
    with pytest.raises(CrystalError, match="die before doing any work"):
        guarded_map(os._exit, [3, 4, 5], workers=2)


def test_densities_match_pymatgen():
    from crystal_metrics.generation import densities, num_elements

    structures = [rocksalt(), cscl_nacl(), Structure(Lattice.cubic(3.0), ["Fe"], [[0, 0, 0]])]
    batch = CrystalBatch.from_structures(structures)
    np.testing.assert_allclose(densities(batch).numpy(), [s.density for s in structures], rtol=1e-6)
    assert num_elements(batch).tolist() == [2, 2, 1]
    assert torch.is_tensor(structure_validity(batch))
