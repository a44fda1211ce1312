"""Simulated powder XRD patterns of the top candidates.

The ``xrd`` representation (crystal-xrd, reached through its entry point like any plugin)
when it is installed and enabled, else pymatgen's ``XRDCalculator`` broadened with the same
Gaussian; the page names the one used. Cu Kα, 2θ 5-90°, FWHM 0.1°, strongest peak = 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from pymatgen.core import Structure

__all__ = ["TWO_THETA", "Pattern", "Simulator", "simulate_patterns"]

Simulator = Literal["auto", "crystal-xrd", "pymatgen"]
TWO_THETA = (5.0, 90.0)  # degrees
STEP = 0.02  # degrees
FWHM = 0.1  # degrees 2θ, Gaussian
_POINTS = 1200  # points per pattern on the page (max-pooled, so no peak is lost)
_LOADED: dict[tuple[str, str], Any] = {}  # the xrd representation, per plugin selection


@dataclass
class Pattern:
    """One pattern: 2θ (degrees) and intensity (strongest = 1), already reduced for plotting."""

    id: str
    two_theta: list[float]
    intensity: list[float]


def _pool(x: list[float], y: list[float], points: int = _POINTS) -> tuple[list[float], list[float]]:
    """Reduce to about ``points`` points by taking each window's maximum (peaks survive)."""
    n = len(x)
    if n <= points:
        return x, y
    w = -(-n // points)
    xs, ys = [], []
    for k in range(0, n, w):
        window = y[k : k + w]
        j = max(range(len(window)), key=window.__getitem__)
        xs.append(x[k + j])
        ys.append(window[j])
    return xs, ys


def _crystal_xrd(structures: dict[str, Structure]) -> tuple[list[Pattern], str, list[str]]:
    from crystal.batch import CrystalBatch
    from crystal.components import Representation
    from crystal.errors import PluginError
    from crystal.plugins import ENV_ALLOW, ENV_DISABLE, load

    # one lookup per process and plugin selection (listing the plugins reads every manifest: ~0.4 s)
    key = (os.environ.get(ENV_ALLOW, ""), os.environ.get(ENV_DISABLE, ""))
    rep = _LOADED.get(key)
    if rep is None:
        rep = load(
            "representation",
            "xrd",
            {
                "wavelength": "CuKa",
                "two_theta_min": TWO_THETA[0],
                "two_theta_max": TWO_THETA[1],
                "step": STEP,
                "fwhm": FWHM,
            },
            device="cpu",
        )
        if not isinstance(rep, Representation):
            raise PluginError(f"the 'xrd' plugin is a {type(rep).__name__}, not a Representation")
        _LOADED[key] = rep
    patterns, notes = [], []
    for ident, s in structures.items():
        try:
            out = rep.represent(CrystalBatch.from_structures([s], [ident]))
        except Exception as exc:  # one crystal the simulator refuses: a note, the others still drawn
            notes.append(f"{ident}: no XRD pattern ({type(exc).__name__}: {exc})")
            continue
        x = [float(v) for v in out["two_theta"].tolist()]
        y = [float(v) for v in out["signal"][0].tolist()]
        top = max(y) if y and max(y) > 0 else 1.0
        patterns.append(Pattern(ident, *_pool(x, [v / top for v in y])))
    version = ""
    try:
        from importlib.metadata import version as _version

        version = " " + _version("crystal-xrd")
    except Exception:
        pass
    desc = (
        f"crystal-xrd{version} (the 'xrd' representation): Cu Kα, 2θ {TWO_THETA[0]:g}-{TWO_THETA[1]:g}°, "
        f"step {STEP:g}°, Gaussian FWHM {FWHM:g}°"
    )
    return patterns, desc, notes


def _pymatgen(structures: dict[str, Structure], why: str) -> tuple[list[Pattern], str, list[str]]:
    import numpy as np
    from pymatgen.analysis.diffraction.xrd import XRDCalculator

    calc = XRDCalculator("CuKa")
    grid = np.arange(TWO_THETA[0], TWO_THETA[1] + STEP / 2, STEP)
    sigma = FWHM / (2 * np.sqrt(2 * np.log(2)))
    patterns, notes = [], []
    for ident, s in structures.items():
        try:
            p = calc.get_pattern(s, two_theta_range=TWO_THETA)
        except Exception as exc:
            notes.append(f"{ident}: no XRD pattern ({type(exc).__name__}: {exc})")
            continue
        y = np.zeros_like(grid)
        for pos, height in zip(np.asarray(p.x, dtype=float), np.asarray(p.y, dtype=float)):
            y += height * np.exp(-0.5 * ((grid - pos) / sigma) ** 2)
        top = float(y.max()) if y.size and y.max() > 0 else 1.0
        patterns.append(Pattern(ident, *_pool(grid.tolist(), (y / top).tolist())))
    import pymatgen.core

    desc = (
        f"pymatgen {getattr(pymatgen.core, '__version__', '')} XRDCalculator ({why}): Cu Kα, "
        f"2θ {TWO_THETA[0]:g}-{TWO_THETA[1]:g}°, peaks broadened with a Gaussian of FWHM {FWHM:g}°"
    )
    return patterns, desc, notes


def simulate_patterns(
    structures: dict[str, Structure], simulator: Simulator = "auto"
) -> tuple[list[Pattern], str, list[str]]:
    """Patterns of ``structures`` (in their order), a description of the simulator used, notes."""
    if not structures:
        return [], "", []
    if simulator in ("auto", "crystal-xrd"):
        from crystal.errors import CrystalError

        try:
            return _crystal_xrd(structures)
        except CrystalError as exc:  # not installed, disabled or broken: pymatgen instead (auto only)
            if simulator == "crystal-xrd":
                raise
            return _pymatgen(structures, f"crystal-xrd is not available: {exc}")
    return _pymatgen(structures, "chosen instead of crystal-xrd")
