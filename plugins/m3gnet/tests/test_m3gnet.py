"""Tests of the ``m3gnet`` potential (CPU, one thread, small widths).

* golden parity with matgl 4.1.2 (``tests/golden``: a small random-weight M3GNet saved by matgl, and
  matgl's energies, forces and stresses on four crystals; see ``golden/make_golden.py``);
* symmetries, batching and finite differences on a fresh float64 model (crystal.testing);
* the basis functions and the triplet builder against independent references;
* loading errors, named weights declarations, and the real released weights when cached.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from crystal.batch import CrystalBatch
from crystal.errors import ConfigError, WeightsError
from crystal.testing import (
    assert_forces_match_finite_differences,
    assert_stress_matches_finite_differences,
    check_potential_symmetries,
)
from crystal.testing.contracts import check_declarations, check_potential

# isort: split
from crystal_m3gnet.model import (
    SphericalBesselBasis,
    polynomial_cutoff,
    spherical_bessel_roots,
    spherical_harmonics_m0,
    three_body_triplets,
)
from crystal_m3gnet.potential import MATGL_FOLDERS, WEIGHTS, M3GNetPotential

torch.set_num_threads(1)

GOLDEN = Path(__file__).parent / "golden"
SMALL = dict(dim_node_embedding=8, dim_edge_embedding=8, units=8, nblocks=2, max_n=3, max_l=3)


def _golden_batch() -> tuple[CrystalBatch, dict]:
    from ase import Atoms

    ref = json.loads((GOLDEN / "reference.json").read_text())
    atoms = [
        Atoms(numbers=s["numbers"], cell=s["cell"], positions=s["positions"], pbc=True)
        for s in ref["structures"].values()
    ]
    return CrystalBatch.from_atoms(atoms, ids=list(ref["structures"])).to(dtype=torch.float64), ref


def _crystals() -> CrystalBatch:
    from ase.build import bulk

    nacl = bulk("NaCl", "rocksalt", a=5.1)  # no neighbour at exactly the 5 Å cutoff (see README)
    nacl.rattle(0.05, seed=1)
    si = bulk("Si", "diamond", a=5.2)
    si.rattle(0.05, seed=2)
    return CrystalBatch.from_atoms([nacl, si], ids=["NaCl", "Si"]).to(dtype=torch.float64)


@pytest.fixture(scope="module")
def fresh() -> M3GNetPotential:
    return M3GNetPotential(elements=("Na", "Si", "Cl"), e0s={"Na": -1.0, "Si": -4.0, "Cl": -2.0}, device="cpu", **SMALL)


# ----------------------------------------------------------------------------------- golden parity
@pytest.mark.parametrize(
    ("precision", "e_rtol", "f_atol", "s_atol"),
    [("float32", 5e-7, 1e-6, 1e-7), ("float64", 1e-12, 1e-12, 1e-9)],
)
def test_matches_matgl_golden(precision, e_rtol, f_atol, s_atol):
    batch, ref = _golden_batch()
    # matgl's graph converters hold fractional coordinates and the cell in float32 even when the model
    # runs in float64: feed crystal the same rounded inputs
    batch = batch.with_positions(batch.frac_coords.float().double(), batch.lattices.float().double())
    pot = M3GNetPotential(matgl_model=GOLDEN / "m3gnet-small", dtype=precision, device="cpu")
    assert pot.config.elements == ("O", "Na", "Mg", "Si", "Cl", "Cu")  # matgl's element_types, sorted by Z
    out = pot.compute(batch)
    r = ref[precision]
    names = list(ref["structures"])
    energy = torch.tensor([r[n]["energy"] for n in names], dtype=torch.float64)
    forces = torch.tensor(np.concatenate([r[n]["forces"] for n in names]))
    stress = torch.tensor([r[n]["stress_voigt"] for n in names])
    voigt = out.stress[:, [0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
    assert ((out.energy - energy).abs() / energy.abs()).max() < e_rtol
    assert (out.forces - forces).abs().max() < f_atol
    assert (voigt - stress).abs().max() < s_atol
    assert forces.abs().max() > 0.03  # the fixture's forces are not ~0: the comparison means something


def test_golden_checkpoint_round_trip(tmp_path):
    """A converted matgl model saved as a crystal checkpoint loads back to the same numbers."""
    batch = _golden_batch()[0].select([3])
    pot = M3GNetPotential(matgl_model=GOLDEN / "m3gnet-small", device="cpu")
    digest = pot.save(tmp_path / "m.pt")
    again = M3GNetPotential(checkpoint=tmp_path / "m.pt", sha256=digest, device="cpu")
    assert "matgl_model" not in pot.checkpoint()["config"]
    torch.testing.assert_close(again.energy(batch), pot.energy(batch), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------- symmetries
def test_contract_and_symmetries(fresh):
    check_declarations(fresh)
    batch = _crystals()
    check_potential(fresh, batch, atol=1e-8, rtol=1e-8, fd_delta=1e-4, fd_atol=1e-6)
    check_potential_symmetries(fresh, batch, atol=1e-8, rtol=1e-8, supercell_reps=(2, 1, 1), dtype_atol=1e-5)


def test_forces_and_stress_match_finite_differences():
    # the golden model (matgl's numbers) in float64 on the triclinic two-element cell
    batch, _ = _golden_batch()
    tri = batch.select([3])
    pot = M3GNetPotential(matgl_model=GOLDEN / "m3gnet-small", device="cpu")
    assert_forces_match_finite_differences(pot, tri, delta=1e-4, atol=1e-7, max_atoms=2)
    assert_stress_matches_finite_differences(pot, tri, delta=1e-5, atol=1e-7)


def test_three_body_terms_matter(fresh):
    """The three-body cutoff changes the energy (a model that ignored triplets would not)."""
    batch = _crystals()
    other = M3GNetPotential(
        elements=("Na", "Si", "Cl"), e0s=dict(fresh.config.e0s), threebody_cutoff=2.0, device="cpu", **SMALL
    )
    # random weights make the three-body update small (~1e-3) but far above float64 round-off (~1e-15)
    assert (other.energy(batch) - fresh.energy(batch)).abs().min() > 1e-10


# ------------------------------------------------------------------------------ building blocks
def test_bessel_roots_and_basis():
    roots = spherical_bessel_roots(4, 3)
    # tabulated zeros of j_0, j_1, j_2, j_3 (Abramowitz & Stegun table 10.6)
    expected = [
        [math.pi, 2 * math.pi, 3 * math.pi],
        [4.493409458, 7.725251837, 10.904121659],
        [5.763459197, 9.095011330, 12.322940971],
        [6.987932001, 10.417118547, 13.698023153],
    ]
    np.testing.assert_allclose(np.array(roots), expected, rtol=1e-9)
    basis = SphericalBesselBasis(3, 3, 5.0).double()
    r = torch.linspace(0.5, 5.0, 200, dtype=torch.float64)
    values = basis(r)
    assert values.shape == (200, 9)
    assert values[-1].abs().max() < 1e-6  # every j_l(z_ln r/rc) vanishes at the cutoff
    # orthonormality on [0, rc] with weight r² (the normalisation sqrt(2/rc³)/|j_{l+1}(z)|) for l = 0
    x = torch.linspace(1e-4, 5.0, 20001, dtype=torch.float64)
    b = basis(x)[:, :3]
    gram = torch.trapezoid(b[:, :, None] * b[:, None, :] * (x**2)[:, None, None], x, dim=0)
    torch.testing.assert_close(gram, torch.eye(3, dtype=torch.float64), atol=2e-3, rtol=0)


def test_spherical_harmonics_and_cutoff():
    c = torch.linspace(-1, 1, 11, dtype=torch.float64)
    y = spherical_harmonics_m0(c, 4)
    ref = torch.stack(
        [
            torch.full_like(c, 0.5 / math.sqrt(math.pi)),
            math.sqrt(3 / (4 * math.pi)) * c,
            math.sqrt(5 / (4 * math.pi)) * 0.5 * (3 * c**2 - 1),
            math.sqrt(7 / (4 * math.pi)) * 0.5 * (5 * c**3 - 3 * c),
        ],
        dim=1,
    )
    torch.testing.assert_close(y, ref)
    r = torch.tensor([0.0, 2.0, 4.0, 4.5], dtype=torch.float64, requires_grad=True)
    fc = polynomial_cutoff(r, 4.0)
    torch.testing.assert_close(fc.detach(), torch.tensor([1.0, 0.5, 0.0, 0.0], dtype=torch.float64))
    (g,) = torch.autograd.grad(fc.sum(), r)
    assert abs(float(g[2])) < 1e-12


def test_triplets_match_brute_force():
    gen = torch.Generator().manual_seed(0)
    center = torch.randint(0, 5, (30,), generator=gen)
    keep = torch.rand(30, generator=gen) < 0.7
    ij, ik = three_body_triplets(center, keep, 5)
    got = sorted(zip(ij.tolist(), ik.tolist(), strict=True))
    want = sorted(
        (a, b) for a in range(30) for b in range(30) if a != b and keep[a] and keep[b] and center[a] == center[b]
    )
    assert got == want


# --------------------------------------------------------------------------------- loading
def test_config_errors():
    with pytest.raises(ConfigError, match="threebody_cutoff"):
        M3GNetPotential(elements=("Si",), cutoff=3.0, device="cpu")
    with pytest.raises(ConfigError, match="one of matgl_model"):
        M3GNetPotential(matgl_model=GOLDEN / "m3gnet-small", weights="m3gnet-mp-2021.2.8-pes", device="cpu")
    with pytest.raises(ConfigError, match="dim_node_embedding"):  # architecture comes from the file
        M3GNetPotential(matgl_model=GOLDEN / "m3gnet-small", dim_node_embedding=32, device="cpu")
    with pytest.raises(ConfigError, match="unknown"):
        M3GNetPotential(elements=("Si",), bogus=1, device="cpu")


def test_unsupported_matgl_layouts_are_refused(tmp_path):
    src = GOLDEN / "m3gnet-small"
    for key, value in (("use_phi", True), ("rbf_type", "Gaussian"), ("is_intensive", True)):
        folder = tmp_path / key
        folder.mkdir()
        data = json.loads((src / "model.json").read_text())
        data["kwargs"]["model"]["init_args"][key] = value
        (folder / "model.json").write_text(json.dumps(data))
        (folder / "state.pt").write_bytes((src / "state.pt").read_bytes())
        with pytest.raises(WeightsError, match=key):
            M3GNetPotential(matgl_model=folder, device="cpu")
    with pytest.raises(WeightsError, match=r"model\.json is missing"):
        M3GNetPotential(matgl_model=tmp_path, device="cpu")


def test_named_weights_declarations():
    from importlib import resources

    assert set(WEIGHTS) == set(MATGL_FOLDERS)
    for name in WEIGHTS:
        entry = WEIGHTS.entry(name)
        assert entry.file.startswith("https://raw.githubusercontent.com/materialsvirtuallab/matgl/")
        assert entry.file.endswith(f"/pretrained_models/{MATGL_FOLDERS[name]}/state.pt")
        assert entry.licence == "BSD-3-Clause" and entry.citation
        text = resources.files("crystal_m3gnet").joinpath(f"matgl_models/{MATGL_FOLDERS[name]}.model.json")
        assert json.loads(text.read_text())["kwargs"]["model"]["@class"] == "M3GNet"


def test_real_released_weights_when_cached():
    """M3GNet-MP-2021.2.8-PES (the authors' state.pt) against matgl 4.1.2 on the same file.

    Reference energies per atom: matgl 4.1.2 ``PESCalculator`` (float32) on ase ``bulk`` crystals,
    run once in the side environment of ``golden/make_golden.py``. Skipped unless the weights are in
    crystal's cache (``crystal weights download m3gnet-mp-2021.2.8-pes``): tests never download.
    """
    from ase.build import bulk

    from crystal.weights import cached_path

    entry = WEIGHTS.entry("m3gnet-mp-2021.2.8-pes")
    if not cached_path(entry).is_file():
        pytest.skip("m3gnet-mp-2021.2.8-pes is not in the weights cache")
    matgl_412 = {
        "Si": -5.417885780334473,
        "NaCl": -1.2481292486190796,
        "Cu": -4.096368789672852,
        "MgO": -2.1140692234039307,
    }
    atoms = [
        bulk("Si", "diamond", a=5.43),
        bulk("NaCl", "rocksalt", a=5.64),
        bulk("Cu", "fcc", a=3.61),
        bulk("MgO", "rocksalt", a=4.21),
    ]
    pot = M3GNetPotential(weights="m3gnet-mp-2021.2.8-pes", dtype="float32", device="cpu")
    batch = CrystalBatch.from_atoms(atoms)
    per_atom = pot.energy(batch) / batch.num_atoms
    np.testing.assert_allclose(per_atom.numpy(), list(matgl_412.values()), rtol=1e-6)
