"""Random symmetric crystals from PyXtal as a :class:`crystal.Generator`.

PyXtal (Fredericks et al., Comput. Phys. Commun. 261, 107810 (2021)) places atoms on
randomly chosen Wyckoff positions of a space group inside a random lattice of that group's
crystal family, so every crystal it builds has (at least) the requested symmetry.

Sampling rules (one *sample slot* ``k = 0 … num_samples-1`` per requested crystal):

1. **What to build.** ``GenerationConditions`` override the config field by field. A
   composition (``"SrTiO3"``, counts taken as written: ``"Li2O2"`` is a 4-atom formula
   unit) wins over a chemical system given at the same level; conditions' composition or
   chemical system win over the config's; with neither anywhere the composition is
   :data:`DEFAULT_COMPOSITION`.
2. **Chemical systems.** Candidate formula units contain *every* element of the system
   with integer counts ``1 … max_stoichiometry`` and no common divisor. Candidates that
   fit no allowed ``(Z, space group)`` are dropped. ``charge_balance="prefer"`` keeps only
   the charge-balanced ones when at least one exists (a formula is charge-balanced when
   pymatgen's ``Composition.oxi_state_guesses()``, common oxidation states, finds a
   neutral assignment), otherwise all; ``"require"`` raises when none is balanced;
   ``"ignore"`` keeps all. The formula is drawn uniformly from the candidates.
3. **Formula units.** ``Z`` (formula units per *conventional* cell, the cell returned) is
   drawn uniformly from the allowed values with ``Z × atoms per formula ≤ max_atoms`` and
   at least one compatible space group.
4. **Space group.** Drawn from the allowed groups (default all 230) whose Wyckoff
   multiplicities can hold the atom counts (pyxtal's ``Group.check_compatible``):
   uniformly (``space_group_sampling="uniform"``) or a crystal system first, uniformly
   among those with a compatible group, then a group within it (``"crystal_system"``).
5. **Placement.** Up to ``max_attempts_per_sample`` pyxtal placements of that choice;
   a candidate is rejected when pyxtal fails, or when it has NaN/inf values or two atoms
   (periodic images included) closer than ``min_distance``. A slot whose attempts all fail
   is left out (``B < num_samples``); :meth:`PyXtalGenerator.generate_detailed` gives it a
   reason naming the formula, ``Z``, group and the placement errors (a pipeline makes it a
   failure row and samples again).
6. **Checks before running.** :meth:`PyXtalGenerator.check_conditions` (what ``crystal
   validate`` calls) checks the request without building space groups (that takes seconds):
   elements, a composition inside the chemical system, integer ranges, ``max_atoms`` against the
   smallest ``Z`` and the candidate limit; whether the Wyckoff positions can hold the counts is
   checked when the generator plans the first call.

Reproducibility: the choice of slot ``k`` uses ``numpy.random.default_rng([seed, k, 0])``
and its attempt ``a`` uses ``default_rng([seed, k, 1, a])`` (pyxtal draws only from the
generator it is given), so a crystal depends only on ``(seed, k, a)`` and the config.
Crystal ``k`` has id ``pyxtal-<seed>-<k>``; its ``info`` records the space group, formula,
``Z``, Wyckoff sites, seed, slot and attempt.
"""

from __future__ import annotations

import itertools
import logging
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from crystal.batch import CrystalBatch
from crystal.components import (
    ComponentConfig,
    ConditionError,
    GenerationConditions,
    GenerationResult,
    Generator,
    RejectedSample,
)
from crystal.elements import SYMBOLS, parse_formula
from crystal.errors import ConfigError
from crystal.symmetry import CRYSTAL_SYSTEMS, crystal_system

if TYPE_CHECKING:
    from pyxtal.symmetry import Group
    from pyxtal.tolerance import Tol_matrix

__all__ = ["DEFAULT_COMPOSITION", "Formula", "PyXtalConfig", "PyXtalGenerator", "crystal_system"]

log = logging.getLogger(__name__)

#: composition used when neither the config nor the conditions name one
DEFAULT_COMPOSITION = "SiO2"
#: pyxtal 1.x tabulates covalent radii (needed for its distance checks) up to curium
MAX_ATOMIC_NUMBER = 96
#: refuse chemical systems whose candidate enumeration would exceed this
MAX_CANDIDATES = 20_000

_Z_OF = {s: i + 1 for i, s in enumerate(SYMBOLS)}


# --------------------------------------------------------------------------- formulas
@dataclass(frozen=True)
class Formula:
    """A formula unit: element symbols and their integer counts, in order."""

    elements: tuple[str, ...]
    counts: tuple[int, ...]

    @property
    def num_atoms(self) -> int:
        return sum(self.counts)

    def __str__(self) -> str:
        return "".join(e + (str(c) if c != 1 else "") for e, c in zip(self.elements, self.counts))


def _check_element(symbol: str, where: str) -> str:
    sym = symbol.strip()
    if sym not in _Z_OF and sym.capitalize() in _Z_OF:
        sym = sym.capitalize()
    if sym not in _Z_OF:
        raise ConfigError(f"{where}: unknown element {symbol!r}")
    if _Z_OF[sym] > MAX_ATOMIC_NUMBER:
        raise ConfigError(
            f"{where}: pyxtal has no covalent radius for {sym} (Z={_Z_OF[sym]}); "
            f"supported elements are H–Cm (Z ≤ {MAX_ATOMIC_NUMBER})"
        )
    return sym


def parse_composition(text: str) -> Formula:
    """Parse ``"SrTiO3"`` into a :class:`Formula` (counts as written, must be whole numbers).

    Reads the formula with :func:`crystal.elements.parse_formula` and checks that pyxtal
    covers every element.
    """
    try:
        amounts = parse_formula(text)
    except ValueError as exc:
        raise ConfigError(f"composition: {exc}") from None
    elements = tuple(_check_element(sym, f"composition {text!r}") for sym in amounts)
    return Formula(elements, tuple(amounts.values()))


def parse_chemical_system(value: str | Iterable[str]) -> tuple[str, ...]:
    """``("Li", "O")`` or ``"Li-O"`` → validated, de-duplicated element symbols in order."""
    items = value.replace(",", "-").replace(" ", "-").split("-") if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"chemical system {value!r}: element {item!r} is not a symbol")
        if not item.strip():
            continue
        sym = _check_element(item, f"chemical system {value!r}")
        if sym not in out:
            out.append(sym)
    if not out:
        raise ConfigError(f"chemical system {value!r} names no element")
    return tuple(out)


# --------------------------------------------------------------------------- config
SpaceGroupNumber = Annotated[int, Field(ge=1, le=230)]
FormulaUnitCount = Annotated[int, Field(ge=1, le=64)]


class PyXtalConfig(ComponentConfig):
    """Configuration of the ``pyxtal`` generator (conditions override the first four)."""

    composition: str | None = Field(
        default=None,
        description=(
            "formula unit to build, e.g. 'SrTiO3' (whole-number counts, as written); "
            f"None with no chemical_system means {DEFAULT_COMPOSITION!r}"
        ),
    )
    chemical_system: tuple[str, ...] | None = Field(
        default=None,
        min_length=1,
        description="elements to draw formula units from, e.g. ['Li', 'O'] (used when composition is None)",
    )
    formula_units: tuple[FormulaUnitCount, ...] = Field(
        default=(1, 2, 3, 4),
        min_length=1,
        description="allowed Z (formula units per conventional cell), drawn uniformly among those that fit",
    )
    space_groups: tuple[SpaceGroupNumber, ...] | None = Field(
        default=None,
        min_length=1,
        description="allowed international space-group numbers 1–230; None = every group compatible with the counts",
    )
    space_group_sampling: Literal["uniform", "crystal_system"] = Field(
        default="uniform",
        description="'uniform': each compatible group equally likely; 'crystal_system': crystal system first, then group",
    )
    max_atoms: int = Field(default=20, ge=1, le=512, description="maximum atoms per returned (conventional) cell")
    volume_factor: float = Field(
        default=1.1,
        ge=0.3,
        le=10.0,
        description="pyxtal's `factor` (dimensionless): cell volume = factor × Σ random atomic volumes (between covalent and vdW spheres), Å³",
    )
    tolerance_factor: float = Field(
        default=1.0,
        gt=0.0,
        le=3.0,
        description="scales pyxtal's placement tolerance 0.5·(r_cov,A + r_cov,B) (Å) between atoms of each pair",
    )
    min_distance: float = Field(
        default=0.5,
        ge=0.0,
        le=5.0,
        description="Å; candidates with two atoms (periodic images included) closer than this are rejected and retried",
    )
    max_attempts_per_sample: int = Field(
        default=10, ge=1, le=1000, description="pyxtal placements tried per requested crystal before giving up"
    )
    max_stoichiometry: int = Field(
        default=4, ge=1, le=12, description="chemical systems: largest count of one element in a formula unit"
    )
    charge_balance: Literal["prefer", "require", "ignore"] = Field(
        default="prefer",
        description=(
            "chemical systems: 'prefer' draws only charge-balanced formulas when any exist, "
            "'require' raises when none does, 'ignore' draws from all"
        ),
    )

    @field_validator("composition")
    @classmethod
    def _valid_composition(cls, v: str | None) -> str | None:
        if v is not None:
            parse_composition(v)
        return v

    @field_validator("chemical_system")
    @classmethod
    def _valid_system(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if v is None else parse_chemical_system(v)

    @model_validator(mode="after")
    def _composition_in_system(self) -> PyXtalConfig:
        if self.composition is not None and self.chemical_system is not None:
            _check_subset(parse_composition(self.composition), self.chemical_system)
        return self


def _check_subset(formula: Formula, system: Sequence[str]) -> None:
    extra = [e for e in formula.elements if e not in system]
    if extra:
        raise ConfigError(
            f"composition {formula} contains {', '.join(extra)}, outside the chemical system {'-'.join(system)}"
        )


# --------------------------------------------------------------------------- pyxtal caches
@cache
def _group(number: int) -> Group:
    from pyxtal.symmetry import Group

    return Group(number)


@cache
def _compatible(number: int, num_ions: tuple[int, ...]) -> bool:
    """Whether the Wyckoff positions of space group ``number`` can hold ``num_ions`` atoms."""
    ok, _ = _group(number).check_compatible(list(num_ions))
    return bool(ok)


@lru_cache(maxsize=8)
def _tol_matrix(factor: float) -> Tol_matrix:
    from pyxtal.tolerance import Tol_matrix

    return Tol_matrix(prototype="atomic", factor=factor)


@cache
def _charge_balanced(formula: Formula) -> bool:
    from pymatgen.core import Composition

    try:
        guesses = Composition(dict(zip(formula.elements, formula.counts))).oxi_state_guesses()
    except Exception:  # no oxidation-state data: treat as not balanced
        return False
    return len(guesses) > 0


@cache
def _reduced_formula(formula: Formula) -> str:
    from pymatgen.core import Composition

    return Composition(dict(zip(formula.elements, formula.counts))).reduced_formula


@cache
def _default_atomic_tol_matrix() -> Tol_matrix:
    from pyxtal.tolerance import Tol_matrix

    return Tol_matrix(prototype="atomic")


@contextmanager
def _fast_pyxtal() -> Iterator[None]:
    """Speed-up for pyxtal 1.x, active only inside :meth:`PyXtalGenerator.generate`.

    ``Wyckoff_position.merge`` calls ``check_images(..., tol=tol)`` without ``tm``, and
    ``check_images`` then builds a fresh ``Tol_matrix`` (~5 ms, unused since ``tol`` is
    given) on every call: most of the generation time. The wrapper passes a cached default
    matrix instead, which gives identical results; it is installed only when pyxtal's layout
    is the expected one and removed afterwards.
    """
    import pyxtal.operations as ops
    import pyxtal.symmetry as sym

    original = getattr(sym, "check_images", None)
    if original is None or original is not getattr(ops, "check_images", None):
        yield
        return

    def check_images(coords, species, lattice, PBC=None, tm=None, tol=None, d_factor=1.0):  # type: ignore[no-untyped-def]
        if tm is None:
            tm = _default_atomic_tol_matrix()
        return original(coords, species, lattice, PBC=PBC, tm=tm, tol=tol, d_factor=d_factor)

    sym.check_images = check_images
    try:
        yield
    finally:
        sym.check_images = original


def _sg_label(number: int) -> str:
    return f"{_group(number).symbol} (#{number})"


def _sg_list(numbers: Sequence[int], limit: int = 8) -> str:
    shown = ", ".join(_sg_label(n) for n in numbers[:limit])
    return shown + (f" and {len(numbers) - limit} more" if len(numbers) > limit else "")


# --------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class _Choice:
    formula: Formula
    z: int
    space_group: int


@dataclass
class _Plan:
    """Resolved request: candidate formulas, allowed Z and space groups."""

    mode: Literal["composition", "chemical_system"]
    formulas: tuple[Formula, ...]
    formula_units: tuple[int, ...]
    space_groups: tuple[int, ...]
    max_atoms: int
    sampling: str
    balanced: dict[Formula, bool] = field(default_factory=dict)
    _options: dict[tuple[Formula, int], tuple[int, ...]] = field(default_factory=dict)

    def feasible_z(self, f: Formula) -> list[int]:
        """Allowed Z for ``f`` that fit ``max_atoms`` and some allowed space group."""
        out = []
        for z in self.formula_units:
            if z * f.num_atoms > self.max_atoms:
                continue
            ions = tuple(c * z for c in f.counts)
            if any(_compatible(sg, ions) for sg in self.space_groups):
                out.append(z)
        return out

    def groups(self, f: Formula, z: int) -> tuple[int, ...]:
        key = (f, z)
        if key not in self._options:
            ions = tuple(c * z for c in f.counts)
            self._options[key] = tuple(sg for sg in self.space_groups if _compatible(sg, ions))
        return self._options[key]

    def draw(self, rng: np.random.Generator) -> _Choice:
        f = self.formulas[int(rng.integers(len(self.formulas)))]
        zs = self.feasible_z(f)
        z = zs[int(rng.integers(len(zs)))]
        groups = self.groups(f, z)
        if self.sampling == "crystal_system":
            systems = sorted({crystal_system(g) for g in groups}, key=[s[0] for s in CRYSTAL_SYSTEMS].index)
            system = systems[int(rng.integers(len(systems)))]
            groups = tuple(g for g in groups if crystal_system(g) == system)
        return _Choice(f, z, groups[int(rng.integers(len(groups)))])


# --------------------------------------------------------------------------- the generator
class PyXtalGenerator(Generator):
    """Random crystals with the requested composition and space-group symmetry (PyXtal).

    See the module docstring for the sampling rules. Runs on the CPU; returns conventional
    cells in float64 with lattice rows in Å.
    """

    name: ClassVar[str] = "pyxtal"
    version: ClassVar[str] = "0.1.0"
    description = (
        "Random crystals in chosen space groups via PyXtal's Wyckoff-position sampling (Fredericks et al., CPC "
        "261, 107810, 2021); CPU only, no weights"
    )
    Config: ClassVar[type[ComponentConfig]] = PyXtalConfig
    consumes: ClassVar[str] = "conditions"
    produces: ClassVar[str] = "crystal"
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    weights: ClassVar[tuple[str, ...]] = ()

    config: PyXtalConfig

    # ---------------------------------------------------------------- request resolution
    @classmethod
    def check_conditions(
        cls, conditions: GenerationConditions, config: ComponentConfig | Mapping[str, Any] | None = None
    ) -> None:
        """Raise :class:`ConditionError` for a request PyXtal cannot build (rule 6), cheaply: no
        space group is built. Checks elements, a composition inside a chemical system, formula
        units and space groups in range, ``max_atoms`` against the smallest ``Z`` and the number of
        candidate formulas of a chemical system."""
        cfg = config if isinstance(config, PyXtalConfig) else cls.make_config(config)
        assert isinstance(cfg, PyXtalConfig)
        field = "composition" if conditions.composition is not None else None
        if field is None and conditions.chemical_system is not None:
            field = "chemical_system"
        try:
            zs = _check_ints(
                conditions.formula_units if conditions.formula_units is not None else cfg.formula_units,
                "formula_units",
                1,
                64,
            )
            if conditions.space_groups is not None:
                _check_ints(conditions.space_groups, "space_groups", 1, 230)
            if conditions.composition is not None or conditions.chemical_system is not None:
                composition, system_raw = conditions.composition, conditions.chemical_system
            elif cfg.composition is not None or cfg.chemical_system is not None:
                composition, system_raw = cfg.composition, cfg.chemical_system
            else:
                composition, system_raw = DEFAULT_COMPOSITION, None
            system = None if system_raw is None else parse_chemical_system(system_raw)
            if composition is not None:
                formula = parse_composition(composition)
                if system is not None:
                    _check_subset(formula, system)
                if min(zs) * formula.num_atoms > cfg.max_atoms:
                    raise ConditionError(
                        f"generator 'pyxtal': composition {formula} has {formula.num_atoms} atoms per formula unit; "
                        f"the smallest allowed Z={min(zs)} gives {min(zs) * formula.num_atoms} atoms > "
                        f"max_atoms={cfg.max_atoms}",
                        field if conditions.formula_units is None else "formula_units",
                    )
            elif system is not None:
                ms = cfg.max_stoichiometry
                if ms ** len(system) > MAX_CANDIDATES:
                    raise ConditionError(
                        f"generator 'pyxtal': chemical system {'-'.join(system)} with max_stoichiometry={ms} has "
                        f"{ms ** len(system)} candidate formulas (limit {MAX_CANDIDATES}); lower max_stoichiometry",
                        field,
                    )
                if len(system) * min(zs) > cfg.max_atoms:
                    raise ConditionError(
                        f"generator 'pyxtal': chemical system {'-'.join(system)}: a formula unit with every element "
                        f"has at least {len(system)} atoms; Z={min(zs)} exceeds max_atoms={cfg.max_atoms}",
                        field,
                    )
        except ConditionError:
            raise
        except ConfigError as exc:
            raise ConditionError(str(exc), field) from None

    def plan(self, conditions: GenerationConditions | None = None) -> _Plan:
        """Resolve config + conditions into candidate formulas, Z values and groups.

        Raises :class:`~crystal.errors.ConfigError` for unknown elements, space groups
        outside 1–230 and requests no allowed space group can satisfy.
        """
        cfg = self.config
        if conditions is not None and not isinstance(conditions, GenerationConditions):
            raise ConfigError(
                f"generator 'pyxtal': conditions must be crystal.GenerationConditions, got {type(conditions).__name__}"
            )
        cond = conditions or GenerationConditions()
        self.check_conditions(cond, cfg)

        formula_units = _check_ints(
            cond.formula_units if cond.formula_units is not None else cfg.formula_units, "formula_units", 1, 64
        )
        if cond.space_groups is not None:
            space_groups = _check_ints(cond.space_groups, "space_groups", 1, 230)
        elif cfg.space_groups is not None:
            space_groups = tuple(sorted(set(cfg.space_groups)))
        else:
            space_groups = tuple(range(1, 231))

        composition: str | None
        system: tuple[str, ...] | None
        if cond.composition is not None or cond.chemical_system is not None:
            composition = cond.composition
            system = None if cond.chemical_system is None else parse_chemical_system(cond.chemical_system)
        elif cfg.composition is not None or cfg.chemical_system is not None:
            composition, system = cfg.composition, cfg.chemical_system
        else:
            composition, system = DEFAULT_COMPOSITION, None

        common = {
            "formula_units": formula_units,
            "space_groups": space_groups,
            "max_atoms": cfg.max_atoms,
            "sampling": cfg.space_group_sampling,
        }
        if composition is not None:
            formula = parse_composition(composition)
            if system is not None:
                _check_subset(formula, system)
            plan = _Plan(mode="composition", formulas=(formula,), **common)  # type: ignore[arg-type]
            if not plan.feasible_z(formula):
                raise ConfigError(self._infeasible_message(formula, plan))
            return plan

        assert system is not None
        return self._system_plan(system, common)

    def _infeasible_message(self, formula: Formula, plan: _Plan) -> str:
        fitting = [z for z in plan.formula_units if z * formula.num_atoms <= plan.max_atoms]
        if not fitting:
            return (
                f"generator 'pyxtal': composition {formula} has {formula.num_atoms} atoms per formula unit; "
                f"the smallest allowed Z={min(plan.formula_units)} gives "
                f"{min(plan.formula_units) * formula.num_atoms} atoms > max_atoms={plan.max_atoms}"
            )
        return (
            f"generator 'pyxtal': composition {formula} with Z in {tuple(fitting)} is incompatible with every "
            f"requested space group ({_sg_list(plan.space_groups)}): no combination of their Wyckoff "
            "multiplicities holds the atom counts; allow other space groups or formula units"
        )

    def _system_plan(self, system: tuple[str, ...], common: dict[str, Any]) -> _Plan:
        cfg = self.config
        label = "-".join(system)
        ms = cfg.max_stoichiometry
        if ms ** len(system) > MAX_CANDIDATES:
            raise ConfigError(
                f"generator 'pyxtal': chemical system {label} with max_stoichiometry={ms} has "
                f"{ms ** len(system)} candidate formulas (limit {MAX_CANDIDATES}); lower max_stoichiometry"
            )
        plan = _Plan(mode="chemical_system", formulas=(), **common)
        min_z = min(plan.formula_units)
        candidates = []
        for counts in itertools.product(range(1, ms + 1), repeat=len(system)):
            if math.gcd(*counts) != 1 or sum(counts) * min_z > plan.max_atoms:
                continue
            f = Formula(system, counts)
            if plan.feasible_z(f):
                candidates.append(f)
        if not candidates:
            raise ConfigError(
                f"generator 'pyxtal': chemical system {label}: no formula unit with every element and counts "
                f"1–{ms} fits max_atoms={plan.max_atoms} with Z in {plan.formula_units} in any requested space "
                f"group ({_sg_list(plan.space_groups)})"
            )
        if cfg.charge_balance != "ignore":
            balanced = [f for f in candidates if _charge_balanced(f)]
            plan.balanced = {f: f in balanced for f in candidates}
            if balanced:
                candidates = balanced
            elif cfg.charge_balance == "require":
                raise ConfigError(
                    f"generator 'pyxtal': chemical system {label}: none of the {len(candidates)} candidate formulas "
                    "is charge-balanced (pymatgen oxi_state_guesses); use charge_balance='prefer' or 'ignore'"
                )
            else:
                log.info("pyxtal: no charge-balanced formula in %s; sampling all %d candidates", label, len(candidates))
        plan.formulas = tuple(candidates)
        return plan

    # ---------------------------------------------------------------- generation
    def generate(
        self, num_samples: int, conditions: GenerationConditions | None = None, *, seed: int | None = None
    ) -> CrystalBatch:
        """Up to ``num_samples`` random crystals; identical for identical ``seed`` and config.

        ``seed=None`` draws a fresh 32-bit seed (recorded in ids and ``info``).
        """
        return self.generate_detailed(num_samples, conditions, seed=seed).batch

    def generate_detailed(
        self, num_samples: int, conditions: GenerationConditions | None = None, *, seed: int | None = None
    ) -> GenerationResult:
        """:meth:`generate`'s crystals plus one :class:`RejectedSample` per slot whose placements all
        failed (the formula, ``Z``, group, attempts and the placement errors)."""
        if isinstance(num_samples, bool) or not isinstance(num_samples, int | np.integer) or num_samples < 0:
            raise ConfigError(f"generator 'pyxtal': num_samples must be a non-negative integer, got {num_samples!r}")
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        elif isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ConfigError(f"generator 'pyxtal': seed must be a non-negative integer or None, got {seed!r}")
        seed = int(seed)
        plan = self.plan(conditions)
        if num_samples == 0:
            return GenerationResult(CrystalBatch.empty(), [])

        cfg = self.config
        made: list[CrystalBatch] = []
        rejected: list[RejectedSample] = []
        failures: dict[_Choice, tuple[int, set[str]]] = {}
        with warnings.catch_warnings(), _fast_pyxtal():
            warnings.simplefilter("ignore")  # pyxtal warns on every volume increase
            for k in range(int(num_samples)):
                choice = plan.draw(np.random.default_rng([seed, k, 0]))
                reasons: set[str] = set()
                for attempt in range(cfg.max_attempts_per_sample):
                    rng = np.random.default_rng([seed, k, 1, attempt])
                    crystal, reason = self._attempt(choice, rng)
                    if crystal is None:
                        reasons.add(reason or "unknown failure")
                        continue
                    info = {
                        "generator": "pyxtal",
                        "space_group": choice.space_group,
                        "space_group_symbol": _group(choice.space_group).symbol,
                        "crystal_system": crystal_system(choice.space_group),
                        "composition": str(choice.formula),
                        "reduced_formula": _reduced_formula(choice.formula),
                        "formula_units": choice.z,
                        "seed": seed,
                        "sample": k,
                        "attempt": attempt,
                        "volume_factor": cfg.volume_factor,
                        **crystal.info[0],
                    }
                    if plan.mode == "chemical_system":
                        info["chemical_system"] = "-".join(choice.formula.elements)
                        if plan.balanced:
                            info["charge_balanced"] = plan.balanced[choice.formula]
                    crystal.info = [info]
                    crystal.ids = [f"pyxtal-{seed}-{k}"]
                    made.append(crystal)
                    break
                else:
                    n_prev, r_prev = failures.get(choice, (0, set()))
                    failures[choice] = (n_prev + 1, r_prev | reasons)
                    rejected.append(
                        RejectedSample(
                            k,
                            f"{choice.formula} (Z={choice.z}) in {_sg_label(choice.space_group)}: no valid placement "
                            f"in {cfg.max_attempts_per_sample} attempts ({_summarise(reasons)})",
                        )
                    )

        if failures:
            parts = [
                f"{c.formula} (Z={c.z}) in {_sg_label(c.space_group)} ×{n}: {_summarise(r)}"
                for c, (n, r) in failures.items()
            ]
            log.info(
                "pyxtal: generated %d of %d crystals (seed %d); these failed after %d attempts each: %s. "
                "Try more max_attempts_per_sample, another volume_factor/min_distance or other space groups.",
                len(made),
                num_samples,
                seed,
                cfg.max_attempts_per_sample,
                " | ".join(parts),
            )
        return GenerationResult(CrystalBatch.concat(made) if made else CrystalBatch.empty(), rejected)

    def _attempt(self, choice: _Choice, rng: np.random.Generator) -> tuple[CrystalBatch | None, str | None]:
        """One pyxtal placement of ``choice``; ``(crystal, None)`` or ``(None, reason)``."""
        from pyxtal.crystal import random_crystal

        cfg = self.config
        f = choice.formula
        num_ions = [c * choice.z for c in f.counts]
        try:
            rc = random_crystal(
                dim=3,
                group=_group(choice.space_group),
                species=list(f.elements),
                numIons=num_ions,
                factor=cfg.volume_factor,
                tm=_tol_matrix(cfg.tolerance_factor),
                random_state=rng,
            )
        except Exception as exc:  # pyxtal raises RuntimeError/ValueError for hopeless volumes
            return None, f"pyxtal error: {exc}"
        if not rc.valid:
            return None, "pyxtal found no placement on the Wyckoff positions respecting its distance tolerances"

        order = {e: i for i, e in enumerate(f.elements)}
        sites = sorted(rc.atom_sites, key=lambda s: order[s.specie])  # stable: keeps Wyckoff order
        species = [s.specie for s in sites for _ in range(s.multiplicity)]
        frac = np.concatenate([np.asarray(s.coords, dtype=np.float64).reshape(-1, 3) for s in sites])
        frac = frac - np.floor(frac)
        frac[frac >= 1.0] = 0.0
        lattice = np.asarray(rc.lattice.matrix, dtype=np.float64)
        counts = [species.count(e) for e in f.elements]
        if counts != num_ions or len(species) != frac.shape[0]:
            return None, f"pyxtal returned atom counts {counts}, expected {num_ions}"
        crystal = CrystalBatch(
            atomic_numbers=torch.tensor([_Z_OF[s] for s in species], dtype=torch.long),
            frac_coords=torch.from_numpy(frac),
            lattices=torch.from_numpy(lattice).unsqueeze(0),
            num_atoms=torch.tensor([len(species)], dtype=torch.long),
            info=[{"wyckoff_sites": [f"{s.specie} {s.wp.multiplicity}{s.wp.letter}" for s in sites]}],
        )
        problem = crystal.validate(min_distance=cfg.min_distance)[0]
        if problem is not None:
            return None, problem
        return crystal, None


def _summarise(reasons: set[str], limit: int = 2) -> str:
    shown = sorted(reasons)[:limit]
    more = len(reasons) - len(shown)
    return "; ".join(shown) + (f"; … ({more} more)" if more > 0 else "")


def _check_ints(values: Any, what: str, lo: int, hi: int) -> tuple[int, ...]:
    """Validate a condition tuple of integers in ``lo..hi``; sorted, de-duplicated."""
    if isinstance(values, int | np.integer) and not isinstance(values, bool):
        values = (values,)
    try:
        items = list(values)
    except TypeError:
        raise ConfigError(f"generator 'pyxtal': {what} must be a sequence of integers, got {values!r}") from None
    if not items:
        raise ConfigError(f"generator 'pyxtal': {what} is empty")
    out = set()
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int | np.integer):
            raise ConfigError(f"generator 'pyxtal': {what} must contain integers, got {v!r}")
        if not lo <= int(v) <= hi:
            raise ConfigError(f"generator 'pyxtal': {what} value {int(v)} is out of range {lo}–{hi}")
        out.add(int(v))
    return tuple(sorted(out))
