"""Chemical element symbols (Z = 1–118) without importing pymatgen."""

from __future__ import annotations

__all__ = ["SYMBOLS", "atomic_number", "symbol"]

SYMBOLS: tuple[str, ...] = tuple(
    ["H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si", "P", "S", "Cl", "Ar", "K", "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga", "Ge", "As", "Se", "Br", "Kr", "Rb", "Sr", "Y", "Zr", "Nb", "Mo", "Tc", "Ru", "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "I", "Xe", "Cs", "Ba", "La", "Ce", "Pr", "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Hf", "Ta", "W", "Re", "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Po", "At", "Rn", "Fr", "Ra", "Ac", "Th", "Pa", "U", "Np", "Pu", "Am", "Cm", "Bk", "Cf", "Es", "Fm", "Md", "No", "Lr", "Rf", "Db", "Sg", "Bh", "Hs", "Mt", "Ds", "Rg", "Cn", "Nh", "Fl", "Mc", "Lv", "Ts", "Og"]
)
_Z = {s: i + 1 for i, s in enumerate(SYMBOLS)}


def symbol(z: int) -> str:
    """Element symbol of atomic number ``z`` (``"X<z>"`` when out of range)."""
    return SYMBOLS[z - 1] if 1 <= z <= len(SYMBOLS) else f"X{z}"


def atomic_number(sym: str) -> int:
    """Atomic number of an element symbol; raises ``ValueError`` naming the symbol."""
    try:
        return _Z[sym.strip().capitalize()]
    except KeyError:
        raise ValueError(f"unknown element symbol {sym!r}") from None
