"""CrystaLLM's token vocabulary (Antunes, Butler & Grau-Crespo, Nat. Commun. 15, 10570 (2024)).

The token classes are those of the reference tokenizer with atomic properties and symmetry
(``CIFSymmPropsTokenizer``):

==============  ====  =====================================================================
class           size  tokens
==============  ====  =====================================================================
elements          89  the element symbols of CrystaLLM's training corpus (H–Pu less Po,
                      At, Rn, Fr, Ra), here ordered by atomic number
digits            10  ``0`` … ``9`` (numbers are spelled digit by digit)
keywords          31  the CIF tags pymatgen's ``CifWriter`` writes, ``loop_``, ``data_``
                      and the four ``_atom_type_*`` tags of the atom-properties block
symbols           13  ``x y z . ( ) + - / ' ,``, space, newline
space groups     230  one token per Hermann–Mauguin symbol; it only follows
                      ``_symmetry_space_group_name_H-M`` (so ``Pm`` the group is not ``Pm``
                      the element, and ``P1`` is not ``P`` + ``1``)
special            2  ``<unk>`` (anything else) and ``<pad>`` (ours: padding of training
                      batches and finished samples)
==============  ====  =====================================================================

Token ids are positions in :data:`TOKENS` (375 in all). Space-group tokens are named
``<symbol>_sg`` (as in the reference) but decode to the bare symbol (:data:`TEXTS`).
"""

from __future__ import annotations

from crystal_crystallm.spacegroups import SPACE_GROUP_SYMBOLS

__all__ = [
    "DIGITS",
    "ELEMENTS",
    "KEYWORDS",
    "PAD",
    "SPACE_GROUP_SYMBOLS",
    "SPACE_GROUP_TOKENS",
    "SYMBOLS",
    "TEXTS",
    "TOKENS",
    "UNK",
    "VOCAB_SIZE",
    "sg_token",
]

#: element symbols of CrystaLLM's vocabulary, by atomic number
ELEMENTS: tuple[str, ...] = (
    "H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si", "P", "S", "Cl", "Ar",
    "K", "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga", "Ge", "As", "Se", "Br",
    "Kr", "Rb", "Sr", "Y", "Zr", "Nb", "Mo", "Tc", "Ru", "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te",
    "I", "Xe", "Cs", "Ba", "La", "Ce", "Pr", "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm",
    "Yb", "Lu", "Hf", "Ta", "W", "Re", "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Ac", "Th", "Pa",
    "U", "Np", "Pu",
)  # fmt: skip

DIGITS: tuple[str, ...] = tuple(str(d) for d in range(10))

KEYWORDS: tuple[str, ...] = (
    "data_",
    "loop_",
    "_symmetry_space_group_name_H-M",
    "_symmetry_Int_Tables_number",
    "_symmetry_equiv_pos_site_id",
    "_symmetry_equiv_pos_as_xyz",
    "_cell_length_a",
    "_cell_length_b",
    "_cell_length_c",
    "_cell_angle_alpha",
    "_cell_angle_beta",
    "_cell_angle_gamma",
    "_cell_volume",
    "_cell_formula_units_Z",
    "_chemical_formula_structural",
    "_chemical_formula_sum",
    "_chemical_name_systematic",
    "_atom_site_type_symbol",
    "_atom_site_label",
    "_atom_site_symmetry_multiplicity",
    "_atom_site_fract_x",
    "_atom_site_fract_y",
    "_atom_site_fract_z",
    "_atom_site_occupancy",
    "_atom_site_attached_hydrogens",
    "_atom_site_B_iso_or_equiv",
    # the atom-properties block (not CIF dictionary tags except the first and the last)
    "_atom_type_symbol",
    "_atom_type_electronegativity",
    "_atom_type_radius",
    "_atom_type_ionic_radius",
    "_atom_type_oxidation_number",
)

SYMBOLS: tuple[str, ...] = ("x", "y", "z", ".", "(", ")", "+", "-", "/", "'", ",", " ", "\n")

SPACE_GROUP_TOKENS: tuple[str, ...] = tuple(f"{s}_sg" for s in SPACE_GROUP_SYMBOLS)

UNK = "<unk>"
PAD = "<pad>"

#: token names; the id of a token is its index
TOKENS: tuple[str, ...] = (*ELEMENTS, *DIGITS, *KEYWORDS, *SYMBOLS, *SPACE_GROUP_TOKENS, UNK, PAD)
#: the text each token id decodes to (space-group tokens lose their ``_sg``; ``<pad>`` is empty)
TEXTS: tuple[str, ...] = (*ELEMENTS, *DIGITS, *KEYWORDS, *SYMBOLS, *SPACE_GROUP_SYMBOLS, UNK, "")
VOCAB_SIZE = len(TOKENS)

assert len(set(TOKENS)) == VOCAB_SIZE, "duplicate tokens in the CrystaLLM vocabulary"


def sg_token(number: int) -> str:
    """Token name of space group ``number`` (1–230), e.g. ``221 → 'Pm-3m_sg'``."""
    return SPACE_GROUP_TOKENS[number - 1]
