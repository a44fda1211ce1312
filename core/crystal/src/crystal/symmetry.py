"""Space-group numbers and the crystal systems they belong to (International Tables A).

>>> crystal_system(225)
'cubic'
>>> crystal_system_index(14)
1
>>> space_groups_of("trigonal")
range(143, 168)
"""

from __future__ import annotations

from crystal.errors import ConfigError

__all__ = ["CRYSTAL_SYSTEMS", "crystal_system", "crystal_system_index", "space_groups_of"]

#: ``(crystal system, first, last space-group number)`` in the order of International Tables
CRYSTAL_SYSTEMS: tuple[tuple[str, int, int], ...] = (
    ("triclinic", 1, 2),
    ("monoclinic", 3, 15),
    ("orthorhombic", 16, 74),
    ("tetragonal", 75, 142),
    ("trigonal", 143, 167),
    ("hexagonal", 168, 194),
    ("cubic", 195, 230),
)


def crystal_system_index(space_group: int) -> int:
    """0–6 index into :data:`CRYSTAL_SYSTEMS` of an international space-group number.

    Raises :class:`~crystal.errors.ConfigError` (a ``ValueError``) outside 1–230.
    """
    for i, (_, lo, hi) in enumerate(CRYSTAL_SYSTEMS):
        if lo <= space_group <= hi:
            return i
    raise ConfigError(f"space group number {space_group} is outside 1-230")


def crystal_system(space_group: int) -> str:
    """Crystal system (``"triclinic"`` … ``"cubic"``) of an international space-group number 1–230."""
    return CRYSTAL_SYSTEMS[crystal_system_index(space_group)][0]


def space_groups_of(system: str) -> range:
    """The space-group numbers of a crystal system (case-insensitive name)."""
    for name, lo, hi in CRYSTAL_SYSTEMS:
        if name == system.strip().lower():
            return range(lo, hi + 1)
    raise ConfigError(f"unknown crystal system {system!r}; allowed: {', '.join(c[0] for c in CRYSTAL_SYSTEMS)}")
