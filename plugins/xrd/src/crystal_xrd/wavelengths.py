"""Named X-ray wavelengths (Å): characteristic lines of common anode materials.

The same names and values as pymatgen's ``WAVELENGTHS`` (``CuKa`` is the weighted
Kα1/Kα2 mean used by default).
"""

from __future__ import annotations

from crystal.errors import ConfigError

__all__ = ["WAVELENGTHS", "resolve_wavelength"]

WAVELENGTHS: dict[str, float] = {
    "CuKa": 1.54184,
    "CuKa2": 1.54439,
    "CuKa1": 1.54056,
    "CuKb1": 1.39222,
    "MoKa": 0.71073,
    "MoKa2": 0.71359,
    "MoKa1": 0.70930,
    "MoKb1": 0.63229,
    "CrKa": 2.29100,
    "CrKa2": 2.29361,
    "CrKa1": 2.28970,
    "CrKb1": 2.08487,
    "FeKa": 1.93735,
    "FeKa2": 1.93998,
    "FeKa1": 1.93604,
    "FeKb1": 1.75661,
    "CoKa": 1.79026,
    "CoKa2": 1.79285,
    "CoKa1": 1.78896,
    "CoKb1": 1.63079,
    "AgKa": 0.560885,
    "AgKa2": 0.563813,
    "AgKa1": 0.559421,
    "AgKb1": 0.497082,
}


def resolve_wavelength(value: str | float) -> float:
    """A wavelength in Å from a name (``"CuKa"``) or a positive number of Å."""
    if isinstance(value, str):
        if value in WAVELENGTHS:
            return WAVELENGTHS[value]
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(
                f"xrd: unknown wavelength {value!r}; allowed: a number of Å or one of {', '.join(WAVELENGTHS)}"
            ) from None
    v = float(value)
    if not v > 0:
        raise ConfigError(f"xrd: wavelength must be positive (Å), got {v}")
    return v
