"""Powder X-ray diffraction: batched simulation, measured-pattern readers and matching.

>>> from crystal_xrd import simulate
>>> result = simulate(batch, wavelength="CuKa", fwhm=0.1)   # doctest: +SKIP
>>> result.patterns.shape                                    # (B, G) on result.two_theta

* :func:`simulate` / :func:`simulate_peaks` — the simulator (:mod:`crystal_xrd.simulate`)
* :class:`XRDConfig`, :class:`XRDAugment` — its configuration
* :class:`XRDRepresentation` — the same as a ``Representation`` named ``"xrd"``
* :func:`read_pattern`, :func:`write_pattern`, :func:`resample` — measured patterns
* :func:`match` — rank candidate structures by similarity to a measured pattern
* ``crystal xrd simulate`` — the command line (:mod:`crystal_xrd.cli`, registered by
  :mod:`crystal_xrd.hooks`)

The names are imported on first use: ``import crystal_xrd`` (and the CLI hook module) stays
free of torch, so ``crystal --help`` starts fast.
"""

from __future__ import annotations

import sys
import types
from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crystal_xrd.config import XRDAugment, XRDConfig
    from crystal_xrd.io import MeasuredPattern, PatternError, read_pattern, resample, write_pattern
    from crystal_xrd.match import MatchResult, match, similarity
    from crystal_xrd.peaks import XRDPeaks
    from crystal_xrd.simulate import XRDResult, make_config, simulate, simulate_peaks
    from crystal_xrd.wavelengths import WAVELENGTHS, resolve_wavelength

_WHERE = {
    "XRDAugment": "config",
    "XRDConfig": "config",
    "MeasuredPattern": "io",
    "PatternError": "io",
    "read_pattern": "io",
    "resample": "io",
    "write_pattern": "io",
    "MatchResult": "match",
    "match": "match",
    "similarity": "match",
    "XRDPeaks": "peaks",
    "XRDRepresentation": "representation",
    "XRDResult": "simulate",
    "make_config": "simulate",
    "simulate": "simulate",
    "simulate_peaks": "simulate",
    "WAVELENGTHS": "wavelengths",
    "resolve_wavelength": "wavelengths",
}

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
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'crystal_xrd' has no attribute {name!r}")
    value = getattr(import_module(f"crystal_xrd.{where}"), name)
    globals()[name] = value  # next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


class _Package(types.ModuleType):
    """Keeps ``crystal_xrd.simulate`` / ``crystal_xrd.match`` the functions once their submodules
    are imported (the import system sets the package attribute to the submodule), as the
    eager imports of earlier versions did."""

    def __setattr__(self, name: str, value: object) -> None:
        if isinstance(value, types.ModuleType) and _WHERE.get(name) == name:
            return  # the submodule stays reachable through sys.modules and `from crystal_xrd.x import ...`
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
