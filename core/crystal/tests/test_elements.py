"""crystal.elements.parse_formula and crystal.symmetry: the shared formula parser and crystal-system table."""

from __future__ import annotations

import pytest

from crystal.components import GenerationConditions
from crystal.elements import atomic_number, parse_formula, symbol
from crystal.errors import ConfigError
from crystal.symmetry import CRYSTAL_SYSTEMS, crystal_system, crystal_system_index, space_groups_of


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Li2MnO3", {"Li": 2, "Mn": 1, "O": 3}),
        ("SrTiO3", {"Sr": 1, "Ti": 1, "O": 3}),
        ("Ca(OH)2", {"Ca": 1, "O": 2, "H": 2}),
        ("K4[Fe(CN)6]", {"K": 4, "Fe": 1, "C": 6, "N": 6}),
        ("CH3COOH", {"C": 2, "H": 4, "O": 2}),
        ("Sr1 Ti1 O3", {"Sr": 1, "Ti": 1, "O": 3}),
        (" C8 ", {"C": 8}),
        ("CO", {"C": 1, "O": 1}),
        ("Co", {"Co": 1}),
        ("Na0Cl", {"Cl": 1}),
        ("(Li2O)2", {"Li": 4, "O": 2}),
    ],
)
def test_parse_formula_valid(text, expected):
    got = parse_formula(text)
    assert got == expected
    assert list(got) == list(expected)  # order of first appearance
    assert all(isinstance(v, int) for v in got.values())


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("Xx2O", "formula 'Xx2O': unknown element 'Xx'"),
        ("Foo", "unknown element 'Foo'"),
        ("", "non-empty formula such as 'SrTiO3'"),
        ("   ", "non-empty formula"),
        ("Li2(O", r"cannot parse formula 'Li2\(O': missing '\)' for '\(' at position 3"),
        ("LiO)", r"unmatched '\)' at position 3"),
        ("Li-O", r"unexpected '-' at position 2"),
        ("sio2", "element symbols start with a capital letter"),
        ("Li2..5O", r"bad number '2..5'"),
        ("()2", "empty brackets"),
        ("Na0Cl0", "contains no atoms"),
        ("Li0.5CoO2", "Li has amount 0.5; amounts must be whole numbers"),
    ],
)
def test_parse_formula_errors_name_the_problem(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_formula(text)


def test_parse_formula_errors_are_value_errors():
    with pytest.raises(ValueError, match="Xx"):
        parse_formula("Xx")


def test_parse_formula_fractional_amounts_on_request():
    got = parse_formula("Li0.5CoO2", allow_fractional=True)
    assert got == {"Li": 0.5, "Co": 1.0, "O": 2.0}
    assert all(isinstance(v, float) for v in got.values())
    assert parse_formula("(Li0.5)2O", allow_fractional=False) == {"Li": 1, "O": 1}


def test_generation_conditions_validate_the_composition():
    assert GenerationConditions(composition="Ca(OH)2").composition == "Ca(OH)2"
    with pytest.raises(ConfigError, match="conditions: composition: formula 'Xx2O': unknown element 'Xx'"):
        GenerationConditions(composition="Xx2O")
    with pytest.raises(ConfigError, match="whole numbers"):
        GenerationConditions(composition="Li0.5O")
    with pytest.raises(ConfigError, match="composition is empty"):
        GenerationConditions(composition=" ")


def test_symbols_round_trip():
    assert symbol(atomic_number("Fe")) == "Fe" and atomic_number(" o ") == 8


def test_crystal_systems_cover_every_space_group_once():
    covered = [sg for _, lo, hi in CRYSTAL_SYSTEMS for sg in range(lo, hi + 1)]
    assert covered == list(range(1, 231))
    assert [crystal_system(sg) for sg in (1, 2, 3, 15, 16, 74, 75, 142, 143, 167, 168, 194, 195, 230)] == [
        "triclinic",
        "triclinic",
        "monoclinic",
        "monoclinic",
        "orthorhombic",
        "orthorhombic",
        "tetragonal",
        "tetragonal",
        "trigonal",
        "trigonal",
        "hexagonal",
        "hexagonal",
        "cubic",
        "cubic",
    ]
    assert crystal_system_index(225) == 6 and space_groups_of("Trigonal") == range(143, 168)
    for bad in (0, 231):
        with pytest.raises(ConfigError, match=f"space group number {bad} is outside 1-230"):
            crystal_system(bad)
    with pytest.raises(ConfigError, match="unknown crystal system 'rhombic'"):
        space_groups_of("rhombic")
