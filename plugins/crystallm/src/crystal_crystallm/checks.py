"""Post-processing and validity checks of generated CIFs (the reference's ``postprocess.py`` and
``is_valid``; our code).

Post-processing (:func:`postprocess`): the symmetry operators, dropped from the training text,
are restored from the declared space-group symbol (pymatgen ``SpaceGroup(symbol).symmetry_ops``);
the atom-properties block is removed.

Checks (:func:`check_cif`), in the reference's order, the first failure naming the reason:

``parse``        pymatgen parses the CIF into an ordered structure with a sensible cell (the
                 reference's ``is_sensible``: lengths 0.5–1000 Å, angles 10–170°)
``formula``      the ``data_`` formula, ``_chemical_formula_sum`` and
                 ``_chemical_formula_structural`` have one reduced formula (``is_formula_consistent``);
                 the site multiplicities add up to ``_chemical_formula_sum``
                 (``is_atom_site_multiplicity_consistent``); and (ours) the parsed cell has exactly
                 the composition of the prompt (Z × the requested formula)
``bond_lengths`` the bond-length reasonableness score ≥ ``bond_length_cutoff`` (reference 1.0): over
                 the CrystalNN bonds of every site, the fraction whose length lies within
                 ``(1 ± tolerance) ×`` the expected length (sum of ionic radii — average cationic +
                 anionic — when the Pauling electronegativity difference is ≥ 1.7, of atomic
                 radii otherwise; bonds to H only need a ratio < ``h_factor``)
``space_group``  spglib (``symprec`` 0.1 Å) finds the declared space group in the structure
                 (``is_space_group_consistent``), and the declared group is the requested one
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pymatgen.core import Composition, Structure

__all__ = [
    "CIFCheck",
    "bond_length_score",
    "check_cif",
    "postprocess",
    "remove_atom_props_block",
    "restore_symmetry_operators",
]

CHECKS = ("parse", "formula", "bond_lengths", "space_group")

_SG = re.compile(r"_symmetry_space_group_name_H-M[ \t]+('([^'\n]+)'|(\S+))")
_OPS = re.compile(r"(_symmetry_equiv_pos_as_xyz\n)[ \t]*1[ \t]+'x, y, z'\n")
_PROPS = re.compile(r"(data_[^\n]*\n)loop_\n_atom_type_symbol\n[\s\S]*?(?=_symmetry_space_group_name_H-M)")
_DATA = re.compile(r"data_([A-Za-z0-9]+)\n")


def declared_space_group(cif: str) -> str | None:
    """The ``_symmetry_space_group_name_H-M`` symbol of ``cif`` (``None`` if absent)."""
    m = _SG.search(cif)
    return None if m is None else (m.group(2) or m.group(3)).strip()


def restore_symmetry_operators(cif: str) -> str:
    """Replace the lone ``1 'x, y, z'`` operator row by all operators of the declared group."""
    symbol = declared_space_group(cif)
    if symbol is None or symbol in ("P1", "P 1"):
        return cif
    from pymatgen.symmetry.groups import SpaceGroup

    ops = SpaceGroup(symbol).symmetry_ops  # raises ValueError for an unknown symbol
    rows = "".join(f"{i} '{op.as_xyz_str()}'\n" for i, op in enumerate(ops, start=1))
    return _OPS.sub(lambda m: m.group(1) + rows, cif, count=1)


def remove_atom_props_block(cif: str) -> str:
    """Drop the atom-properties loop between the ``data_`` line and the space-group line."""
    return _PROPS.sub(r"\1", cif, count=1)


def postprocess(cif: str) -> str:
    """Generated text → a standard CIF (operators restored, properties block removed)."""
    return remove_atom_props_block(restore_symmetry_operators(cif))


# --------------------------------------------------------------------------- bond lengths
def bond_length_score(structure: Structure, tolerance: float = 0.32, h_factor: float = 2.5) -> float:
    """Fraction of CrystalNN bonds with a reasonable length (see the module docstring); 0 with none."""
    nn = _crystal_nn()
    good = 0
    total = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, site in enumerate(structure):
            for info in nn.get_nn_info(structure, i):
                if info["site_index"] == i:
                    continue
                other = info["site"]
                a, b = site.specie, other.specie
                length = site.distance(other)
                if "H" in (a.symbol, b.symbol):
                    good += int(length / _expected_length(a, b) < h_factor)
                else:
                    ratio = length / _expected_length(a, b)
                    good += int(1 - tolerance < ratio < 1 + tolerance)
                total += 1
    return good / total if total else 0.0


@cache
def _crystal_nn() -> Any:
    """One CrystalNN (building one reads its data files: ~2 s; it keeps no per-structure state)."""
    from pymatgen.analysis.local_env import CrystalNN

    return CrystalNN()


def _expected_length(a: Any, b: Any) -> float:
    if abs(a.X - b.X) >= 1.7:  # ionic: cation radius of the less electronegative + anion radius
        cation, anion = (a, b) if a.X < b.X else (b, a)
        return float(cation.average_cationic_radius + anion.average_anionic_radius)
    return float(a.atomic_radius + b.atomic_radius)


# --------------------------------------------------------------------------- the checks
@dataclass
class CIFCheck:
    """Outcome of :func:`check_cif` for one generated text."""

    text: str
    cif: str | None = None
    structure: Structure | None = None
    passed: dict[str, bool] = field(default_factory=dict)
    bond_score: float | None = None
    declared_space_group: str | None = None
    detected_space_group: str | None = None
    reason: str | None = None

    @property
    def valid(self) -> bool:
        return self.reason is None and all(self.passed.get(c, False) for c in CHECKS)


def _fail(res: CIFCheck, check: str, why: str) -> CIFCheck:
    res.passed[check] = False
    res.reason = f"{check}: {why}"
    return res


def check_cif(
    text: str,
    *,
    expected: Composition | None = None,
    expected_space_group: int | None = None,
    bond_length_cutoff: float = 1.0,
    bond_length_tolerance: float = 0.32,
    symprec: float = 0.1,
    check_bond_lengths: bool = True,
    check_space_group: bool = True,
) -> CIFCheck:
    """Post-process and check one generated CIF; ``expected`` is the prompt's cell composition.

    Disabled checks count as passed. Never raises for bad text: the failure is in ``reason``.
    """
    from pymatgen.core import Composition, Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    res = CIFCheck(text=text)
    res.declared_space_group = declared_space_group(text)
    # ---- parse
    try:
        cif = postprocess(text)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_str(cif, fmt="cif")
    except Exception as exc:  # any parse failure of generated text
        return _fail(res, "parse", f"{type(exc).__name__}: {exc}"[:200])
    res.cif, res.structure = cif, structure
    if len(structure) == 0 or not structure.is_ordered:
        return _fail(res, "parse", "no atoms or partial occupancies")
    a, b, c = structure.lattice.abc
    angles = structure.lattice.angles
    if not all(0.5 <= x <= 1000.0 for x in (a, b, c)) or not all(10.0 <= x <= 170.0 for x in angles):
        return _fail(res, "parse", f"cell lengths {a:.3g}, {b:.3g}, {c:.3g} Å / angles {angles} out of range")
    res.passed["parse"] = True
    # ---- formula
    try:
        data = _DATA.search(text)
        fields = _fields(cif)
        header = Composition(data.group(1)) if data else None
        total = Composition(fields["_chemical_formula_sum"])
        structural = Composition(fields["_chemical_formula_structural"])
        mult = _multiplicity_counts(cif)
    except Exception as exc:
        return _fail(res, "formula", f"missing or unreadable formula fields ({type(exc).__name__}: {exc})"[:200])
    if header is None or not header.reduced_formula == total.reduced_formula == structural.reduced_formula:
        return _fail(res, "formula", "data_, _chemical_formula_sum and _chemical_formula_structural disagree")
    if mult != {str(e): round(n) for e, n in total.items()}:
        return _fail(res, "formula", f"site multiplicities {mult} do not add up to {total.formula}")
    if structure.composition != total:
        return _fail(res, "formula", f"the cell holds {structure.composition.formula}, not {total.formula}")
    if expected is not None and structure.composition != expected:
        return _fail(res, "formula", f"the cell holds {structure.composition.formula}, prompt was {expected.formula}")
    res.passed["formula"] = True
    # ---- bond lengths
    if check_bond_lengths:
        try:
            res.bond_score = bond_length_score(structure, tolerance=bond_length_tolerance)
        except Exception as exc:  # CrystalNN failures count as unreasonable
            return _fail(res, "bond_lengths", f"CrystalNN failed: {type(exc).__name__}")
        if res.bond_score < bond_length_cutoff:
            return _fail(res, "bond_lengths", f"score {res.bond_score:.3f} < {bond_length_cutoff}")
    res.passed["bond_lengths"] = True
    # ---- space group
    if check_space_group:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sga = SpacegroupAnalyzer(structure, symprec=symprec)
                res.detected_space_group = sga.get_space_group_symbol()
                number = sga.get_space_group_number()
        except Exception as exc:
            return _fail(res, "space_group", f"spglib failed: {type(exc).__name__}")
        if res.detected_space_group != res.declared_space_group:
            return _fail(res, "space_group", f"declared {res.declared_space_group}, found {res.detected_space_group}")
        if expected_space_group is not None and number != expected_space_group:
            return _fail(res, "space_group", f"found group {number}, requested {expected_space_group}")
    res.passed["space_group"] = True
    return res


def _fields(cif: str) -> dict[str, str]:
    out = {}
    for line in cif.splitlines():
        if line.startswith("_") and " " in line:
            key, value = line.split(" ", 1)
            out[key] = value.strip().strip("'")
    return out


def _multiplicity_counts(cif: str) -> dict[str, int]:
    """``{element: Σ multiplicity}`` over the ``_atom_site`` loop of a canonical CIF."""
    lines = cif.splitlines()
    start = lines.index("_atom_site_type_symbol") - 1  # the loop_ line
    header = []
    i = start + 1
    while i < len(lines) and lines[i].startswith("_atom_site"):
        header.append(lines[i])
        i += 1
    col_el = header.index("_atom_site_type_symbol")
    col_m = header.index("_atom_site_symmetry_multiplicity")
    counts: dict[str, int] = {}
    for line in lines[i:]:
        parts = line.split()
        if not parts or parts[0].startswith(("_", "loop_")):
            break
        counts[parts[col_el]] = counts.get(parts[col_el], 0) + int(parts[col_m])
    return counts
