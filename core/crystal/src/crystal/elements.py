"""Chemical element symbols (Z = 1–118) and chemical formulas, without importing pymatgen."""

from __future__ import annotations

from typing import Literal, overload

from crystal.errors import ConfigError

__all__ = ["SYMBOLS", "atomic_number", "parse_formula", "symbol"]

SYMBOLS: tuple[str, ...] = tuple(
    [
        "H",
        "He",
        "Li",
        "Be",
        "B",
        "C",
        "N",
        "O",
        "F",
        "Ne",
        "Na",
        "Mg",
        "Al",
        "Si",
        "P",
        "S",
        "Cl",
        "Ar",
        "K",
        "Ca",
        "Sc",
        "Ti",
        "V",
        "Cr",
        "Mn",
        "Fe",
        "Co",
        "Ni",
        "Cu",
        "Zn",
        "Ga",
        "Ge",
        "As",
        "Se",
        "Br",
        "Kr",
        "Rb",
        "Sr",
        "Y",
        "Zr",
        "Nb",
        "Mo",
        "Tc",
        "Ru",
        "Rh",
        "Pd",
        "Ag",
        "Cd",
        "In",
        "Sn",
        "Sb",
        "Te",
        "I",
        "Xe",
        "Cs",
        "Ba",
        "La",
        "Ce",
        "Pr",
        "Nd",
        "Pm",
        "Sm",
        "Eu",
        "Gd",
        "Tb",
        "Dy",
        "Ho",
        "Er",
        "Tm",
        "Yb",
        "Lu",
        "Hf",
        "Ta",
        "W",
        "Re",
        "Os",
        "Ir",
        "Pt",
        "Au",
        "Hg",
        "Tl",
        "Pb",
        "Bi",
        "Po",
        "At",
        "Rn",
        "Fr",
        "Ra",
        "Ac",
        "Th",
        "Pa",
        "U",
        "Np",
        "Pu",
        "Am",
        "Cm",
        "Bk",
        "Cf",
        "Es",
        "Fm",
        "Md",
        "No",
        "Lr",
        "Rf",
        "Db",
        "Sg",
        "Bh",
        "Hs",
        "Mt",
        "Ds",
        "Rg",
        "Cn",
        "Nh",
        "Fl",
        "Mc",
        "Lv",
        "Ts",
        "Og",
    ]
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


@overload
def parse_formula(text: str, *, allow_fractional: Literal[False] = False) -> dict[str, int]: ...
@overload
def parse_formula(text: str, *, allow_fractional: Literal[True]) -> dict[str, float]: ...
@overload
def parse_formula(text: str, *, allow_fractional: bool) -> dict[str, int] | dict[str, float]: ...
def parse_formula(text: str, *, allow_fractional: bool = False) -> dict[str, int] | dict[str, float]:
    """Element amounts of a chemical formula, in order of first appearance.

    >>> parse_formula("Li2MnO3")
    {'Li': 2, 'Mn': 1, 'O': 3}
    >>> parse_formula("Ca(OH)2")
    {'Ca': 1, 'O': 2, 'H': 2}
    >>> parse_formula("Li0.5CoO2", allow_fractional=True)
    {'Li': 0.5, 'Co': 1.0, 'O': 2.0}

    Element symbols are case-sensitive (``"Co"`` is cobalt, ``"CO"`` carbon and oxygen);
    groups in ``( )`` or ``[ ]`` may carry a multiplier and nest; whitespace between
    elements is allowed (``"Sr1 Ti1 O3"``); an element written twice is summed
    (``"CH3COOH"`` → C 2, H 4, O 2). Elements with amount zero are left out.

    Amounts must be whole numbers unless ``allow_fractional`` is true (then every amount
    is a ``float``). Raises :class:`~crystal.errors.ConfigError` (a ``ValueError``) naming
    the problem: an empty formula, a character that cannot start a token (with its
    position), unbalanced brackets, an unknown element (``'Xx'``), a fractional amount, or
    a formula whose amounts are all zero.
    """
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"expected a non-empty formula such as 'SrTiO3', got {text!r}")
    pos = 0
    n = len(text)

    def fail(why: str) -> ConfigError:
        return ConfigError(f"cannot parse formula {text!r}: {why}")

    def skip_spaces() -> None:
        nonlocal pos
        while pos < n and text[pos].isspace():
            pos += 1

    def amount() -> float:
        nonlocal pos
        start = pos
        while pos < n and (text[pos].isdigit() or text[pos] == "."):
            pos += 1
        if start == pos:
            return 1.0
        digits = text[start:pos]
        try:
            return float(digits)
        except ValueError:
            raise fail(f"bad number {digits!r} at position {start}") from None

    def group(closing: str | None, opened_at: int) -> list[tuple[str, float]]:
        nonlocal pos
        items: list[tuple[str, float]] = []
        while True:
            skip_spaces()
            if pos >= n:
                if closing is not None:
                    raise fail(f"missing {closing!r} for {text[opened_at]!r} at position {opened_at}")
                return items
            ch = text[pos]
            if ch in ")]":
                if closing != ch:
                    raise fail(f"unmatched {ch!r} at position {pos}")
                pos += 1
                return items
            if ch in "([":
                start = pos
                pos += 1
                inner = group(")" if ch == "(" else "]", start)
                if not inner:
                    raise fail(f"empty brackets at position {start}")
                k = amount()
                items.extend((sym, a * k) for sym, a in inner)
            elif "A" <= ch <= "Z":
                start = pos
                pos += 1
                while pos < n and "a" <= text[pos] <= "z":
                    pos += 1
                sym = text[start:pos]
                if sym not in _Z:
                    raise ConfigError(f"formula {text!r}: unknown element {sym!r}")
                items.append((sym, amount()))
            else:
                hint = " (element symbols start with a capital letter)" if ch.isalpha() else ""
                raise fail(f"unexpected {ch!r} at position {pos}{hint}")

    totals: dict[str, float] = {}
    for sym, a in group(None, 0):
        totals[sym] = totals.get(sym, 0.0) + a
    totals = {sym: a for sym, a in totals.items() if a > 0}
    if not totals:
        raise ConfigError(f"formula {text!r} contains no atoms")
    if allow_fractional:
        return totals
    whole: dict[str, int] = {}
    for sym, a in totals.items():
        if abs(a - round(a)) > 1e-8:
            raise ConfigError(f"formula {text!r}: {sym} has amount {a:g}; amounts must be whole numbers of atoms")
        whole[sym] = round(a)
    return whole
