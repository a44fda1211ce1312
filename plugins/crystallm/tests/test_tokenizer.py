"""CrystaLLM tokenizer, canonical CIFs, prompts and post-processing checks."""

from __future__ import annotations

import re
import warnings

import pytest
import torch

from crystal.errors import ConfigError, StructureError
from crystal_crystallm.canonical import (
    atom_props_block,
    canonical_cif,
    canonical_from_cif,
    make_prompt,
    parse_composition,
    round_numbers,
)
from crystal_crystallm.checks import check_cif, declared_space_group, postprocess, restore_symmetry_operators
from crystal_crystallm.spacegroups import SPACE_GROUP_SYMBOLS
from crystal_crystallm.tokenizer import tokenizer
from crystal_crystallm.vocab import DIGITS, ELEMENTS, KEYWORDS, SYMBOLS, TOKENS, VOCAB_SIZE

TOK = tokenizer()


# --------------------------------------------------------------------------- vocabulary
def test_vocabulary_classes_and_ids():
    assert (len(ELEMENTS), len(DIGITS), len(KEYWORDS), len(SYMBOLS), len(SPACE_GROUP_SYMBOLS)) == (89, 10, 31, 13, 230)
    assert VOCAB_SIZE == len(TOKENS) == 89 + 10 + 31 + 13 + 230 + 2
    assert len(set(TOKENS)) == VOCAB_SIZE
    assert (
        SPACE_GROUP_SYMBOLS[0] == "P1"
        and SPACE_GROUP_SYMBOLS[220] == "Pm-3m"
        and SPACE_GROUP_SYMBOLS[193] == "P6_3/mmc"
    )
    # the 230 symbols are those spglib/pymatgen use for the standard settings
    from pymatgen.symmetry.groups import SpaceGroup

    for n in (1, 14, 62, 139, 166, 194, 225, 227):
        assert SpaceGroup(SPACE_GROUP_SYMBOLS[n - 1]).int_number == n


def test_longest_token_wins_and_labels_split():
    assert TOK.tokenize("Ti Ti0 _cell_length_a 4.0563\n") == [
        "Ti",
        " ",
        "Ti",
        "0",
        " ",
        "_cell_length_a",
        " ",
        "4",
        ".",
        "0",
        "5",
        "6",
        "3",
        "\n",
    ]
    assert TOK.tokenize("In I Sn S") == ["In", " ", "I", " ", "Sn", " ", "S"]


def test_space_group_tokens_only_after_the_tag():
    text = "_symmetry_space_group_name_H-M Pm\nPm Pm1 P1\n_symmetry_space_group_name_H-M P1\n"
    toks = TOK.tokenize(text)
    assert toks[:4] == ["_symmetry_space_group_name_H-M", " ", "Pm_sg", "\n"]
    assert toks[4:11] == ["Pm", " ", "Pm", "1", " ", "P", "1"]  # the element Pm, P and 1 elsewhere
    assert toks[-2:] == ["P1_sg", "\n"]
    assert TOK.decode(TOK.encode(text)) == text


def test_unknown_text_and_spaces():
    assert TOK.tokenize("Qq ;") == ["<unk>", " ", "<unk>"]
    assert TOK.encode("a  \t b") == TOK.encode("a b")  # runs of blanks collapse
    assert TOK.unk_id in TOK.encode("_cell_length_q 1")


def test_encode_batch_pads_and_limits():
    ids = TOK.encode_batch(["data_C8\n", "data_\n"])
    assert ids.shape == (2, 4) and int(ids[1, -1]) == TOK.pad_id
    assert TOK.decode_batch(ids) == ["data_C8\n", "data_\n"]
    with pytest.raises(ConfigError, match="text 0 has 4 tokens"):
        TOK.encode_batch(["data_C8\n"], max_length=3)
    with pytest.raises(ConfigError, match="token ids"):
        TOK.decode([VOCAB_SIZE])


# --------------------------------------------------------------------------- canonical CIFs
def test_canonical_cif_layout(make_perovskite):
    text = canonical_cif(make_perovskite("Sr", "Ti", "O", 3.905123456))
    lines = text.split("\n")
    assert lines[0] == "data_Sr1Ti1O3" and text.endswith(" 1\n\n") and not text.endswith("\n\n\n")
    i = lines.index("_symmetry_space_group_name_H-M Pm-3m")
    assert lines[1:i] == atom_props_block(["O", "Ti", "Sr"])
    assert lines[6].startswith("Sr ") and lines[8].startswith("O ")  # sorted by electronegativity
    assert "_cell_length_a 3.9051" in lines  # rounded to 4 decimals
    k = lines.index("_symmetry_equiv_pos_as_xyz")
    assert lines[k + 1 : k + 3] == ["1 'x, y, z'", "loop_"]  # semi-symmetrised
    assert "  " not in text and "pymatgen" not in text
    assert TOK.decode(TOK.encode(text)) == text and TOK.unk_id not in TOK.encode(text)


def test_canonical_cell_is_standardised(make_perovskite):
    """A rotated, translated, permuted supercell gives the same canonical text (Z=2 cell aside)."""
    s = make_perovskite("Ba", "Ti", "O", 4.0)
    ref = canonical_cif(s)
    t = s.copy()
    t.translate_sites(list(range(len(t))), [0.13, 0.41, 0.77])
    t = t.get_sorted_structure(key=lambda site: -site.specie.Z)
    assert canonical_cif(t) == ref
    assert canonical_cif(s * (2, 1, 1)) == ref  # the refined cell is the conventional one


def test_prompts_are_prefixes_of_canonical_text(make_perovskite):
    s = make_perovskite("K", "Nb", "O", 4.02)
    text = canonical_cif(s)
    comp = s.composition
    assert text.startswith(make_prompt(comp))
    assert text.startswith(make_prompt(comp, 221))
    assert make_prompt(parse_composition("SrTiO3") * 2) == "data_Sr2Ti2O6\n"
    with pytest.raises(ConfigError, match="outside 1–230"):
        make_prompt(comp, 231)


def test_round_numbers():
    assert round_numbers("1.23456 -0.000049 2.5 1.0 7 1e-3") == "1.2346 -0.0000 2.5 1.0 7 1e-3"
    assert round_numbers("x 0.99999") == "x 1.0000"


def test_bad_structures_raise(make_perovskite):
    s = make_perovskite("Sr", "Ti", "O", 3.9)
    s.replace_species({"Sr": {"Sr": 0.5, "Ca": 0.5}})
    with pytest.raises(StructureError, match="disordered"):
        canonical_cif(s)
    with pytest.raises(StructureError, match="vocabulary"):
        canonical_cif(make_perovskite("Fr", "Ti", "O", 4.2))
    with pytest.raises(StructureError, match="cannot parse"):
        canonical_from_cif("not a cif")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("Xx2O", "unknown element 'Xx'"),
        ("Fr2O", "not in CrystaLLM's vocabulary"),
        ("Na0Cl0", "no atoms"),
        ("C0.5", "whole"),
        ("  ", "formula such as"),
        ("((", "cannot parse"),
    ],
)
def test_parse_composition_errors(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_composition(text)


# --------------------------------------------------------------------------- post-processing and checks
def test_postprocess_restores_operators_and_parses_back(make_perovskite):
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Structure

    s = make_perovskite("Sr", "Ti", "O", 3.905)
    text = canonical_cif(s)
    assert declared_space_group(text) == "Pm-3m"
    full = restore_symmetry_operators(text)
    assert len(re.findall(r"^\d+ '", full, flags=re.M)) == 48  # Pm-3m has 48 operations
    cif = postprocess(text)
    assert "_atom_type_symbol" not in cif and cif.startswith("data_Sr1Ti1O3\n_symmetry_space_group_name_H-M")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back = Structure.from_str(cif, fmt="cif")
    assert len(back) == 5 and StructureMatcher().fit(back, s)


def test_checks_pass_on_real_structures(make_perovskite):
    s = make_perovskite("Sr", "Ti", "O", 3.905)
    res = check_cif(canonical_cif(s), expected=s.composition, expected_space_group=221)
    assert res.valid, res.reason
    assert res.bond_score == 1.0 and res.detected_space_group == "Pm-3m"


def test_checks_name_each_failure(make_perovskite):
    from pymatgen.core import Composition

    s = make_perovskite("Sr", "Ti", "O", 3.905)
    text = canonical_cif(s)
    assert check_cif("data_Sr1Ti1O3\nloop_\n_atom").reason.startswith("parse:")
    wrong_prompt = check_cif(text, expected=Composition("Sr2Ti2O6"))
    assert wrong_prompt.reason.startswith("formula:") and "prompt" in wrong_prompt.reason
    bad_sum = check_cif(text.replace("_chemical_formula_sum 'Sr1 Ti1 O3'", "_chemical_formula_sum 'Sr1 Ti1 O2'"))
    assert bad_sum.reason.startswith("formula:")
    bad_mult = check_cif(text.replace("O O2 3", "O O2 6"))
    assert bad_mult.reason.startswith("formula:") and "multiplicities" in bad_mult.reason
    squeezed = canonical_cif(make_perovskite("Sr", "Ti", "O", 2.6))
    low = check_cif(squeezed)
    assert low.reason.startswith("bond_lengths:") and low.bond_score < 1.0
    assert check_cif(squeezed, bond_length_cutoff=0.0).valid
    assert check_cif(squeezed, check_bond_lengths=False).valid
    # the five atoms written out in P1: consistent formula, but spglib finds Pm-3m
    o_rows = "O O2 1 0.0000 0.5000 0.5000 1\nO O3 1 0.5000 0.0000 0.5000 1\nO O4 1 0.5000 0.5000 0.0000 1"
    p1 = text.replace("H-M Pm-3m", "H-M P1").replace("O O2 3 0.0000 0.5000 0.5000 1", o_rows)
    assert check_cif(p1, check_space_group=False).valid
    res = check_cif(p1)
    assert res.reason == "space_group: declared P1, found Pm-3m", res.reason
    assert check_cif(text, expected_space_group=225).reason.startswith("space_group:")


# --------------------------------------------------------------------------- the shared test sets
@pytest.mark.shared_data
@pytest.mark.parametrize("dataset", ["perov_5", "carbon_24"])
def test_round_trip_subset_of_test_sets(dataset, shared_cifs):
    """Fast subset: the first 25 test CIFs of each set (the slow test below does all of them)."""
    _round_trip(shared_cifs(dataset, "test", 25))


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.parametrize("dataset", ["perov_5", "carbon_24"])
def test_round_trip_every_test_cif(dataset, shared_cifs):
    """Every CIF of the Perov-5 (3785) and Carbon-24 (2030) test sets, canonicalised (~1 min)."""
    _round_trip(shared_cifs(dataset, "test"))


def _round_trip(cifs: list[str]) -> None:
    texts = [canonical_from_cif(c) for c in cifs]
    ids = TOK.encode_batch(texts)
    assert not bool((ids == TOK.unk_id).any()), "unknown tokens in canonical CIFs"
    decoded = TOK.decode_batch(ids)
    bad = [i for i, (a, b) in enumerate(zip(decoded, texts)) if a != b]
    assert not bad, f"{len(bad)} of {len(texts)} CIFs do not round-trip, e.g. #{bad[0]}"
    # and one by one, without padding
    assert all(TOK.decode(TOK.encode(t)) == t for t in texts[:: max(1, len(texts) // 50)])
    assert torch.equal(ids[0, : len(TOK.encode(texts[0]))], torch.tensor(TOK.encode(texts[0])))
