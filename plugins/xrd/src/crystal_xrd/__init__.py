"""Powder X-ray diffraction: batched simulation, measured-pattern readers and matching.

>>> from crystal_xrd import simulate
>>> result = simulate(batch, wavelength="CuKa", fwhm=0.1)   # doctest: +SKIP
>>> result.patterns.shape                                    # (B, G) on result.two_theta

* :func:`simulate` / :func:`simulate_peaks` — the simulator (:mod:`crystal_xrd.simulate`)
* :class:`XRDConfig`, :class:`XRDAugment` — its configuration
* :class:`XRDRepresentation` — the same as a ``Representation`` named ``"xrd"``
* :func:`read_pattern`, :func:`write_pattern`, :func:`resample` — measured patterns
* :func:`match` — rank candidate structures by similarity to a measured pattern
"""

from __future__ import annotations

from crystal_xrd.config import XRDAugment, XRDConfig
from crystal_xrd.io import MeasuredPattern, PatternError, read_pattern, resample, write_pattern
from crystal_xrd.match import MatchResult, match, similarity
from crystal_xrd.peaks import XRDPeaks
from crystal_xrd.simulate import XRDResult, make_config, simulate, simulate_peaks
from crystal_xrd.wavelengths import WAVELENGTHS, resolve_wavelength

__all__ = [
    "WAVELENGTHS",
    "MatchResult",
    "MeasuredPattern",
    "PatternError",
    "XRDAugment",
    "XRDConfig",
    "XRDPeaks",
    "XRDResult",
    "make_config",
    "match",
    "read_pattern",
    "resample",
    "resolve_wavelength",
    "similarity",
    "simulate",
    "simulate_peaks",
    "write_pattern",
]


def __getattr__(name: str) -> object:
    if name == "XRDRepresentation":
        from crystal_xrd.representation import XRDRepresentation

        return XRDRepresentation
    raise AttributeError(name)
