"""Pipeline files: TOML validated into pydantic models before anything runs.

A pipeline has one ``[source]``, a list of ``[[steps]]`` and a list of ``[[sinks]]``::

    [pipeline]
    name = "screen"
    seed = 0
    device = "auto"

    [source]
    type = "files"
    paths = ["inputs/*.cif"]

    [[steps]]
    id = "relax"
    type = "relax"
    potential = "chgnet"
    fmax = 0.05

    [[steps]]
    id = "best"
    type = "rank"
    by = "energy_per_atom"
    top = 10

    [[sinks]]
    type = "cif"
    path = "structures"

Every model here forbids unknown fields; errors name the file, the step id and the field
with the allowed values (:func:`load_pipeline_config`).
"""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator

from crystal.config import StrictModel, field_hint, tag_values
from crystal.device import DEVICE_PATTERN
from crystal.errors import ConfigError
from crystal.specs import parse_value
from crystal_sim.md import MDConfig
from crystal_sim.relax import RelaxConfig

__all__ = [
    "CharacterizeStep",
    "Condition",
    "CsvSink",
    "DatasetSource",
    "DeduplicateStep",
    "EvaluateStep",
    "FilesSource",
    "FilterStep",
    "GenerateSource",
    "HullStep",
    "MDStep",
    "MetricsStep",
    "PipelineConfig",
    "PipelineMeta",
    "PredictStep",
    "RankStep",
    "RayExecutorConfig",
    "RelaxStep",
    "StructureSink",
    "ValidateStep",
    "apply_overrides",
    "load_pipeline_config",
    "parse_pipeline_config",
]


class RayExecutorConfig(StrictModel):
    """Where and how wide the ``ray`` executor runs (``[pipeline.ray]``; ``crystal run --executor ray
    --address ... --workers N --gpus-per-worker G`` override these fields)."""

    address: str | None = Field(
        None,
        description="Ray cluster to join: 'auto' (the cluster this machine belongs to), 'ray://host:10001' "
        "(Ray Client) or 'host:6379'; default: the RAY_ADDRESS variable, else a Ray instance started on this "
        "machine for the run",
    )
    workers: int | None = Field(
        None,
        ge=1,
        description="actors running the map stages, each loading its components once (default: the "
        "cluster's GPUs / gpus_per_worker when gpus_per_worker > 0, else its CPUs / cpus_per_worker)",
    )
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs reserved by each worker (Ray's num_gpus)")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved by each worker (Ray's num_cpus)")
    max_retries: int = Field(
        3,
        ge=0,
        description="times a block is retried after its worker process died (a Python exception in a step "
        "is not retried: the crystal is isolated and reported as a failure)",
    )


class PipelineMeta(StrictModel):
    name: str = Field("pipeline", pattern=r"^[A-Za-z0-9_.-]+$", description="run name (used in the run directory)")
    description: str = ""
    seed: int = Field(0, ge=0, description="seed for torch, numpy and generators")
    device: str = Field("auto", pattern=DEVICE_PATTERN, description="'auto', 'cpu', 'cuda' or 'cuda:N'")
    chunk_size: int = Field(64, ge=1, description="crystals processed together by each step (and per checkpoint)")
    min_distance: float = Field(
        0.5, gt=0, description="Å; inputs with atoms closer than this are reported as failures before any step"
    )
    executor: Literal["local", "ray"] = Field(
        "local",
        description="'local': this process; 'ray': map stages on a Ray cluster, one block of chunk_size "
        "crystals per task (pip install 'crystal-pipeline[ray]')",
    )
    ray: RayExecutorConfig = Field(default_factory=RayExecutorConfig, description="the ray executor's settings")


# ------------------------------------------------------------------------ sources
class FilesSource(StrictModel):
    type: Literal["files"]
    paths: list[str] = Field(min_length=1, description="files, directories or globs, relative to the pipeline file")
    format: Literal["cif", "poscar", "extxyz", "json", "csv", "parquet"] | None = Field(
        None, description="default: by extension (.parquet: a table with a 'cif' or 'extxyz' column)"
    )
    limit: int | None = Field(
        None, ge=1, description="read at most this many inputs (files, rows, frames, CIF data blocks), readable or not"
    )
    id_column: str | None = Field(
        None, description="CSV/Parquet column holding ids (default: material_id, id or cif_id)"
    )


class DatasetSource(StrictModel):
    type: Literal["dataset"]
    name: str = Field(description="a dataset registered through the register_datasets hook")
    limit: int | None = Field(None, ge=1, description="use at most this many structures")


class GenerateSource(StrictModel):
    type: Literal["generate"]
    generator: str = Field(description="name of an installed generator plugin")
    num_samples: int = Field(
        ge=1, description="valid crystals to deliver (rejected samples are failure rows on top, step 'generate')"
    )
    max_attempts: float = Field(
        4.0,
        ge=1.0,
        le=1000.0,
        description="attempt budget, in samples drawn per requested crystal (valid and rejected together): each "
        "block of n crystals samples again until it has n valid ones or ceil(n × max_attempts) samples were "
        "drawn, then reports the shortfall (warning, manifest 'generation')",
    )
    config: dict[str, Any] = Field(default_factory=dict, description="the generator's own config")
    composition: str | None = Field(None, description="formula, e.g. 'LiFePO4'")
    chemical_system: list[str] | None = Field(None, min_length=1, description="elements, e.g. ['Li', 'O']")
    formula_units: list[int] | None = Field(None, min_length=1, description="formula units per cell to sample")
    space_groups: list[Annotated[int, Field(ge=1, le=230)]] | None = Field(None, min_length=1)


Source = Annotated[FilesSource | DatasetSource | GenerateSource, Field(discriminator="type")]


# ------------------------------------------------------------------------ steps
_ID = r"^[A-Za-z][A-Za-z0-9_-]*$"


class _Step(StrictModel):
    id: str = Field(pattern=_ID, description="unique step id (used by --set and in errors)")


class ValidateStep(_Step):
    """Report crystals with NaN, degenerate cells or atoms closer than ``min_distance``."""

    type: Literal["validate"]
    min_distance: float = Field(0.5, gt=0, description="Å")


def _relax_field(name: str) -> Any:
    """The :class:`~crystal_sim.relax.RelaxConfig` field ``name`` (default, constraints, description)."""
    return copy.copy(RelaxConfig.model_fields[name])


class RelaxStep(_Step):
    """Relax positions (and cell) with a potential; adds energy, energy_per_atom, converged, relax_steps."""

    type: Literal["relax"]
    potential: str = Field(description="name of an installed potential plugin")
    config: dict[str, Any] = Field(default_factory=dict, description="the potential's own config")
    fmax: float = Field(0.1, gt=0, description="eV/Å")
    max_steps: int = Field(500, ge=0, description="FIRE steps per crystal at most")
    relax_cell: bool = Field(True, description="relax the lattice too")
    scalar_pressure: float = Field(0.0, description="eV/Å³")
    trajectory_every: int = Field(
        0, ge=0, description="write trajectories/<step>-chunk<N>.extxyz with a frame every N FIRE steps (0: none)"
    )
    max_volume_factor: float | None = _relax_field("max_volume_factor")
    max_energy_rise_per_atom: float | None = _relax_field("max_energy_rise_per_atom")
    max_energy_drop_per_atom: float | None = _relax_field("max_energy_drop_per_atom")
    inflight: bool = _relax_field("inflight")
    max_batch_size: int | None = _relax_field("max_batch_size")
    max_batch_metric: Annotated[float, Field(gt=0)] | Literal["auto"] | None = _relax_field("max_batch_metric")
    memory_fraction: float = _relax_field("memory_fraction")

    @model_validator(mode="after")
    def _check_batching(self) -> RelaxStep:
        try:
            self.relax_config()  # RelaxConfig's own cross-field rules (memory_fraction needs 'auto')
        except ValidationError as exc:
            problems = [
                (f"{'.'.join(map(str, e['loc']))}: " if e["loc"] else "") + _error_message(e) for e in exc.errors()
            ]
            raise ValueError("; ".join(problems)) from None
        return self

    def relax_config(self) -> RelaxConfig:
        """The :class:`~crystal_sim.relax.RelaxConfig` of this step."""
        return RelaxConfig(**self.model_dump(include=set(RelaxConfig.model_fields)))


def _error_message(err: Any) -> str:
    """One pydantic error as text: a validator's own message, without pydantic's "Value error, ",
    a did-you-mean for an unknown field, the allowed types for a table without ``type``."""
    loc = tuple(err["loc"])
    if err["type"] == "extra_forbidden":
        msg = "unknown field" + field_hint(PipelineConfig, loc)
    elif err["type"] == "union_tag_not_found":
        key = err.get("ctx", {}).get("discriminator", "type").strip("'")
        allowed = tag_values(PipelineConfig, loc, key)
        msg = f"no {key!r} given; {key} must be one of: {', '.join(map(repr, allowed))}"
        if loc and loc[0] == "steps":
            msg += " (each [[steps]] table needs an id and a type; see docs/pipelines.md)"
    elif err["type"] == "value_error" and "error" in err.get("ctx", {}):
        msg = str(err["ctx"]["error"])
    else:
        msg = str(err["msg"])
    return msg


def _md_field(name: str) -> Any:
    """The :class:`~crystal_sim.md.MDConfig` field ``name`` (default, constraints, description)."""
    return copy.copy(MDConfig.model_fields[name])


class MDStep(_Step):
    """Batched molecular dynamics at fixed cell (:func:`crystal_sim.md.run_md`); the structures
    become the final frames; adds energy, energy_per_atom, md_temperature_mean (and, for
    NVE, md_energy_drift_per_atom).

    The MD fields are :class:`~crystal_sim.md.MDConfig`'s own (same names, defaults, limits
    and units) and the combination is validated by it (e.g. ``friction`` needs
    ``nvt-langevin``); ``seed`` is one integer, by default the pipeline's.
    """

    type: Literal["md"]
    potential: str = Field(description="name of an installed potential plugin")
    config: dict[str, Any] = Field(default_factory=dict, description="the potential's own config")
    ensemble: Literal["nve", "nvt-langevin"] = _md_field("ensemble")
    timestep: float = _md_field("timestep")
    steps: int = _md_field("steps")
    temperature: float = _md_field("temperature")
    friction: float | None = _md_field("friction")
    init_temperature: float | None = _md_field("init_temperature")
    log_every: int = _md_field("log_every")
    wrap: bool = _md_field("wrap")
    max_energy_change_per_atom: float | None = _md_field("max_energy_change_per_atom")
    max_batch_size: int | None = _md_field("max_batch_size")
    max_batch_metric: Annotated[float, Field(gt=0)] | Literal["auto"] | None = _md_field("max_batch_metric")
    memory_fraction: float = _md_field("memory_fraction")
    seed: int | None = Field(
        None,
        ge=0,
        description="default: the pipeline seed; each crystal's MD seed is derived from it, the step id and "
        "the crystal id (independent of chunking and order)",
    )

    @model_validator(mode="after")
    def _check_md(self) -> MDStep:
        try:
            self.md_config([])  # MDConfig's own cross-field rules
        except ValidationError as exc:
            problems = [
                (f"{'.'.join(map(str, e['loc']))}: " if e["loc"] else "") + _error_message(e) for e in exc.errors()
            ]
            raise ValueError("; ".join(problems)) from None
        if self.log_every > self.steps:
            raise ValueError(
                f"log_every ({self.log_every}) is larger than steps ({self.steps}): no MD frame would be recorded"
            )
        return self

    def md_config(self, seeds: list[int]) -> MDConfig:
        """The :class:`~crystal_sim.md.MDConfig` for a chunk whose crystals get ``seeds``."""
        fields = self.model_dump(include=set(MDConfig.model_fields) - {"seed"})
        return MDConfig(**fields, seed=seeds)


class PredictStep(_Step):
    """Predict properties with an encoder; adds one column per target."""

    type: Literal["predict"]
    encoder: str = Field(description="name of an installed encoder plugin")
    config: dict[str, Any] = Field(default_factory=dict, description="the encoder's own config (e.g. weights)")
    random_init: bool = Field(
        False,
        description="predict with a randomly initialised (untrained) encoder on purpose; without it a config "
        "naming no weights or checkpoint (and an encoder without default weights) is refused",
    )


class CharacterizeStep(_Step):
    """Simulate a signal with a representation and characterize it; adds top-1 class and probability."""

    type: Literal["characterize"]
    characterizer: str = Field(description="name of an installed characterizer plugin")
    config: dict[str, Any] = Field(default_factory=dict)
    random_init: bool = Field(
        False,
        description="characterize with a randomly initialised (untrained) characterizer on purpose; without it "
        "a config naming no weights or checkpoint (and a characterizer without default weights) is refused",
    )
    representation: str | None = Field(
        None, description="representation producing the signal (default: what the characterizer consumes)"
    )
    representation_config: dict[str, Any] = Field(default_factory=dict)


class MetricsStep(_Step):
    """Compute registered per-crystal metrics (register_metrics hook) as columns."""

    type: Literal["metrics"]
    names: list[str] = Field(min_length=1)


class Condition(StrictModel):
    column: str
    op: Literal["<", "<=", ">", ">=", "==", "!="]
    value: float


class FilterStep(_Step):
    """Keep crystals satisfying every condition; others are reported as 'filtered'."""

    type: Literal["filter"]
    where: list[Condition] = Field(min_length=1)


class RankStep(_Step):
    """Sort by a column; with ``top`` keep only the best ones (the rest reported as 'filtered')."""

    type: Literal["rank"]
    by: str
    descending: bool = False
    top: int | None = Field(None, ge=1)


class DeduplicateStep(_Step):
    """Drop structures equivalent (pymatgen StructureMatcher) to an earlier one in the current order."""

    type: Literal["deduplicate"]
    ltol: float = Field(0.2, gt=0, description="fractional length tolerance")
    stol: float = Field(0.3, gt=0, description="site tolerance, in units of (V/N)^(1/3)")
    angle_tol: float = Field(5.0, gt=0, description="degrees")


class EvaluateStep(_Step):
    """Score the crystals that reach this step as generated samples (:mod:`crystal_metrics`) and
    write a JSON report into the run directory; every crystal passes on unchanged."""

    type: Literal["evaluate"]
    task: Literal["csp", "generation"] = Field(description="crystal structure prediction or ab initio generation")
    reference: list[str] = Field(
        min_length=1, description="test structures: files, folders or globs, relative to the pipeline file"
    )
    k: list[Annotated[int, Field(ge=1)]] | None = Field(
        None, min_length=1, description="csp: samples per test structure to score (default: 1 and all)"
    )
    group_by: Literal["auto", "id", "composition"] = Field(
        "auto", description="csp: pair samples with test structures by id or reduced formula"
    )
    dataset: Literal["perov_5", "carbon_24", "mp_20"] | None = Field(
        None, description="generation: CDVAE coverage cut-offs of this data set"
    )
    struc_cutoff: float | None = Field(None, gt=0, description="generation: structure-fingerprint cut-off")
    comp_cutoff: float | None = Field(None, gt=0, description="generation: composition-fingerprint cut-off")
    n_samples: int | None = Field(None, ge=1, description="generation: valid crystals drawn for Wasserstein distances")
    train: list[str] | None = Field(None, min_length=1, description="training structures (uniqueness, novelty)")
    sun: bool = Field(False, description="generation: also stability, uniqueness and novelty with a potential")
    potential: str | None = Field(None, description="sun: name of an installed potential plugin")
    config: dict[str, Any] = Field(default_factory=dict, description="sun: the potential's own config")
    hull_reference: list[str] | None = Field(
        None, min_length=1, description="sun: structures whose relaxed energies define the convex hull"
    )
    stability_threshold: float = Field(0.1, description="sun: stable when E_hull <= this, eV/atom")
    fmax: float = Field(0.1, gt=0, description="sun: relaxation force threshold, eV/Å")
    max_steps: int = Field(500, ge=0, description="sun: FIRE steps per crystal at most")
    reference_limit: int | None = Field(None, ge=1, description="read at most this many reference structures")
    workers: int = Field(0, ge=0, description="worker processes for StructureMatcher and fingerprints")
    output: str | None = Field(None, description="report path in the run directory (default: <step id>.json)")

    @model_validator(mode="after")
    def _check_task_fields(self) -> EvaluateStep:
        if self.task == "csp":
            used = [f for f in ("dataset", "struc_cutoff", "comp_cutoff", "n_samples", "train") if getattr(self, f)]
            if self.sun or used:
                raise ValueError(f"task 'csp' does not use {', '.join(used + (['sun'] if self.sun else []))}")
        elif self.k is not None:
            raise ValueError("k applies to task 'csp' only")
        if self.sun and (self.potential is None or self.hull_reference is None):
            raise ValueError("sun = true needs potential and hull_reference")
        if not self.sun and (self.potential is not None or self.hull_reference is not None):
            raise ValueError("potential and hull_reference are used with sun = true only")
        return self


class HullStep(_Step):
    """Formation energy and energy above the convex hull of reference phases relaxed with the
    same potential (:mod:`crystal_pipeline.hull`); adds formation_energy_per_atom and
    e_above_hull (eV/atom) and stable (1 when e_above_hull <= stable_threshold, else 0)."""

    type: Literal["hull"]
    potential: str = Field(
        description="name of an installed potential plugin: relaxes the references (and, without energy_from, "
        "gives each crystal's energy); must be energy_from's potential"
    )
    config: dict[str, Any] = Field(default_factory=dict, description="the potential's own config")
    energy_from: str | None = Field(
        None,
        description="id of an earlier relax step (same potential and config) whose 'energy' column, eV, is each "
        "crystal's energy; default: a single-point energy of each crystal as it reaches this step",
    )
    elemental_references: Literal["dcdft", "none"] = Field(
        "dcdft",
        description="'dcdft': the elemental crystals of ase.collections.dcdft (71 elements; the gaseous elements "
        "as molecular crystals) are references; 'none': only references / reference_datasets",
    )
    references: list[str] = Field(
        default_factory=list,
        description="known phases: structure files, folders or globs (CIF, POSCAR, extxyz, ...), relative to the "
        "pipeline file, or 'package:<package>/<folder>' for phases shipped inside an installed package",
    )
    reference_datasets: list[str] = Field(
        default_factory=list, description="known phases: datasets registered by the register_datasets hook"
    )
    fmax: float = Field(0.05, gt=0, description="eV/Å; force threshold of the reference relaxations")
    max_steps: int = Field(
        500, ge=0, description="FIRE steps per reference at most (0: single-point energies of the references)"
    )
    stable_threshold: float = Field(
        0.1,
        ge=0,
        description="eV/atom; 'stable' is 1 when e_above_hull <= this (0.1: the usual metastability window)",
    )

    @model_validator(mode="after")
    def _has_references(self) -> HullStep:
        if self.elemental_references == "none" and not self.references and not self.reference_datasets:
            raise ValueError(
                "no reference phases: elemental_references = 'none' needs references or reference_datasets"
            )
        return self


def _hull_energy_problems(steps: list[Any]) -> list[str]:
    """A hull step's energy_from must name an earlier relax step with the same potential and
    config, and no relax or md step may change the energy in between."""
    problems = []
    for i, step in enumerate(steps):
        if step.type != "hull" or step.energy_from is None:
            continue
        where = f"step {step.id!r}: field 'energy_from'"
        earlier = {s.id: k for k, s in enumerate(steps[:i])}
        if step.energy_from not in earlier:
            relaxes = [s.id for s in steps[:i] if s.type == "relax"]
            problems.append(
                f"{where}: no earlier step {step.energy_from!r} (earlier relax steps: {', '.join(relaxes) or 'none'})"
            )
            continue
        k = earlier[step.energy_from]
        source = steps[k]
        if source.type != "relax":
            problems.append(f"{where}: step {source.id!r} is a {source.type} step, not a relax step")
        elif (source.potential, source.config) != (step.potential, step.config):
            problems.append(
                f"{where}: step {source.id!r} relaxes with potential {source.potential!r} config {source.config}, "
                f"this step uses {step.potential!r} config {step.config}: energies of different potentials cannot "
                "share a hull; give both the same potential and config"
            )
        later = [s.id for s in steps[k + 1 : i] if s.type in ("relax", "md")]
        if later:
            problems.append(
                f"{where}: step(s) {', '.join(later)} change the energy after {source.id!r}; name the last of them"
            )
    return problems


Step = Annotated[
    ValidateStep
    | RelaxStep
    | MDStep
    | PredictStep
    | CharacterizeStep
    | MetricsStep
    | FilterStep
    | RankStep
    | DeduplicateStep
    | EvaluateStep
    | HullStep,
    Field(discriminator="type"),
]
MAP_STEPS = ("validate", "relax", "md", "predict", "characterize", "metrics", "hull")


# ------------------------------------------------------------------------ sinks
class StructureSink(StrictModel):
    """Write the crystals that survive every step."""

    type: Literal["cif", "poscar", "extxyz", "json"]
    path: str = Field(description="relative to the run directory; a folder for cif/poscar, a file otherwise")
    symprec: float | None = Field(None, gt=0, description="cif only: symmetrise with this tolerance, Å")

    @model_validator(mode="after")
    def _symprec_only_cif(self) -> StructureSink:
        if self.symprec is not None and self.type != "cif":
            raise ValueError("symprec applies to cif sinks only")
        return self


class CsvSink(StrictModel):
    """A table of the surviving crystals: rank (when a rank step ran), id, formula, num_atoms
    and the chosen (or all) columns, with the unit of every column (``units``)."""

    type: Literal["csv"]
    path: str = "summary.csv"
    columns: list[str] | None = Field(None, description="columns to write (default: all)")
    units: Literal["sidecar", "header", "none"] = Field(
        "sidecar",
        description="where the unit of each column is written: 'sidecar' (default): plain column names and "
        "<path stem>.units.csv beside the table (rows column,unit); 'header': in the header, "
        "'energy_per_atom (eV/atom)'; 'none': nowhere (the manifest's units only)",
    )


Sink = Annotated[StructureSink | CsvSink, Field(discriminator="type")]


class PipelineConfig(StrictModel):
    pipeline: PipelineMeta = Field(default_factory=PipelineMeta)
    source: Source
    steps: list[Step] = Field(default_factory=list)
    sinks: list[Sink] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_ids(self) -> PipelineConfig:
        seen: set[str] = set()
        for step in self.steps:
            if step.id in seen:
                raise ValueError(f"step id {step.id!r} is used twice")
            seen.add(step.id)
        return self

    @model_validator(mode="after")
    def _hull_energy_from(self) -> PipelineConfig:
        problems = _hull_energy_problems(self.steps)
        if problems:
            raise ValueError("; ".join(problems))
        return self


# ------------------------------------------------------------------------ loading
def _describe_loc(loc: tuple[Any, ...], data: dict[str, Any]) -> str:
    if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
        steps = data.get("steps") or []
        sid = steps[loc[1]].get("id") if loc[1] < len(steps) and isinstance(steps[loc[1]], dict) else None
        rest = [
            str(p)
            for p in loc[2:]
            if not (isinstance(p, str) and p in (*MAP_STEPS, "filter", "rank", "deduplicate", "evaluate"))
        ]
        where = f"step {sid!r} (steps[{loc[1]}])" if sid else f"steps[{loc[1]}]"
        return f"{where}: field {'.'.join(rest)!r}" if rest else where
    if len(loc) >= 2 and loc[0] == "sinks" and isinstance(loc[1], int):
        rest = [str(p) for p in loc[2:] if p not in ("cif", "poscar", "extxyz", "json", "csv")]
        return f"sinks[{loc[1]}]: field {'.'.join(rest)!r}" if rest else f"sinks[{loc[1]}]"
    if loc and loc[0] == "source":
        rest = [str(p) for p in loc[1:] if p not in ("files", "dataset", "generate")]
        return f"source: field {'.'.join(rest)!r}" if rest else "source"
    return f"field {'.'.join(str(p) for p in loc)!r}" if loc else "pipeline"


def parse_pipeline_config(data: dict[str, Any], origin: str = "<pipeline>") -> PipelineConfig:
    """Validate a pipeline given as a dict; :class:`ConfigError` lists every problem."""
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            lines.append(f"{origin}: {_describe_loc(tuple(err['loc']), data)}: {_error_message(err)}")
        raise ConfigError("\n".join(lines)) from None


def apply_overrides(data: dict[str, Any], overrides: list[str], origin: str = "<pipeline>") -> dict[str, Any]:
    """Apply ``--set`` overrides: ``STEP_ID.field=value``, ``pipeline.field=value``,
    ``source.field=value`` or ``sinks.N.field=value``; values are parsed as TOML."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        m = re.match(r"^([A-Za-z0-9_.-]+)=(.*)$", item)
        if not m:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. relax.fmax=0.05")
        key, raw = m.group(1), m.group(2)
        parts = key.split(".")
        if len(parts) < 2:
            raise ConfigError(f"--set {item!r}: key must be SECTION.field (e.g. pipeline.seed or relax.fmax)")
        head, *path = parts
        if head in ("pipeline", "source"):
            node = data.setdefault(head, {})
        elif head == "sinks":
            sinks = data.get("sinks") or []
            if not path or not path[0].isdigit() or int(path[0]) >= len(sinks):
                raise ConfigError(f"--set {item!r}: sinks.N.field with N < {len(sinks)}")
            node, path = sinks[int(path[0])], path[1:]
        else:
            steps = [s for s in data.get("steps") or [] if isinstance(s, dict) and s.get("id") == head]
            if not steps:
                ids = [s.get("id") for s in data.get("steps") or [] if isinstance(s, dict)]
                raise ConfigError(
                    f"{origin}: --set {item!r}: no step with id {head!r} (steps: {', '.join(map(str, ids)) or 'none'}; "
                    "or use pipeline., source., sinks.N.)"
                )
            node = steps[0]
        for p in path[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {p!r} is not a table")
        node[path[-1]] = parse_value(raw)
    return data


def load_pipeline_config(path: str | Path, overrides: list[str] | None = None) -> tuple[PipelineConfig, dict[str, Any]]:
    """Read, override and validate a pipeline TOML file; returns ``(config, raw dict)``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read pipeline file: {exc.strerror or exc}") from None
    if not text.strip():
        raise ConfigError(f"{p}: pipeline file is empty")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: malformed TOML: {exc}") from None
    data = apply_overrides(data, overrides or [], str(p))
    return parse_pipeline_config(data, str(p)), data
