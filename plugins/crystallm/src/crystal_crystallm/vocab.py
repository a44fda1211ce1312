"""CrystaLLM's token vocabulary (Antunes, Butler & Grau-Crespo, Nat. Commun. 15, 10570 (2024)).

Token ids are those of the reference tokenizer (``crystallm/_tokenizer.py`` of
https://github.com/lantunes/CrystaLLM at 8e81a86), so that the released models' embedding rows
and logits line up with our ids. The reference vocabulary (:data:`REFERENCE_TOKENS`, 371 ids,
the ``vocab_size`` of every released model) is, in this order:

==============  ====  =====================================================================
class           size  tokens (in the reference's order, which is not alphabetical)
==============  ====  =====================================================================
elements          89  the element symbols of CrystaLLM's corpus (H–Pu less Po, At, Rn, Fr, Ra)
digits            10  ``0`` … ``9`` (numbers are spelled digit by digit)
keywords          31  the CIF tags pymatgen's ``CifWriter`` writes, ``loop_``, ``data_``,
                      then the five ``_atom_type_*`` tags of the atom-properties block
symbols           13  ``x y z . ( ) + - / ' ,``, space, newline
space groups     227  one token per Hermann–Mauguin symbol (``<symbol>_sg``); it only follows
                      ``_symmetry_space_group_name_H-M`` (so ``Pm`` the group is not ``Pm``
                      the element, and ``P1`` is not ``P`` + ``1``). The reference's
                      ``spacegroups.txt`` lacks P4_222 (93), P6 (168) and P432 (207): their
                      symbols are spelled with element and digit tokens
unknown            1  ``<unk>`` (id 370)
==============  ====  =====================================================================

Our own models (:data:`TOKENS`, 375 ids) append the three missing space groups (ids
371–373) and ``<pad>`` (id 374, padding of training batches and finished samples), so the
reference ids are a prefix of ours. Space-group tokens decode to the bare symbol (:data:`TEXTS`).
"""

from __future__ import annotations

from crystal_crystallm.spacegroups import SPACE_GROUP_SYMBOLS

__all__ = [
    "DIGITS",
    "ELEMENTS",
    "EXTRA_SPACE_GROUP_SYMBOLS",
    "KEYWORDS",
    "PAD",
    "REFERENCE_SPACE_GROUP_SYMBOLS",
    "REFERENCE_TOKENS",
    "REFERENCE_VOCAB_SIZE",
    "SPACE_GROUP_SYMBOLS",
    "SPACE_GROUP_TOKENS",
    "SYMBOLS",
    "TEXTS",
    "TOKENS",
    "UNK",
    "VOCAB_SIZE",
    "sg_token",
]

#: element symbols of CrystaLLM's vocabulary, in the reference's (id) order
ELEMENTS: tuple[str, ...] = (
    "Si", "C", "Pb", "I", "Br", "Cl", "Eu", "O", "Fe", "Sb", "In", "S", "N", "U", "Mn", "Lu", "Se", "Tl", "Hf",
    "Ir", "Ca", "Ta", "Cr", "K", "Pm", "Mg", "Zn", "Cu", "Sn", "Ti", "B", "W", "P", "H", "Pd", "As", "Co", "Np",
    "Tc", "Hg", "Pu", "Al", "Tm", "Tb", "Ho", "Nb", "Ge", "Zr", "Cd", "V", "Sr", "Ni", "Rh", "Th", "Na", "Ru", "La",
    "Re", "Y", "Er", "Ce", "Pt", "Ga", "Li", "Cs", "F", "Ba", "Te", "Mo", "Gd", "Pr", "Bi", "Sc", "Ag", "Rb", "Dy",
    "Yb", "Nd", "Au", "Os", "Pa", "Sm", "Be", "Ac", "Xe", "Kr", "He", "Ne", "Ar",
)  # fmt: skip

DIGITS: tuple[str, ...] = tuple(str(d) for d in range(10))

#: CIF tags, in the reference's (id) order; the last five belong to the atom-properties block
KEYWORDS: tuple[str, ...] = (
    "_cell_length_b", "_atom_site_occupancy", "_atom_site_attached_hydrogens", "_cell_length_a", "_cell_angle_beta",
    "_symmetry_equiv_pos_as_xyz", "_cell_angle_gamma", "_atom_site_fract_x", "_symmetry_space_group_name_H-M",
    "_symmetry_Int_Tables_number", "_chemical_formula_structural", "_chemical_name_systematic",
    "_atom_site_fract_y", "_atom_site_symmetry_multiplicity", "_chemical_formula_sum", "_atom_site_label",
    "_atom_site_type_symbol", "_cell_length_c", "_atom_site_B_iso_or_equiv", "_symmetry_equiv_pos_site_id",
    "_cell_volume", "_atom_site_fract_z", "_cell_angle_alpha", "_cell_formula_units_Z", "loop_", "data_",
    "_atom_type_symbol", "_atom_type_electronegativity", "_atom_type_radius", "_atom_type_ionic_radius",
    "_atom_type_oxidation_number",
)  # fmt: skip

SYMBOLS: tuple[str, ...] = ("x", "y", "z", ".", "(", ")", "+", "-", "/", "'", ",", " ", "\n")

#: the 227 space-group symbols of the reference vocabulary, in its (id) order
REFERENCE_SPACE_GROUP_SYMBOLS: tuple[str, ...] = (
    "P6/mmm", "Imma", "P4_32_12", "P4_2/mnm", "Fd-3m", "P3m1", "P-3", "P4mm", "P4_332", "P4/nnc", "P2_12_12",
    "Pnn2", "Pbcn", "P4_2/n", "Cm", "R3m", "Cmce", "Aea2", "P-42_1m", "P-42m", "P2_13", "R-3", "Fm-3", "Cmm2",
    "Pn-3n", "P6/mcc", "P-6m2", "P3_2", "P-3m1", "P3_212", "I23", "P-62m", "P4_2nm", "Pma2", "Pmma", "I-42m",
    "P-31c", "Pa-3", "Pmmn", "Pmmm", "P4_2/ncm", "I4/mcm", "I-4m2", "P3_1", "Pcc2", "Cmcm", "I222", "Fddd", "P312",
    "Cccm", "P6_1", "F-43c", "P6_322", "Pm-3", "P3_121", "P6_4", "Ia-3d", "Pm-3m", "P2_1/c", "C222_1", "Pc", "P4/n",
    "Pba2", "Ama2", "Pbcm", "P31m", "Pcca", "P222", "P-43n", "Pccm", "P6_422", "F23", "P42_12", "C222", "Pnnn",
    "P6_3cm", "P4_12_12", "P6/m", "Fmm2", "I4_1/a", "P4/mbm", "Pmn2_1", "P4_2bc", "P4_22_12", "I-43d", "I4/m",
    "P4bm", "Fdd2", "P3", "P6_122", "Pnc2", "P4_2/mcm", "P4_122", "Cmc2_1", "P-6c2", "R32", "P4_1", "P4_232",
    "Pnna", "P422", "Pban", "Cc", "I4_122", "P6_3/m", "P6_3mc", "I4_1/amd", "P4_2", "P4/nmm", "Pmna", "P4/m",
    "Fm-3m", "P4/mmm", "Imm2", "P4/ncc", "P-62c", "Ima2", "P6_5", "P2/c", "P4/nbm", "Ibam", "P6_522", "P6_3/mmc",
    "I4/mmm", "Fmmm", "P2/m", "P-4b2", "I-4", "C2/m", "P4_2/mmc", "P4", "Fd-3c", "P4_3", "P2_1/m", "I-43m", "P-42c",
    "F4_132", "Pm", "Pccn", "P-4n2", "P4_132", "P23", "I4cm", "R3c", "Amm2", "Immm", "Iba2", "I4", "Fd-3", "P1",
    "Pbam", "P4_2/nbc", "Im-3", "P4_2/nnm", "Pmc2_1", "P-31m", "R-3m", "Ia-3", "P622", "F222", "P2", "P-1", "Pmm2",
    "P-4", "Aem2", "P6_222", "P-3c1", "P4_322", "I422", "Pnma", "P6_3", "P3c1", "Pn-3", "P4nc", "P-6", "P4/mcc",
    "I2_12_12_1", "P4_2/mbc", "P31c", "Ccc2", "P4_2/nmc", "P6_3/mcm", "C2", "Pbca", "P-4c2", "I4_1cd", "P2_1",
    "P3_112", "P4_2mc", "Pn-3m", "C2/c", "R3", "P-43m", "I432", "P222_1", "I-42d", "I-4c2", "P6cc", "P6_2",
    "P3_221", "P321", "Pca2_1", "I4_1/acd", "I4_132", "F432", "Pna2_1", "Ccce", "Ibca", "P4/mnc", "I4_1md",
    "P2_12_12_1", "R-3c", "I2_13", "P-4m2", "Pm-3n", "I4mm", "F-43m", "Pnnm", "P-42_1c", "Cmmm", "P6mm", "P4_2cm",
    "P4_2/m", "Im-3m", "Fm-3c", "I4_1", "P4cc", "Cmme",
)  # fmt: skip

#: the space groups the reference vocabulary lacks (tokens of ours only)
EXTRA_SPACE_GROUP_SYMBOLS: tuple[str, ...] = tuple(
    s for s in SPACE_GROUP_SYMBOLS if s not in REFERENCE_SPACE_GROUP_SYMBOLS
)

UNK = "<unk>"
PAD = "<pad>"

#: token names of the released models; the id of a token is its index
REFERENCE_TOKENS: tuple[str, ...] = (
    *ELEMENTS,
    *DIGITS,
    *KEYWORDS,
    *SYMBOLS,
    *(f"{s}_sg" for s in REFERENCE_SPACE_GROUP_SYMBOLS),
    UNK,
)
REFERENCE_VOCAB_SIZE = len(REFERENCE_TOKENS)

#: token names of our models: the reference's, the three missing space groups, ``<pad>``
TOKENS: tuple[str, ...] = (*REFERENCE_TOKENS, *(f"{s}_sg" for s in EXTRA_SPACE_GROUP_SYMBOLS), PAD)
VOCAB_SIZE = len(TOKENS)

#: token names of the 230 space groups, by international number
SPACE_GROUP_TOKENS: tuple[str, ...] = tuple(f"{s}_sg" for s in SPACE_GROUP_SYMBOLS)

#: the text each token id decodes to (space-group tokens lose their ``_sg``; ``<pad>`` is empty)
TEXTS: tuple[str, ...] = tuple("" if t == PAD else t.removesuffix("_sg") for t in TOKENS)

assert len(set(TOKENS)) == VOCAB_SIZE, "duplicate tokens in the CrystaLLM vocabulary"
assert (len(ELEMENTS), len(KEYWORDS), len(REFERENCE_SPACE_GROUP_SYMBOLS)) == (89, 31, 227)
assert set(REFERENCE_SPACE_GROUP_SYMBOLS) <= set(SPACE_GROUP_SYMBOLS) and len(EXTRA_SPACE_GROUP_SYMBOLS) == 3


def sg_token(number: int) -> str:
    """Token name of space group ``number`` (1–230), e.g. ``221 → 'Pm-3m_sg'``."""
    return SPACE_GROUP_TOKENS[number - 1]
