"""Tests of the ``pyxtal`` generator (run with ``pytest --import-mode=importlib``)."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("pyxtal")

import crystal_pyxtal
from crystal.components import GenerationConditions
from crystal.errors import ConfigError
from crystal.manifest import read_manifest
from crystal_pyxtal.generator import PyXtalGenerator, crystal_system

MANIFEST = Path(crystal_pyxtal.__file__).parent / "crystal_plugin.toml"


@pytest.fixture(scope="module")
def gen() -> PyXtalGenerator:
    return PyXtalGenerator(device="cpu")


def _same(a, b) -> bool:
    return (
        torch.equal(a.num_atoms, b.num_atoms)
        and torch.equal(a.atomic_numbers, b.atomic_numbers)
        and torch.equal(a.lattices, b.lattices)
        and torch.equal(a.frac_coords, b.frac_coords)
    )


def _spacegroup_order(number: int) -> int:
    """Symmetry operations of the conventional cell of ``number`` (general-position multiplicity)."""
    from pyxtal.symmetry import Group

    return len(Group(number)[0])


# --------------------------------------------------------------------------- packaging
def test_manifest_validates_and_matches_class():
    manifest = read_manifest(MANIFEST)
    comp = manifest.component("generator", "pyxtal")
    assert comp is not None
    cls = PyXtalGenerator
    assert (comp.name, comp.consumes, comp.produces) == (cls.name, cls.consumes, cls.produces)
    assert tuple(comp.devices) == cls.devices == ("cpu",)
    assert tuple(comp.weights) == cls.weights == ()
    assert comp.default_weights is None


def test_entry_point_and_check_plugins():
    from crystal.plugins import check_plugins, list_plugins

    infos = [i for i in list_plugins("generator") if i.name == "pyxtal"]
    assert infos, "crystal-pyxtal's entry point is not installed (pip install -e plugins/pyxtal)"
    (result,) = check_plugins(infos)
    assert result.ok, result.problems


def test_core_contract():
    from crystal.testing.contracts import check_plugin

    check_plugin("generator", "pyxtal")


def test_package_import_is_light():
    code = "import sys, crystal_pyxtal; bad = {'torch', 'pyxtal', 'pymatgen'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- reproducibility
def test_same_seed_same_crystals_different_seed_different(gen):
    cond = GenerationConditions(chemical_system=("Li", "Mn", "O"))
    a = gen.generate(6, cond, seed=11)
    gen.generate(3, GenerationConditions(composition="Li2O"), seed=11)  # warm caches in between
    b = gen.generate(6, cond, seed=11)
    c = gen.generate(6, cond, seed=12)
    assert len(a) == len(b) == 6
    assert _same(a, b)
    assert a.ids == b.ids == [f"pyxtal-11-{k}" for k in range(6)]
    assert a.info == b.info
    assert not _same(a, c)
    assert not torch.equal(a.lattices[0], c.lattices[0])


def test_seed_none_is_recorded_and_replayable(gen):
    cond = GenerationConditions(composition="Li2O", formula_units=(1,))
    a = gen.generate(2, cond)
    seed = a.info[0]["seed"]
    assert a.ids[0] == f"pyxtal-{seed}-0"
    assert _same(a, gen.generate(2, cond, seed=seed))


# --------------------------------------------------------------------------- conditions honoured
def test_composition_and_formula_units_honoured(gen):
    b = gen.generate(8, GenerationConditions(composition="SrTiO3", formula_units=(1, 2)), seed=1)
    assert len(b) == 8
    for s, info, n in zip(b.to_structures(), b.info, b.num_atoms.tolist(), strict=True):
        assert s.composition.reduced_formula == "SrTiO3"
        assert info["formula_units"] in (1, 2)
        assert n == 5 * info["formula_units"]
        assert info["composition"] == "SrTiO3"
        assert info["reduced_formula"] == "SrTiO3"
        assert {"space_group", "space_group_symbol", "wyckoff_sites", "seed", "sample", "attempt"} <= set(info)


def test_fixed_formula_units(gen):
    b = gen.generate(5, GenerationConditions(composition="Li2O", formula_units=(2,)), seed=2)
    assert len(b) == 5
    assert b.num_atoms.tolist() == [6] * 5
    assert all(i["formula_units"] == 2 for i in b.info)
    assert sorted(b.atomic_numbers[b.batch == 0].tolist()) == [3, 3, 3, 3, 8, 8]


def test_space_groups_honoured(gen):
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    groups = (14, 62, 216, 225)
    b = gen.generate(8, GenerationConditions(composition="Li2O", formula_units=(4,), space_groups=groups), seed=3)
    assert len(b) == 8
    for s, info in zip(b.to_structures(), b.info, strict=True):
        sg = info["space_group"]
        assert sg in groups
        assert info["crystal_system"] == crystal_system(sg)
        sga = SpacegroupAnalyzer(s, symprec=0.1)
        # the detected group is the requested one or a supergroup: at least as many operations
        assert len(sga.get_symmetry_operations()) >= _spacegroup_order(sg), (sg, sga.get_space_group_number())


def test_crystal_system_sampling_stays_in_allowed_groups():
    g = PyXtalGenerator(config={"space_group_sampling": "crystal_system", "space_groups": (2, 14, 221)})
    b = g.generate(6, GenerationConditions(composition="Li2O", formula_units=(1, 2)), seed=4)
    assert len(b) == 6
    assert {i["space_group"] for i in b.info} <= {2, 14, 221}


def test_chemical_system_prefers_charge_balanced(gen):
    from pymatgen.core import Composition

    b = gen.generate(6, GenerationConditions(chemical_system=("Li", "O")), seed=5)
    assert len(b) == 6
    assert set(b.atomic_numbers.tolist()) == {3, 8}
    for s, info in zip(b.to_structures(), b.info, strict=True):
        assert {e.symbol for e in s.composition.elements} == {"Li", "O"}
        assert info["charge_balanced"] is True
        assert Composition(s.composition.reduced_formula).oxi_state_guesses()
    # three-element system: only those elements, each present
    b3 = gen.generate(4, GenerationConditions(chemical_system=("Li", "Mn", "O")), seed=6)
    for s in b3.to_structures():
        assert {e.symbol for e in s.composition.elements} == {"Li", "Mn", "O"}


def test_charge_balance_ignore_samples_other_stoichiometries():
    g = PyXtalGenerator(config={"chemical_system": ("Li", "O"), "charge_balance": "ignore", "formula_units": (1,)})
    b = g.generate(12, seed=7)
    formulas = {s.composition.reduced_formula for s in b.to_structures()}
    assert len(formulas) > 1
    assert formulas != {"Li2O"}


def test_charge_balance_require_raises_without_balanced_formula():
    g = PyXtalGenerator(config={"chemical_system": ("Cu", "Zn"), "charge_balance": "require"})
    with pytest.raises(ConfigError, match="charge-balanced"):
        g.generate(1, seed=0)


def test_conditions_override_config():
    g = PyXtalGenerator(config={"composition": "SiO2", "space_groups": (1, 2), "formula_units": (2,)})
    b = g.generate(3, GenerationConditions(composition="Li2O"), seed=8)
    assert {s.composition.reduced_formula for s in b.to_structures()} == {"Li2O"}
    assert {i["space_group"] for i in b.info} <= {1, 2}
    assert b.num_atoms.tolist() == [6, 6, 6]


def test_default_composition(gen):
    b = gen.generate(2, seed=9)
    assert {s.composition.reduced_formula for s in b.to_structures()} == {"SiO2"}
    assert int(b.num_atoms.max()) <= gen.config.max_atoms


# --------------------------------------------------------------------------- validity
def test_min_distance_respected_and_valid():
    g = PyXtalGenerator(config={"min_distance": 1.6, "composition": "Li2O", "formula_units": (1, 2)})
    b = g.generate(6, seed=10)
    assert len(b) > 0
    assert torch.isfinite(b.frac_coords).all()
    assert torch.isfinite(b.lattices).all()
    assert (b.min_distances() >= 1.6).all()
    assert b.validate(min_distance=1.6) == [None] * len(b)
    assert ((b.frac_coords >= 0) & (b.frac_coords < 1)).all()


def test_shortfall_returns_fewer_with_a_reason_per_slot(caplog):
    g = PyXtalGenerator(config={"min_distance": 5.0, "max_attempts_per_sample": 2})
    cond = GenerationConditions(composition="Li2O", formula_units=(1,))
    with caplog.at_level(logging.INFO, logger="crystal_pyxtal.generator"):
        res = g.generate_detailed(2, cond, seed=0)
    for needle in ("generated 0 of 2", "Li2O", "(#", "closer than 5.0"):
        assert needle in caplog.text
    assert len(res.batch) == 0 and [r.sample for r in res.rejected] == [0, 1]
    for r in res.rejected:
        assert "Li2O (Z=1) in" in r.reason and "no valid placement in 2 attempts" in r.reason
        assert "closer than 5.0" in r.reason


def test_generate_detailed_matches_generate_and_fills_every_slot(gen):
    cond = GenerationConditions(composition="SrTiO3", formula_units=(1,), space_groups=(221, 99))
    plain = gen.generate(4, cond, seed=5)
    res = gen.generate_detailed(4, cond, seed=5)
    assert res.batch.ids == plain.ids and torch.equal(res.batch.lattices, plain.lattices)
    assert len(res.batch) + len(res.rejected) == 4
    assert res.slots(4) == [i["sample"] for i in res.batch.info]


@pytest.mark.parametrize(
    ("conditions", "config", "field", "match"),
    [
        (dict(composition="LiF", chemical_system=("Li", "O")), {}, "composition", "outside the chemical system"),
        (dict(composition="Li2O", formula_units=(8,)), {}, "formula_units", "max_atoms=20"),
        (dict(chemical_system=("Li", "O")), {"max_stoichiometry": 12, "max_atoms": 512}, None, None),
        (dict(composition="Es2O3"), {}, "composition", "no covalent radius for Es"),
    ],
)
def test_check_conditions_is_static_and_names_the_field(conditions, config, field, match):
    from crystal.components import ConditionError

    cond = GenerationConditions(**conditions)
    if match is None:
        PyXtalGenerator.check_conditions(cond, config)  # accepted, without building any space group
        return
    with pytest.raises(ConditionError, match=match) as info:
        PyXtalGenerator.check_conditions(cond, config)
    assert info.value.field == field


def test_zero_samples(gen):
    assert len(gen.generate(0, seed=0)) == 0


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("conditions", "match"),  # conditions as keyword dicts: core validates some on construction
    [
        (dict(composition="Xx2O"), "unknown element 'Xx'"),
        (dict(composition="Foo"), "unknown element 'Foo'"),
        (dict(composition="Li2(O"), r"cannot parse formula 'Li2\(O': missing '\)'"),
        (dict(chemical_system=("Li", "Qq")), "unknown element symbol 'Qq'"),
        (dict(composition="Es2O3"), "no covalent radius for Es"),
        (dict(composition="Li0.5O"), "whole numbers"),
        (dict(composition="Li2O", space_groups=(231,)), r"\[231\] are outside 1-230"),
        (dict(composition="Li2O", space_groups=(0,)), "outside 1-230"),
        (dict(composition="Li2O", formula_units=(0,)), "must be >= 1"),
        (
            dict(composition="SrTiO3", formula_units=(1,), space_groups=(225,)),
            "incompatible with every requested space group",
        ),
        (dict(composition="Li2O", formula_units=(8,)), "max_atoms=20"),
        (
            dict(chemical_system=("Li", "O"), formula_units=(1,), space_groups=(229,)),
            "no formula unit",
        ),
        (dict(composition="LiF", chemical_system=("Li", "O")), "outside the chemical system"),
    ],
)
def test_impossible_requests_raise_config_error(gen, conditions, match):
    with pytest.raises(ConfigError, match=match):
        gen.generate(1, GenerationConditions(**conditions), seed=0)


@pytest.mark.parametrize("bad", [-1, 1.5, "3"])
def test_bad_num_samples_or_seed(gen, bad):
    with pytest.raises(ConfigError):
        gen.generate(bad, seed=0)
    with pytest.raises(ConfigError):
        gen.generate(1, seed=bad)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"bogus": 1}, "bogus.*unknown parameter"),
        ({"space_groups": (231,)}, "space_groups"),
        ({"composition": "Xx"}, "unknown element"),
        ({"chemical_system": ("Li", "Zz")}, "unknown element"),
        ({"charge_balance": "maybe"}, "charge_balance"),
        ({"max_atoms": 0}, "max_atoms"),
        ({"volume_factor": -1.0}, "volume_factor"),
    ],
)
def test_config_rejects_bad_fields(config, match):
    with pytest.raises(ConfigError, match=match):
        PyXtalGenerator(config=config)


def test_auto_device_is_cpu():
    assert PyXtalGenerator().device.type == "cpu"


@pytest.mark.benchmark
def test_speed_twenty_small_cells():
    g = PyXtalGenerator(config={"composition": "Li2O", "max_atoms": 20})
    g.generate(1, seed=0)  # imports and symmetry tables
    t0 = time.perf_counter()
    b = g.generate(20, seed=1)
    elapsed = time.perf_counter() - t0
    assert len(b) == 20
    assert elapsed < 10.0, elapsed
