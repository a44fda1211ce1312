"""CrystaLLM's canonical CIF text, and the prompts built from it.

A structure becomes training text in the reference pipeline's steps (``prepare_csv_benchmark``
→ ``preprocess`` → ``tokenize_cifs``), re-implemented here:

1. **standardise + symmetrise**: pymatgen ``CifWriter(structure, symprec=0.1)`` — spglib's
   refined (standard conventional) cell, the space-group symbol and number, and one row per
   symmetry-distinct site with its Wyckoff multiplicity;
2. **header**: ``data_<cell formula>``, the formula of the cell as written in
   ``_chemical_formula_sum`` without spaces (``data_Sr1Ti1O3``; reduced formula × Z);
3. **semi-symmetrise**: the symmetry-operation loop keeps only ``1 'x, y, z'`` (the operators
   follow from the space-group symbol and are restored after generation,
   :func:`crystal_crystallm.checks.restore_symmetry_operators`);
4. **atom-properties block**: a ``loop_`` of ``_atom_type_symbol``,
   ``_atom_type_electronegativity`` (Pauling), ``_atom_type_radius`` (atomic radius, Å) and
   ``_atom_type_ionic_radius`` (average ionic radius, Å) per element, before the space-group
   line (the reference's hypothesis: these are what the model should associate with the
   composition first);
5. **rounding**: every decimal number with more than 4 decimals is rounded to 4;
6. **clean-up**: lines stripped, blank/comment/``pymatgen`` lines dropped, runs of spaces
   collapsed, the text ends with an empty line (``"\\n\\n"`` ends a CIF while sampling).

Prompts: ``data_<cell formula>\\n`` (composition × formula units), or, with a space group,
that line + the atom-properties block + ``_symmetry_space_group_name_H-M <symbol>\\n`` — the
same text the reference's ``make_prompts.py --with-spacegroup`` cuts from canonical CIFs.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING

from crystal.elements import parse_formula
from crystal.errors import ConfigError, StructureError
from crystal_crystallm.spacegroups import SPACE_GROUP_SYMBOLS
from crystal_crystallm.vocab import ELEMENTS

if TYPE_CHECKING:
    from pymatgen.core import Composition, Structure

__all__ = [
    "DECIMALS",
    "SYMPREC",
    "atom_props_block",
    "canonical_cif",
    "canonical_from_cif",
    "cell_formula",
    "make_prompt",
    "parse_composition",
    "round_numbers",
]

#: CifWriter symmetry tolerance of the reference's ``prepare_csv_benchmark.py`` (Å)
SYMPREC = 0.1
#: decimals kept by the reference's ``preprocess.py``
DECIMALS = 4

# fall-backs of the reference for noble gases lacking pymatgen data
_ALLEN_X = {"He": 4.16, "Ne": 4.79, "Ar": 3.24}
_NOBLE_VDW_RADIUS = {"He": 1.40, "Ne": 1.54, "Ar": 1.88, "Kr": 2.02, "Xe": 2.16, "Rn": 2.20}
_NUMBER = re.compile(r"[-+]?\d*\.\d+(?:[eE][-+]?\d+)?")
_SPACES = re.compile(r"[ \t]+")
_ELEMENT_SET = frozenset(ELEMENTS)


# --------------------------------------------------------------------------- compositions
def parse_composition(text: str, where: str = "crystallm") -> Composition:
    """``"SrTiO3"`` → pymatgen ``Composition`` with whole, positive counts of vocabulary elements.

    The formula is read by :func:`crystal.elements.parse_formula`; raises
    :class:`~crystal.errors.ConfigError` prefixed with ``where`` for an unparseable formula,
    an unknown element, a fractional count, no atoms, or an element outside CrystaLLM's 89.
    """
    from pymatgen.core import Composition

    try:
        amounts = parse_formula(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    for sym in amounts:
        if sym not in _ELEMENT_SET:
            raise ConfigError(
                f"{where}: composition {text!r}: element {sym} is not in CrystaLLM's vocabulary "
                f"(89 elements H–Pu without Po, At, Rn, Fr, Ra)"
            )
    return Composition(amounts)


def cell_formula(composition: Composition) -> str:
    """The ``data_`` formula of a cell: pymatgen's ``formula`` without spaces (``Sr1Ti1O3``).

    Elements are ordered by electronegativity, counts are written even when 1 — exactly the
    ``_chemical_formula_sum`` that ``CifWriter`` writes for that cell.
    """
    return composition.formula.replace(" ", "")


# --------------------------------------------------------------------------- blocks
def _fmt(value: float) -> str:
    return f"{float(value):.{DECIMALS}f}"


def atom_props_block(elements: Iterable[str]) -> list[str]:
    """Lines of the atom-properties loop for ``elements`` (sorted by electronegativity).

    Per element: Pauling electronegativity, atomic radius (Å), average ionic radius (Å), from
    pymatgen's element data (noble gases: Allen electronegativity and van der Waals radius,
    as the reference does).
    """
    from pymatgen.core import Element

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns on NaN electronegativities
        els = sorted({Element(e) for e in elements})
        rows = []
        for el in els:
            sym = el.symbol
            # the reference writes its noble-gas fall-backs unformatted (str of the float: 2.16, 1.4)
            x = float(el.X)
            if math.isnan(x):
                if sym not in _ALLEN_X:
                    raise StructureError(f"crystallm: no electronegativity for {sym}")
                x_text = str(_ALLEN_X[sym])
            else:
                x_text = _fmt(x)
            radius = el.atomic_radius
            if radius is None:
                if sym not in _NOBLE_VDW_RADIUS:
                    raise StructureError(f"crystallm: no atomic radius for {sym}")
                radius_text = str(_NOBLE_VDW_RADIUS[sym])
            else:
                radius_text = _fmt(float(radius))
            rows.append(f"{sym} {x_text} {radius_text} {_fmt(float(el.average_ionic_radius))}")
    return [
        "loop_",
        "_atom_type_symbol",
        "_atom_type_electronegativity",
        "_atom_type_radius",
        "_atom_type_ionic_radius",
        *rows,
    ]


def round_numbers(line: str, decimals: int = DECIMALS) -> str:
    """Round every decimal number in ``line`` with more than ``decimals`` decimals."""

    def repl(m: re.Match[str]) -> str:
        s = m.group()
        if "e" not in s.lower() and len(s.split(".")[-1]) <= decimals:
            return s
        return f"{round(float(s), decimals):.{decimals}f}"

    return _NUMBER.sub(repl, line)


# --------------------------------------------------------------------------- canonical CIFs
def canonical_cif(structure: Structure, *, symprec: float = SYMPREC, decimals: int = DECIMALS) -> str:
    """CrystaLLM's canonical text of ``structure`` (see the module docstring).

    Raises :class:`~crystal.errors.StructureError` for disordered structures, elements outside
    the vocabulary, or when symmetrisation fails.
    """
    from pymatgen.io.cif import CifWriter

    if not structure.is_ordered:
        raise StructureError("crystallm: disordered structures (partial occupancies) have no canonical CIF")
    outside = sorted({e.symbol for e in structure.composition.elements} - _ELEMENT_SET)
    if outside:
        raise StructureError(f"crystallm: element(s) {', '.join(outside)} are not in CrystaLLM's vocabulary")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = str(CifWriter(structure, symprec=symprec))
    except Exception as exc:  # spglib / pymatgen failures
        raise StructureError(f"crystallm: symmetrising the structure failed: {exc}") from None
    return _canonical_text(raw, decimals)


def canonical_from_cif(cif: str, *, symprec: float = SYMPREC, decimals: int = DECIMALS) -> str:
    """Canonical text of the (first) structure in CIF text ``cif``."""
    from pymatgen.core import Structure

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_str(cif, fmt="cif")
    except Exception as exc:
        raise StructureError(f"crystallm: cannot parse CIF: {exc}") from None
    return canonical_cif(structure, symprec=symprec, decimals=decimals)


def _canonical_text(raw: str, decimals: int) -> str:
    lines = [_SPACES.sub(" ", ln.strip()) for ln in raw.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#") and "pymatgen" not in ln]
    fields = {ln.split(" ", 1)[0]: ln for ln in lines if ln.startswith("_")}
    try:
        formula_sum = fields["_chemical_formula_sum"].split(" ", 1)[1].replace("'", "").replace(" ", "")
        ops = lines.index("_symmetry_equiv_pos_as_xyz")
        identity = lines[ops + 1]
    except (KeyError, ValueError, IndexError) as exc:
        raise StructureError(f"crystallm: unexpected CifWriter output (missing {exc})") from None
    if identity != "1 'x, y, z'":
        raise StructureError(f"crystallm: first symmetry operation is {identity!r}, expected the identity")
    from pymatgen.core import Composition

    out: list[str] = []
    in_ops = False  # inside the rows of the symmetry-operation loop
    for i, ln in enumerate(lines):
        if in_ops:
            if not ln.startswith(("_", "loop_")):
                continue  # semi-symmetrised: the other operators follow from the space group
            in_ops = False
        if ln.startswith("data_"):
            out.append(f"data_{formula_sum}")
        elif ln.startswith("_symmetry_space_group_name_H-M"):
            out.extend(atom_props_block(e.symbol for e in Composition(formula_sum).elements))
            out.append(ln)
        elif i == ops:
            out.extend((ln, identity))
            in_ops = True
        else:
            out.append(ln)
    return "\n".join(round_numbers(ln, decimals) for ln in out) + "\n\n"


# --------------------------------------------------------------------------- prompts
def make_prompt(composition: Composition, space_group: int | None = None) -> str:
    """The prompt for a cell of ``composition`` (counts per cell), optionally in ``space_group``."""
    text = f"data_{cell_formula(composition)}\n"
    if space_group is None:
        return text
    if not 1 <= int(space_group) <= 230:
        raise ConfigError(f"crystallm: space group {space_group} is outside 1–230")
    block = atom_props_block(e.symbol for e in composition.elements)
    return text + "\n".join(block) + f"\n_symmetry_space_group_name_H-M {SPACE_GROUP_SYMBOLS[int(space_group) - 1]}\n"
