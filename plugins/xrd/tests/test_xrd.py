"""Powder-XRD simulator: config, physics options, broadening, augmentation, representation, matching."""

from __future__ import annotations

import math

import pytest
import torch
from pymatgen.analysis.diffraction.xrd import XRDCalculator
from pymatgen.core import Lattice, Structure

from crystal.batch import CrystalBatch
from crystal.errors import ConfigError, StructureError
from crystal_xrd import WAVELENGTHS, XRDConfig, match, similarity, simulate, simulate_peaks


def _nacl(a: float = 5.64) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _mg() -> Structure:
    return Structure.from_spacegroup("P6_3/mmc", Lattice.hexagonal(3.21, 5.21), ["Mg"], [[1 / 3, 2 / 3, 0.25]])


def _rutile() -> Structure:
    return Structure.from_spacegroup(
        "P4_2/mnm", Lattice.tetragonal(4.594, 2.959), ["Ti", "O"], [[0, 0, 0], [0.3053, 0.3053, 0]]
    )


@pytest.fixture(scope="module")
def batch() -> CrystalBatch:
    return CrystalBatch.from_structures([_nacl(), _mg(), _rutile()]).to(dtype=torch.float64)


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="unknown parameter"):
        simulate(CrystalBatch.from_structures([_nacl()]), bogus=1)
    with pytest.raises(ConfigError, match="two_theta_max"):
        simulate(CrystalBatch.from_structures([_nacl()]), two_theta_min=50, two_theta_max=40)
    with pytest.raises(ConfigError, match="wavelength"):
        simulate(CrystalBatch.from_structures([_nacl()]), wavelength="CuKz")
    with pytest.raises(ConfigError, match="fwhm"):
        simulate(CrystalBatch.from_structures([_nacl()]), fwhm=0.0)
    with pytest.raises(ConfigError, match="debye_waller"):
        simulate(CrystalBatch.from_structures([_nacl()]), debye_waller={"Xx": 0.5})


def test_config_errors_are_config_errors_from_pydantic() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        XRDConfig(two_theta_min=50, two_theta_max=40)


def test_named_and_numeric_wavelengths_agree(batch: CrystalBatch) -> None:
    a = simulate_peaks(batch, wavelength="MoKa1")
    b = simulate_peaks(batch, wavelength=WAVELENGTHS["MoKa1"])
    assert torch.equal(a.two_theta, b.two_theta) and torch.equal(a.intensity, b.intensity)
    # shorter wavelength -> the same reflection at a smaller angle, more peaks in range
    cu = simulate_peaks(batch, wavelength="CuKa")
    assert bool((a.counts > cu.counts).all())
    assert float(a.two_theta[0, 0]) < float(cu.two_theta[0, 0])


def test_missing_scattering_factors_named() -> None:
    s = Structure(Lattice.cubic(4.0), ["Og"], [[0, 0, 0]])
    with pytest.raises(StructureError, match="Og"):
        simulate(CrystalBatch.from_structures([s]))


def test_empty_and_degenerate_crystals_named() -> None:
    b = CrystalBatch.from_structures([_nacl()]).to(dtype=torch.float64)
    flat = b.with_positions(b.frac_coords, b.lattices * torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)[:, None])
    with pytest.raises(StructureError, match="degenerate"):
        simulate(flat)
    nan = b.with_positions(b.frac_coords.clone().fill_(float("nan")), b.lattices)
    with pytest.raises(StructureError, match="NaN"):
        simulate(nan)


def test_debye_waller_matches_pymatgen_and_damps_high_angles() -> None:
    s = _nacl()
    b = CrystalBatch.from_structures([s]).to(dtype=torch.float64)
    dw = {"Na": 1.2, "Cl": 0.7}
    ours = simulate_peaks(b, debye_waller=dw, scale=100.0, two_theta_min=0).crystal(0)
    ref = XRDCalculator(debye_waller_factors=dw).get_pattern(s)
    assert ours["two_theta"] == pytest.approx(list(ref.x), abs=1e-8)
    assert ours["intensity"] == pytest.approx(list(ref.y), abs=1e-6)
    plain = simulate_peaks(b, scale=100.0, two_theta_min=0).crystal(0)
    # relative to the first peak, the last peak loses intensity with a temperature factor
    assert ours["intensity"][-1] / ours["intensity"][0] < plain["intensity"][-1] / plain["intensity"][0]
    uniform = simulate_peaks(b, debye_waller=1.0, normalize="none")
    keyed = simulate_peaks(b, debye_waller={"Na": 1.0, "Cl": 1.0}, normalize="none")
    assert torch.allclose(uniform.intensity, keyed.intensity)


def test_lorentz_polarisation_and_raw_intensity() -> None:
    """One atom at the origin: I = 2 f(s)² LP(θ) × (number of merged Friedel pairs)."""
    from crystal_xrd.scattering import form_factors, scattering_table
    from crystal_xrd.structure_factor import lorentz_polarization

    s = Structure(Lattice.cubic(3.0), ["Cu"], [[0, 0, 0]])
    peaks = simulate_peaks(CrystalBatch.from_structures([s]).to(dtype=torch.float64), normalize="none")
    first = peaks.crystal(0)
    tt, inten, mult, d = first["two_theta"][0], first["intensity"][0], first["multiplicity"][0], first["d_spacing"][0]
    assert mult == 6 and d == pytest.approx(3.0)
    theta = torch.tensor(math.radians(tt / 2), dtype=torch.float64)
    z = torch.tensor([29])
    f = form_factors(z, scattering_table(z), torch.tensor(1 / (4 * d * d), dtype=torch.float64))[0]
    expected = mult * float(f) ** 2 * float(lorentz_polarization(theta))
    assert inten == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("profile", ["gaussian", "lorentzian", "pseudo_voigt"])
def test_profiles_are_area_normalised(profile: str) -> None:
    from crystal_xrd.profile import broaden

    tt = torch.tensor([[40.0, 60.013]], dtype=torch.float64)
    inten = torch.tensor([[2.0, 1.0]], dtype=torch.float64)
    mask = torch.ones_like(tt, dtype=torch.bool)
    width = torch.tensor([[0.2, 0.3]], dtype=torch.float64)
    y = broaden(tt, inten, mask, width, 10.0, 0.005, 16001, profile, 0.5, window=400.0)
    area = float(y.sum()) * 0.005
    lost = 0.0 if profile == "gaussian" else 0.01  # Lorentzian tails beyond the grid
    assert area == pytest.approx(3.0, rel=1e-4 + lost)
    # half maximum at ± FWHM/2 for the Gaussian and Lorentzian
    if profile != "pseudo_voigt":
        j0 = round((40.0 - 10.0) / 0.005)
        jh = round((40.1 - 10.0) / 0.005)
        assert float(y[0, jh] / y[0, j0]) == pytest.approx(0.5, abs=2e-3)


def test_scherrer_broadening_width() -> None:
    """FWHM from a crystallite size: K λ / (L cos θ) (radians)."""
    s = Structure(Lattice.cubic(3.0), ["Cu"], [[0, 0, 0]])
    b = CrystalBatch.from_structures([s]).to(dtype=torch.float64)
    res = simulate(b, fwhm=0.0, crystallite_size=20.0, step=0.001, two_theta_min=25, two_theta_max=35)
    y, x = res.patterns[0], res.two_theta
    tt = float(res.peaks.two_theta[0, 0])
    expected = math.degrees(0.9 * 1.54184 / (200.0 * math.cos(math.radians(tt / 2))))
    above = x[y >= 0.5 * y.max()]
    assert float(above[-1] - above[0]) == pytest.approx(expected, abs=2e-3)
    wider = simulate(b, fwhm=0.0, crystallite_size=5.0, step=0.001, two_theta_min=25, two_theta_max=35).patterns[0]
    assert int((wider >= 0.5).sum()) > 3 * int((y >= 0.5).sum())


def test_normalisation(batch: CrystalBatch) -> None:
    r1 = simulate(batch)
    r100 = simulate(batch, scale=100.0)
    raw = simulate(batch, normalize="none")
    assert torch.allclose(r1.patterns.amax(1), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(r100.patterns, 100 * r1.patterns)
    assert torch.allclose(r100.peaks.intensity.amax(1), torch.full((3,), 100.0, dtype=torch.float64))
    assert float(raw.patterns.max()) > 10.0
    assert torch.allclose(raw.patterns / raw.patterns.amax(1, keepdim=True), r1.patterns)
    assert r1.two_theta[0] == 5.0 and r1.two_theta[-1] == pytest.approx(90.0) and len(r1.two_theta) == 4251


def test_augmentation_seeded_and_effective(batch: CrystalBatch) -> None:
    aug = {
        "shift": 0.2,
        "strain": 0.02,
        "intensity_jitter": 0.2,
        "fwhm_range": (0.05, 0.3),
        "preferred_orientation": 0.3,
        "mix_probability": 1.0,
        "mix_fraction": 0.3,
        "background": 0.2,
        "noise": 0.01,
    }
    a = simulate(batch, augment=aug, seed=1).patterns
    b = simulate(batch, augment=aug, seed=1).patterns
    c = simulate(batch, augment=aug, seed=2).patterns
    clean = simulate(batch).patterns
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-3)
    assert not torch.allclose(a, clean, atol=1e-2)
    # each option on its own changes the pattern (no flag is inert)
    base = {k: 0.0 for k in ("shift", "strain", "intensity_jitter", "preferred_orientation", "background", "noise")}
    base |= {"mix_probability": 0.0}
    for key, value in aug.items():
        one = simulate(
            batch, augment=base | {key: value} | ({"mix_probability": 1.0} if key == "mix_fraction" else {}), seed=3
        )
        assert not torch.allclose(one.patterns, clean, atol=1e-4), key
    # a config seed is used when no seed is passed
    assert torch.equal(
        simulate(batch, augment=aug, seed=5).patterns, simulate(batch, {"augment": aug, "seed": 5}).patterns
    )


def test_march_dollase_identity_and_normalisation() -> None:
    from crystal_xrd.augment import march_dollase

    hkl = torch.tensor([[[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]]])
    metric = torch.eye(3, dtype=torch.float64)[None]
    axis = torch.tensor([[0, 0, 1]])
    assert torch.allclose(march_dollase(hkl, metric, axis, torch.tensor([1.0])), torch.ones(1, 4, dtype=torch.float64))
    w = march_dollase(hkl, metric, axis, torch.tensor([0.5]))
    assert float(w[0, 2]) == pytest.approx(0.5**-3)  # along the axis: r^-3
    assert float(w[0, 0]) == pytest.approx(0.5**1.5)  # perpendicular: r^{3/2}


def test_strain_moves_peaks_by_bragg() -> None:
    from crystal_xrd.augment import perturb_positions

    tt = torch.tensor([[30.0, 60.0]], dtype=torch.float64)
    new, ok = perturb_positions(
        tt, torch.tensor([0.01], dtype=torch.float64), torch.tensor([0.05], dtype=torch.float64)
    )
    expected = [2 * math.degrees(math.asin(math.sin(math.radians(t / 2)) / 1.01)) + 0.05 for t in (30.0, 60.0)]
    assert new[0].tolist() == pytest.approx(expected) and bool(ok.all())


def test_representation_component(batch: CrystalBatch) -> None:
    from crystal_xrd import XRDRepresentation

    rep = XRDRepresentation({"two_theta_min": 10, "two_theta_max": 80, "step": 0.05}, device="cpu")
    out = rep.represent(batch)
    assert out["signal"].shape == (3, 1401) and out["two_theta"].shape == (1401,)
    assert out["peak_two_theta"].shape == out["peak_mask"].shape
    assert rep.kind.value == "representations" and rep.name == "xrd"
    with pytest.raises(ConfigError, match="unknown parameter"):
        XRDRepresentation({"nonsense": 1})


def test_match_ranks_the_true_structure_first(batch: CrystalBatch) -> None:
    from crystal_xrd import MeasuredPattern

    target = simulate(CrystalBatch.from_structures([_rutile()]).to(dtype=torch.float64), step=0.01, two_theta_min=10)
    scaled = MeasuredPattern(target.two_theta, target.patterns[0] * 37.0)  # arbitrary scale, other grid
    shifted = MeasuredPattern(target.two_theta, target.patterns[0] * 37.0 + 3.0)  # + constant background
    for metric, measured in (("cosine", scaled), ("pearson", scaled), ("pearson", shifted)):
        res = match(measured, batch, metric=metric, two_theta_min=10, two_theta_max=90)
        assert res.ids[0] == batch.ids[2], metric
        assert float(res.scores[0]) > 0.95 and float(res.scores[-1]) < 0.5
    # a candidate whose cell is 1.5 % too large: found again by the strain search
    expanded = _rutile()
    expanded.scale_lattice(expanded.volume * 1.015**3)
    cands = CrystalBatch.from_structures([_nacl(), expanded, _mg()]).to(dtype=torch.float64)
    plain = match(scaled, cands, metric="pearson", two_theta_min=10)
    assert float(plain.scores[0]) < 0.6  # misaligned narrow peaks
    found = match(scaled, cands, metric="pearson", two_theta_min=10, max_strain=0.03, max_shift=0.05)
    assert found.ids[0] == cands.ids[1] and float(found.scores[0]) > 0.95
    assert found.strain is not None and found.shift is not None
    assert float(found.strain[0]) == pytest.approx(1 / 1.015 - 1, abs=1.6e-3)
    assert abs(float(found.shift[0])) <= 0.011
    # similarity of a pattern with itself is 1
    p = simulate(batch).patterns
    assert torch.allclose(similarity(p, p), torch.ones(3, dtype=torch.float64))
    with pytest.raises(ConfigError, match="points"):
        match(torch.zeros(7), batch)


def test_representation_registered_as_plugin() -> None:
    from crystal.plugins import list_plugins, load_class

    names = {i.name for i in list_plugins("representation")}
    assert "xrd" in names, "the 'xrd' entry point of crystal-core is missing (re-install core)"
    from crystal_xrd.representation import XRDRepresentation

    assert load_class("representation", "xrd") is XRDRepresentation
