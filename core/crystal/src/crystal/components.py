"""Abstract base classes for the five kinds of component.

Every component declares, as class attributes:

``name``       plugin name, unique within its kind (``"chgnet"``)
``kind``       one of :class:`Kind` (set by the kind's base class)
``version``    the component's own version string
``description`` one line for listings (default: the docstring's first line)
``Config``     a :class:`ComponentConfig` subclass (pydantic, ``extra="forbid"``)
``consumes``   the representation it reads (``"crystal"`` for the raw batch)
``produces``   what it returns (``"crystal"``, ``"energy+forces+stress"``, ...)
``devices``    device types it runs on (``("cpu", "cuda")``)
``weights``    names of the weights it can load: a :class:`~crystal.manifest.NamedWeights`
               that also declares them (see :mod:`crystal.weights`)

:func:`abc.abstractmethod` enforces the kind's methods; ``__init_subclass__`` enforces
the declarations on every concrete subclass, so a plugin that forgets one fails at import
with a message naming the class and the attribute.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import ConfigDict, ValidationError

from crystal.batch import CrystalBatch
from crystal.config import StrictModel, format_validation_error
from crystal.device import resolve_device
from crystal.errors import ConfigError

__all__ = [
    "Characterizer",
    "Component",
    "ComponentConfig",
    "ConditionError",
    "Encoder",
    "GenerationConditions",
    "GenerationResult",
    "Generator",
    "Kind",
    "Potential",
    "PotentialOutput",
    "RejectedSample",
    "Representation",
    "isolated_atoms",
]


class Kind(enum.StrEnum):
    """The five kinds of component; the value is the entry-point group suffix."""

    REPRESENTATION = "representations"
    ENCODER = "encoders"
    GENERATOR = "generators"
    CHARACTERIZER = "characterizers"
    POTENTIAL = "potentials"

    @property
    def group(self) -> str:
        """Entry-point group, e.g. ``crystal.potentials``."""
        return f"crystal.{self.value}"

    @property
    def singular(self) -> str:
        return self.value[:-1]

    @classmethod
    def parse(cls, value: str | Kind) -> Kind:
        """Accept ``"potential"``, ``"potentials"`` or a :class:`Kind`."""
        if isinstance(value, Kind):
            return value
        v = value.strip().lower()
        for k in cls:
            if v in (k.value, k.singular):
                return k
        allowed = ", ".join(k.singular for k in cls)
        raise ConfigError(f"unknown component kind {value!r}; allowed: {allowed}")


class ComponentConfig(StrictModel):
    """Base of every component config: unknown fields are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


_REQUIRED = ("name", "version")  # Config defaults to an empty ComponentConfig


class Component(abc.ABC):
    """Common base: declarations, config validation and device placement."""

    name: ClassVar[str]
    kind: ClassVar[Kind]
    version: ClassVar[str]
    description: ClassVar[str] = ""
    Config: ClassVar[type[ComponentConfig]] = ComponentConfig
    consumes: ClassVar[str] = "crystal"
    produces: ClassVar[str] = "crystal"
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    weights: ClassVar[tuple[str, ...]] = ()
    default_weights: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("__abstract_base__", False) or _still_abstract(cls):
            return
        for attr in _REQUIRED:
            if attr not in vars(cls) and not any(attr in vars(base) for base in cls.__mro__[1:] if base not in _BASES):
                raise TypeError(f"component class {cls.__module__}.{cls.__qualname__} must declare {attr!r}")
        if not (isinstance(cls.Config, type) and issubclass(cls.Config, ComponentConfig)):
            raise TypeError(f"{cls.__qualname__}.Config must subclass crystal.ComponentConfig")
        if cls.Config.model_config.get("extra") != "forbid":
            raise TypeError(f"{cls.__qualname__}.Config must keep extra='forbid'")
        if cls.default_weights is not None and cls.default_weights not in cls.weights:
            raise TypeError(
                f"{cls.__qualname__}.default_weights {cls.default_weights!r} is not in weights {cls.weights}"
            )

    def __init__(
        self, config: ComponentConfig | Mapping[str, Any] | None = None, *, device: str = "auto", **overrides: Any
    ) -> None:
        self.config = self.make_config(config, **overrides)
        # "auto" picks the best device the component supports (CPU-only ones stay on the CPU)
        if str(device).strip().lower() == "auto" and "cuda" not in self.devices:
            device = "cpu"
        self.device = resolve_device(device)
        if self.device.type not in self.devices:
            raise ConfigError(
                f"{self.kind.singular} {self.name!r} supports devices {self.devices}, not {self.device.type!r}"
            )

    @classmethod
    def make_config(
        cls, config: ComponentConfig | Mapping[str, Any] | None = None, **overrides: Any
    ) -> ComponentConfig:
        """Validate ``config`` (a model, a dict or ``None``) plus keyword overrides."""
        if isinstance(config, ComponentConfig):
            if not isinstance(config, cls.Config):
                raise ConfigError(f"{cls.name}: expected {cls.Config.__name__}, got {type(config).__name__}")
            data = config.model_dump()
        else:
            data = dict(config or {})
        data.update(overrides)
        try:
            return cls.Config.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, f"{cls.kind.singular} {cls.name!r}", cls.Config)) from None

    def weights_in_use(self) -> tuple[str, ...]:
        """Named weights this instance uses (recorded with their sha256 in run manifests).

        Convention: a component with named weights selects them with a ``weights`` config field.
        """
        chosen = getattr(self.config, "weights", None)
        return (chosen,) if isinstance(chosen, str) and chosen in self.weights else ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device={str(self.device)!r}, config={self.config!r})"


def _still_abstract(cls: type) -> bool:
    """True when ``cls`` leaves an abstract method unimplemented.

    ``ABCMeta`` computes ``__abstractmethods__`` only after ``__init_subclass__`` runs,
    so the check is done here by hand.
    """
    names: set[str] = set()
    for base in cls.__mro__[1:]:
        names |= set(getattr(base, "__abstractmethods__", ()))
    names |= {n for n, v in vars(cls).items() if getattr(v, "__isabstractmethod__", False)}
    return any(getattr(getattr(cls, n, None), "__isabstractmethod__", False) for n in names)


# --------------------------------------------------------------------------- kinds
class Representation(Component):
    """Turns a :class:`CrystalBatch` into model input (graph, tokens, pattern ...)."""

    __abstract_base__ = True
    kind = Kind.REPRESENTATION

    @abc.abstractmethod
    def represent(self, batch: CrystalBatch) -> Mapping[str, torch.Tensor]:
        """Return named tensors describing ``batch`` (shapes documented by the plugin)."""


class Encoder(Component):
    """A property predictor: crystals in, named per-crystal (or per-atom) values out."""

    __abstract_base__ = True
    kind = Kind.ENCODER
    produces = "properties"

    @property
    @abc.abstractmethod
    def targets(self) -> tuple[str, ...]:
        """Names of the predicted properties, keys of :meth:`predict`'s result."""

    @abc.abstractmethod
    def predict(self, batch: CrystalBatch) -> dict[str, torch.Tensor]:
        """Predict every target for ``batch``.

        Returns ``{target: tensor}`` with shape ``(B,)`` or ``(B, k)`` for per-crystal
        targets and ``(N, ...)`` for per-atom ones, in the target's declared unit.
        """

    @property
    def graph_cutoff(self) -> float | None:
        """The cutoff (Å) of the neighbour graph the encoder builds, or ``None`` when it builds
        none (composition models). A crystal with an atom that has no neighbour within it cannot
        be predicted meaningfully: :func:`isolated_atoms` finds them, and the ``predict`` step
        reports them as failures instead of predicting. Graph encoders override this."""
        return None


def isolated_atoms(batch: CrystalBatch, cutoff: float) -> torch.Tensor:
    """(B,) number of atoms per crystal with no neighbour (periodic images included) closer
    than ``cutoff`` Å."""
    import torch

    from crystal.neighbors import radius_graph

    graph = radius_graph(batch, cutoff)
    degree = torch.zeros(batch.num_nodes, dtype=torch.long, device=batch.device)
    degree.index_add_(0, graph.edge_index[0], torch.ones_like(graph.edge_index[0]))
    lonely = (degree == 0).long()
    return torch.zeros(len(batch), dtype=torch.long, device=batch.device).index_add_(0, batch.batch, lonely)


@dataclass(frozen=True)
class GenerationConditions:
    """What a generator is asked for; fields a generator cannot honour must raise.

    ``composition``  a formula unit with whole amounts, e.g. ``"LiFePO4"`` or ``"Ca(OH)2"``
                     (validated by :func:`crystal.elements.parse_formula`)
    ``chemical_system``  elements to draw compositions from, e.g. ``("Li", "Fe", "O")``
    ``formula_units``  number of formula units ``Z`` per cell
    ``space_groups``  international numbers (1–230) to sample from
    """

    composition: str | None = None
    chemical_system: tuple[str, ...] | None = None
    formula_units: tuple[int, ...] | None = None
    space_groups: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        from crystal.elements import atomic_number, parse_formula

        if self.space_groups is not None:
            bad = [sg for sg in self.space_groups if not 1 <= int(sg) <= 230]
            if bad:
                raise ConfigError(f"conditions: space_groups {bad} are outside 1-230")
        if self.formula_units is not None and any(int(z) < 1 for z in self.formula_units):
            raise ConfigError(f"conditions: formula_units must be >= 1, got {list(self.formula_units)}")
        for el in self.chemical_system or ():
            try:
                atomic_number(el)
            except ValueError as exc:
                raise ConfigError(f"conditions: chemical_system: {exc}") from None
        if self.composition is not None:
            if not self.composition.strip():
                raise ConfigError("conditions: composition is empty")
            try:
                parse_formula(self.composition)
            except ValueError as exc:
                raise ConfigError(f"conditions: composition: {exc}") from None


class ConditionError(ConfigError):
    """A generation condition a generator cannot honour (with its config).

    ``field`` names the :class:`GenerationConditions` field at fault (``"chemical_system"``,
    ...; ``None`` when it is the combination), so that a pipeline can point at the same field
    of its ``[source]``. The message says what the generator supports instead.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class RejectedSample:
    """A sample a generator drew but does not deliver.

    ``sample``  its slot in the call, ``0 … num_samples-1``
    ``reason``  why, one line (e.g. ``"atoms 0 and 3 are 0.21 Å apart"``)
    """

    sample: int
    reason: str


@dataclass
class GenerationResult:
    """What one :meth:`Generator.generate_detailed` call drew: ``num_samples`` slots, each either
    a crystal of ``batch`` or a row of ``rejected``.

    ``batch``     the valid crystals, in slot order (``B = num_samples - len(rejected)``)
    ``rejected``  one :class:`RejectedSample` per slot left out, with its reason

    The crystals of ``batch`` fill the slots that ``rejected`` does not name, in increasing order.
    """

    batch: CrystalBatch
    rejected: list[RejectedSample]

    def slots(self, num_samples: int) -> list[int]:
        """The slot of each crystal of ``batch`` (the slots not rejected, in order)."""
        bad = {r.sample for r in self.rejected}
        return [k for k in range(num_samples) if k not in bad][: len(self.batch)]


class Generator(Component):
    """Proposes crystals, optionally conditioned (composition, space group, ...).

    A generator implements :meth:`generate` (one attempt per slot: the crystals that came out
    valid). Two optional methods make it a good citizen of pipelines and ``crystal generate``,
    which ask for ``num_samples`` *valid* crystals and keep sampling, within an attempt budget,
    until they have them (:func:`crystal.generation.generate_valid`):

    * :meth:`generate_detailed` returns the same crystals plus one :class:`RejectedSample`
      (slot, reason) per sample left out; the rejected samples become failure rows with
      their reason. The default calls :meth:`generate` and gives the missing slots a generic
      reason ("no reason given"). Override it when the generator knows why, and implement
      :meth:`generate` as ``return self.generate_detailed(num_samples, conditions, seed=seed).batch``.
    * :meth:`check_conditions` (a classmethod, cheap: no model, no weights) raises
      :class:`ConditionError` for conditions the generator cannot honour with a config, naming
      the field and what it supports; ``crystal validate`` and the start of a run call it, so
      an impossible request fails before anything runs. The default accepts everything.

    Ids: :meth:`generate` may name its crystals as it likes (``<name>-<seed>-<slot>`` by
    convention); :func:`crystal.generation.generate_valid` renames them with a token of the
    call or run (``<name>-<token>-<k>``), so ids never repeat across calls and runs.
    """

    __abstract_base__ = True
    kind = Kind.GENERATOR
    consumes = "conditions"

    @abc.abstractmethod
    def generate(
        self, num_samples: int, conditions: GenerationConditions | None = None, *, seed: int | None = None
    ) -> CrystalBatch:
        """Return up to ``num_samples`` crystals (``B <= num_samples``), reproducible for a seed.

        Generators that may fail on some attempts return fewer crystals (the failed slots are
        simply absent; :meth:`generate_detailed` says why); they never return invalid geometry.
        """

    def generate_detailed(
        self, num_samples: int, conditions: GenerationConditions | None = None, *, seed: int | None = None
    ) -> GenerationResult:
        """:meth:`generate` plus one :class:`RejectedSample` per slot left out.

        The default calls :meth:`generate`; it finds the slots of the crystals from their
        ``info["sample"]`` when every crystal has a distinct one in ``0 … num_samples-1``, else
        assumes the first ``B`` slots, and gives the others the reason "no reason given".
        """
        batch = self.generate(num_samples, conditions, seed=seed)
        n, b = int(num_samples), len(batch)
        if b >= n:
            return GenerationResult(batch, [])
        raw = [inf.get("sample") for inf in batch.info]
        slots = [k for k in raw if isinstance(k, int) and 0 <= k < n]
        ok = len(slots) == b and len(set(slots)) == b
        used = set(slots) if ok else set(range(b))
        if ok and slots != sorted(slots):  # the contract's order: crystals in slot order
            batch = batch.select(sorted(range(b), key=lambda i: slots[i]))
        why = f"generator {self.name!r} returned {b} of {n} crystals and gave no reason for this sample"
        return GenerationResult(batch, [RejectedSample(k, why) for k in range(n) if k not in used])

    @classmethod
    def check_conditions(
        cls, conditions: GenerationConditions, config: ComponentConfig | Mapping[str, Any] | None = None
    ) -> None:
        """Raise :class:`ConditionError` for ``conditions`` this generator cannot honour with
        ``config`` (a config model or dict; ``None``: the defaults).

        Cheap and static: it must not build a model or fetch weights (``crystal validate`` calls
        it). It names the field and what the generator supports. Default: accept everything.
        """


class Characterizer(Component):
    """Signal → structure information (e.g. an XRD pattern → space-group probabilities)."""

    __abstract_base__ = True
    kind = Kind.CHARACTERIZER
    produces = "hypotheses"

    @abc.abstractmethod
    def characterize(self, signals: torch.Tensor) -> dict[str, torch.Tensor]:
        """Map ``(B, L)`` signals on the representation's grid to named ``(B, C)`` scores.

        Scores are probabilities over the classes listed by :meth:`labels`.
        """

    @abc.abstractmethod
    def labels(self, head: str) -> list[str]:
        """Class names of output ``head`` (length ``C``)."""


@dataclass
class PotentialOutput:
    """Outputs of a potential for a batch of ``B`` crystals with ``N`` atoms.

    ``energy``  (B,)      total energy per crystal, eV
    ``forces``  (N, 3)    eV/Å, or ``None`` when not requested
    ``stress``  (B, 3, 3) eV/Å³, ASE sign convention (``σ = (1/V) ∂E/∂ε``; positive
                          means tensile, the cell wants to shrink), or ``None``
    """

    energy: torch.Tensor
    forces: torch.Tensor | None = None
    stress: torch.Tensor | None = None

    @classmethod
    def empty(cls, batch: CrystalBatch, *, forces: bool = True, stress: bool = True) -> PotentialOutput:
        """The output for a batch of no crystals (requested fields as empty tensors)."""
        dtype, device = batch.dtype, batch.device
        return cls(
            energy=torch.zeros(0, dtype=dtype, device=device),
            forces=torch.zeros((0, 3), dtype=dtype, device=device) if forces else None,
            stress=torch.zeros((0, 3, 3), dtype=dtype, device=device) if stress else None,
        )


class Potential(Component):
    """An interatomic potential: energy, forces and stress of whole batches."""

    __abstract_base__ = True
    kind = Kind.POTENTIAL
    produces = "energy+forces+stress"
    #: atomic numbers the potential covers (``None`` = all)
    elements: ClassVar[frozenset[int] | None] = None
    #: what the memory of one evaluation grows with, per crystal of ``n`` atoms and volume ``V``
    #: (the batch-size model of :mod:`crystal_sim.memory`): ``"atoms"`` (``n``; per-atom models),
    #: ``"edges"`` (the radius-graph edges ``n · n/V · 4/3 π r_c³`` at the potential's ``cutoff``;
    #: graph networks) or ``"atoms2_per_volume"`` (``n²/V``; density-dependent models without a cutoff)
    memory_metric: ClassVar[Literal["atoms", "edges", "atoms2_per_volume"]] = "atoms"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.memory_metric not in ("atoms", "edges", "atoms2_per_volume"):
            raise TypeError(
                f"{cls.__qualname__}.memory_metric must be 'atoms', 'edges' or 'atoms2_per_volume', "
                f"not {cls.memory_metric!r}"
            )

    @abc.abstractmethod
    def compute(self, batch: CrystalBatch, *, forces: bool = True, stress: bool = True) -> PotentialOutput:
        """Evaluate the potential on ``batch`` (already on :attr:`device`)."""

    def energy(self, batch: CrystalBatch) -> torch.Tensor:
        """(B,) total energies, eV."""
        return self.compute(batch, forces=False, stress=False).energy

    def forces(self, batch: CrystalBatch) -> torch.Tensor:
        """(N, 3) forces, eV/Å."""
        out = self.compute(batch, forces=True, stress=False)
        assert out.forces is not None
        return out.forces

    def stress(self, batch: CrystalBatch) -> torch.Tensor:
        """(B, 3, 3) stress, eV/Å³ (ASE sign convention)."""
        out = self.compute(batch, forces=False, stress=True)
        assert out.stress is not None
        return out.stress

    def check_geometry(self, batch: CrystalBatch) -> None:
        """Raise :class:`~crystal.errors.StructureError` naming the crystals (by id) that have
        no atoms, NaN/inf coordinates or lattices, or a zero-volume cell."""
        from crystal.errors import StructureError

        def ids(index: list[int], limit: int = 5) -> str:
            more = f" and {len(index) - limit} more" if len(index) > limit else ""
            return ", ".join(repr(batch.ids[i]) for i in index[:limit]) + more

        problems = [
            (torch.nonzero(batch.num_atoms == 0).flatten().tolist(), "have no atoms"),
            (
                torch.unique(batch.batch[~torch.isfinite(batch.frac_coords).all(dim=1)]).tolist(),
                "have NaN or inf coordinates",
            ),
            (
                torch.nonzero(~torch.isfinite(batch.lattices).flatten(1).all(dim=1)).flatten().tolist(),
                "have NaN or inf lattices",
            ),
        ]
        for index, what in problems:
            if index:
                raise StructureError(f"{self.name}: crystal(s) {ids(index)} {what}")
        degenerate = torch.nonzero(batch.volumes < 1e-6).flatten().tolist()
        if degenerate:
            raise StructureError(f"{self.name}: crystal(s) {ids(degenerate)} have a degenerate (zero-volume) cell")

    def check_elements(self, batch: CrystalBatch) -> None:
        """Raise :class:`~crystal.errors.StructureError` naming elements outside :attr:`elements`."""
        if self.elements is None:
            return
        present = set(torch.unique(batch.atomic_numbers).tolist())
        missing = sorted(present - set(self.elements))
        if missing:
            from crystal.elements import symbol
            from crystal.errors import StructureError

            raise StructureError(
                f"potential {self.name!r} does not cover element(s) {', '.join(symbol(z) for z in missing)}"
            )


_BASES = {Component, Representation, Encoder, Generator, Characterizer, Potential}
