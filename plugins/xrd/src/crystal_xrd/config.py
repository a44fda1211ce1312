"""Configuration of the powder-XRD simulator (pydantic, ``extra="forbid"``)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from crystal.components import ComponentConfig
from crystal.config import StrictModel

__all__ = ["XRDAugment", "XRDConfig"]


class XRDAugment(StrictModel):
    """Random perturbations for training data; every draw comes from one seeded generator.

    Applied in this order: preferred orientation (per reflection, before merging), lattice
    strain and zero shift (per pattern, on peak positions), peak-intensity jitter, peak
    width, then on the grid: second phase, background, noise.
    """

    shift: float = Field(0.1, ge=0, description="max |zero shift| of every peak of a pattern, degrees 2θ (uniform)")
    strain: float = Field(
        0.01, ge=0, lt=0.5, description="max |isotropic lattice strain| ε (fraction; d → d(1+ε), uniform per pattern)"
    )
    intensity_jitter: float = Field(
        0.0, ge=0, description="σ of a log-normal factor applied to every peak intensity (dimensionless)"
    )
    fwhm_range: tuple[float, float] | None = Field(
        None, description="draw the instrumental FWHM per pattern uniformly from this range, degrees 2θ"
    )
    preferred_orientation: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="March–Dollase r drawn uniformly from [1-p, 1+p] (dimensionless) about a random low-index axis",
    )
    mix_probability: float = Field(0.0, ge=0, le=1, description="probability that a pattern gets a second phase")
    mix_fraction: float = Field(
        0.3, ge=0, le=1, description="max weight of the second phase (another crystal of the batch), fraction"
    )
    background: float = Field(
        0.0, ge=0, description="max height of a smooth random background, relative to the strongest peak"
    )
    noise: float = Field(0.0, ge=0, description="σ of additive Gaussian noise, relative to the strongest peak")

    @model_validator(mode="after")
    def _check(self) -> XRDAugment:
        if self.fwhm_range is not None and not 0 < self.fwhm_range[0] <= self.fwhm_range[1]:
            raise ValueError(f"fwhm_range must satisfy 0 < low <= high (degrees), got {self.fwhm_range}")
        return self


class XRDConfig(ComponentConfig):
    """Powder XRD simulation: reflections, intensities, peak profile and 2θ grid."""

    wavelength: str | float = Field(
        "CuKa", description="X-ray wavelength: a name (CuKa, MoKa1, ... as pymatgen's WAVELENGTHS) or a number in Å"
    )
    two_theta_min: float = Field(5.0, ge=0, lt=180, description="lower end of the 2θ range, degrees")
    two_theta_max: float = Field(90.0, gt=0, lt=180, description="upper end of the 2θ range, degrees (< 180)")
    step: float = Field(0.02, gt=0, description="spacing of the 2θ grid of patterns, degrees")
    profile: Literal["gaussian", "lorentzian", "pseudo_voigt"] = Field(
        "gaussian", description="peak shape (area-normalised)"
    )
    eta: float = Field(0.5, ge=0, le=1, description="Lorentzian fraction of the pseudo-Voigt profile (dimensionless)")
    fwhm: float = Field(0.1, ge=0, description="instrumental full width at half maximum, degrees 2θ")
    crystallite_size: float | None = Field(
        None,
        gt=0,
        description="crystallite size L in nm; adds Scherrer broadening Kλ/(L cos θ) (radians), "
        "combined with `fwhm` in quadrature",
    )
    scherrer_constant: float = Field(0.9, gt=0, description="shape factor K of the Scherrer equation (dimensionless)")
    profile_window: float | None = Field(
        None,
        gt=0,
        description="profiles are evaluated within ± this many FWHM of each peak (FWHM units); "
        "None: 3 for 'gaussian' (tail < 2e-11 of the height), 40 otherwise (Lorentzian tail < 2e-4)",
    )
    debye_waller: float | dict[str, float] | None = Field(
        None,
        description="isotropic Debye–Waller B factor in Å² (one value for all elements, or per element symbol); "
        "scattering factors are multiplied by exp(-B s²), s = sin θ/λ",
    )
    normalize: Literal["max", "none"] = Field(
        "max", description="'max' scales peaks and pattern so the strongest is `scale`; 'none' keeps raw intensities"
    )
    scale: float = Field(1.0, gt=0, description="value of the strongest peak / pattern maximum when normalize='max'")
    merge_tolerance: float = Field(
        1e-4, gt=0, description="reflections whose 2θ differ by less than this are merged into one peak, degrees"
    )
    min_intensity: float = Field(
        1e-5, ge=0, lt=1, description="peaks weaker than this fraction of the strongest are dropped (pymatgen: 1e-5)"
    )
    augment: XRDAugment | None = Field(None, description="training augmentation (None = exact simulation)")
    seed: int = Field(0, description="seed of the augmentation random generator")
    chunk_size: int = Field(
        16, ge=1, description="max crystals per chunk (crystals are sorted by size first; smaller = less padding)"
    )
    chunk_elements: int = Field(
        1 << 24, ge=1 << 12, description="memory budget: max tensor elements per chunk of crystals (count)"
    )

    @model_validator(mode="after")
    def _check(self) -> XRDConfig:
        if self.two_theta_max <= self.two_theta_min:
            raise ValueError(f"two_theta_max ({self.two_theta_max}) must exceed two_theta_min ({self.two_theta_min})")
        if self.fwhm <= 0 and self.crystallite_size is None and (self.augment is None or not self.augment.fwhm_range):
            raise ValueError("fwhm must be > 0 degrees unless crystallite_size (nm) is set")
        if isinstance(self.debye_waller, dict):
            from crystal.elements import atomic_number

            for el in self.debye_waller:
                try:
                    atomic_number(el)
                except ValueError:
                    raise ValueError(f"debye_waller: unknown element {el!r}") from None
        from crystal_xrd.wavelengths import resolve_wavelength

        resolve_wavelength(self.wavelength)
        return self

    @property
    def wavelength_angstrom(self) -> float:
        from crystal_xrd.wavelengths import resolve_wavelength

        return resolve_wavelength(self.wavelength)

    @property
    def window(self) -> float:
        """Half-width of the evaluated profile, in FWHM."""
        if self.profile_window is not None:
            return self.profile_window
        return 3.0 if self.profile == "gaussian" else 40.0

    @property
    def num_points(self) -> int:
        """Number of grid points: ``floor((max - min)/step + 1e-9) + 1``."""
        return math.floor((self.two_theta_max - self.two_theta_min) / self.step + 1e-9) + 1
