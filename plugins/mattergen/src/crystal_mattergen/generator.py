"""MatterGen as a :class:`crystal.Generator`: unconditional and property-conditioned generation of
inorganic crystals (atom types, fractional coordinates and lattice all diffused).

Sampling rules:

1. **Weights.** ``weights`` names a released checkpoint (``mattergen-base`` by default: the
   paper's unconditional model trained on Alex-MP-20; the fine-tuned conditional ones such as
   ``mattergen-dft-band-gap``) or the shipped demo; ``checkpoint`` a local file instead (a
   ``model.pt`` from :mod:`crystal_mattergen.train`, or a released ``last.ckpt`` with its
   ``config.yaml`` two folders up). Remote files are downloaded once into ``$CRYSTAL_CACHE``.
2. **Atom counts** are drawn per sample from the training set's histogram stored with the
   weights (the released weights: Alex-MP-20's, as the reference's ``ALEX_MP_20``).
3. **Conditions** (classifier-free guidance, :mod:`crystal_mattergen.sampler`):
   ``chemical_system`` (``GenerationConditions.chemical_system`` or the config's, e.g.
   ``"Li-Fe-O"``), ``space_group`` (``GenerationConditions.space_groups``: one drawn uniformly
   per sample, or the config's), and scalar ``properties`` (e.g. ``{dft_band_gap = 1.5}``, eV).
   Each must be one the weights were trained on, else :class:`~crystal.errors.ConfigError`.
   ``guidance_factor`` γ mixes the unconditional and conditional outputs as
   ``uncond + γ (cond - uncond)`` (reference default for property targets: 2.0). A composition
   or formula units cannot be honoured (MatterGen's CSP variant is not released): they raise.
   :meth:`MatterGenGenerator.check_conditions` checks all this without loading (or downloading)
   the weights, from the conditions each named checkpoint was fine-tuned on (:data:`RELEASED`).
4. **Batching.** Up to ``batch_size`` crystals are denoised together; chunk ``c`` draws its noise
   from a generator seeded with ``(seed, c)``, so a call is reproducible for its seed,
   ``num_samples`` and config.
5. **Validity.** A sample with a leftover mask type, NaN/inf values, a degenerate cell, atoms
   closer than ``min_distance`` (periodic images included) or a cell volume per atom above
   ``max_volume_per_atom`` is left out of the batch (the
   Generator contract forbids invalid geometry) and reported: one :class:`RejectedSample` per
   rejected sample (slot, reason) from :meth:`MatterGenGenerator.generate_detailed` (a pipeline
   makes them failure rows and samples again), and rows (id, sample index, reason) in
   :attr:`MatterGenGenerator.last_report`.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from crystal.batch import CrystalBatch
from crystal.components import (
    ComponentConfig,
    ConditionError,
    GenerationConditions,
    GenerationResult,
    Generator,
    RejectedSample,
)
from crystal.elements import atomic_number
from crystal.errors import ConfigError
from crystal.manifest import NamedWeights, WeightsManifest
from crystal_mattergen.sampler import SCALAR_CONDITIONS

__all__ = ["DEFAULT_WEIGHTS", "RELEASED", "WEIGHTS", "GenerationReport", "MatterGenConfig", "MatterGenGenerator"]

log = logging.getLogger(__name__)

_HF = "https://huggingface.co/microsoft/mattergen/resolve/main/checkpoints"
_CITATION = (
    "C. Zeni et al., 'A generative model for inorganic materials design', Nature 639, 624-632 (2025), "
    "doi:10.1038/s41586-025-08628-5"
)
_ALEX = "Alex-MP-20 (607,683 structures with <= 20 atoms from Materials Project and Alexandria)"

#: released checkpoints: crystal name -> (reference name, sha256, size, conditions, training data note)
RELEASED: dict[str, tuple[str, str, int, tuple[str, ...], str]] = {
    "mattergen-base": (
        "mattergen_base",
        "81668ee12afc1ee1b037f362420730de3460bfd2d36e547585fdcb911a3dfdef",
        461370350,
        (),
        _ALEX,
    ),
    "mattergen-mp-20-base": (
        "mp_20_base",
        "ffb80e4425a6f99f479a67b8cd111885d45117234e8947ff77eb3a55df420b9a",
        461369442,
        (),
        "MP-20 (45,231 structures with <= 20 atoms from Materials Project, CDVAE splits)",
    ),
    "mattergen-chemical-system": (
        "chemical_system",
        "4ad21d977c2b776a31c92498c4d1c88d3e1e286deeb941e997af8e082310b80e",
        512404276,
        ("chemical_system",),
        f"{_ALEX}; fine-tuned on chemical-system labels",
    ),
    "mattergen-space-group": (
        "space_group",
        "1b6ab06739f4319d75f4a19960840ec3c8d3d32ee842c996876ef9d8b188e4bb",
        513189244,
        ("space_group",),
        f"{_ALEX}; fine-tuned on space-group labels",
    ),
    "mattergen-dft-mag-density": (
        "dft_mag_density",
        "01dd3e86805165412e0810e2a77a4756f8e1020f3ff2707c74af0a3f88a1bb8e",
        511777278,
        ("dft_mag_density",),
        f"{_ALEX}; fine-tuned on DFT magnetic density labels (μB/Å³)",
    ),
    "mattergen-dft-band-gap": (
        "dft_band_gap",
        "864ebbfd360e0a8287287d290a552da6b6bd92d67418a6a40be419ed3acd5e7e",
        511777150,
        ("dft_band_gap",),
        f"{_ALEX}; fine-tuned on DFT band gap labels (eV)",
    ),
    "mattergen-ml-bulk-modulus": (
        "ml_bulk_modulus",
        "67f7f5e28695776ed285a293b30160f8b546063cbac4a763a36f6ca3f6242db6",
        511777406,
        ("ml_bulk_modulus",),
        f"{_ALEX}; fine-tuned on MatterSim-predicted bulk modulus labels (GPa)",
    ),
    "mattergen-dft-mag-density-hhi-score": (
        "dft_mag_density_hhi_score",
        "98a4f2f9263b013d7d94a04c08e6928f90933d5f02c75f9b58c12609dddef016",
        562187480,
        ("dft_mag_density", "hhi_score"),
        f"{_ALEX}; fine-tuned on magnetic density (μB/Å³) and HHI score labels",
    ),
    "mattergen-chemical-system-energy-above-hull": (
        "chemical_system_energy_above_hull",
        "50d4a51b109b178db98de82849d0ad14397b663526b2387caee3a643f27e326a",
        562814862,
        ("chemical_system", "energy_above_hull"),
        f"{_ALEX}; fine-tuned on chemical-system and energy-above-hull (eV/atom) labels",
    ),
}


def _released_entry(name: str) -> WeightsManifest:
    ref, sha, size, conds, data = RELEASED[name]
    what = f"conditioned on {', '.join(conds)}" if conds else "unconditional"
    return WeightsManifest(
        name=name,
        file=f"{_HF}/{ref}/checkpoints/last.ckpt",
        sha256=sha,
        size=size,
        licence="MIT",
        citation=_CITATION,
        training_data=data,
        description=(
            f"MatterGen released checkpoint '{ref}' ({what}; GemNet-T denoiser, Lightning last.ckpt, loaded "
            "weights-only); sha256/size from the git-LFS pointer in github.com/microsoft/mattergen "
            f"(checkpoints/{ref}/checkpoints/last.ckpt, commit ac9ddd4)"
        ),
    )


DEMO = WeightsManifest(
    name="mattergen-perov5-demo",
    file="package:crystal_mattergen/weights/mattergen-perov5-demo.pt",
    sha256="721bf7215d0bca40e9b618bbac4f8ce1ec7ecb15499a2c8385c49875983bc35a",
    size=2346995,
    licence="MIT",
    citation=_CITATION,
    training_data=(
        "Perov-5 (CDVAE splits): val.csv: 3408 structures for training + 379 held out for model selection (seed 0)"
    ),
    description=(
        "small UNCONDITIONAL demo trained by crystal (not the paper's model): GemNet-T denoiser (widths 64, 2 blocks, "
        "32 radial functions, 20 neighbours; 575,665 parameters), 8 epochs (~17 CPU-minutes, 1 thread); "
        "model card: weights/mattergen-perov5-demo.md"
    ),
    metrics={
        "val_loss": 0.50020,
        "val_loss_cell": 0.15099,
        "val_loss_pos": 2.21404,
        "val_loss_atomic_numbers": 0.12781,
        "samples32_steps100_valid_percent": 93.75,
        "samples32_steps100_abx3_of_valid_percent": 16.67,
        "samples32_steps100_mean_volume_per_atom_A3": 64.6,
    },
)

#: the named weights this component can load (declared once: `crystal plugins manifest --write`
#: copies them into crystal_plugin.toml)
WEIGHTS = NamedWeights(*(_released_entry(n) for n in RELEASED), DEMO)

DEFAULT_WEIGHTS = "mattergen-base"


class MatterGenConfig(ComponentConfig):
    """Configuration of the ``mattergen`` generator."""

    weights: Annotated[str, WEIGHTS] | None = Field(
        None,
        description="named weights; None = mattergen-base (the paper's unconditional Alex-MP-20 model); "
        "mattergen-perov5-demo = a small demo trained by crystal on Perov-5",
    )
    checkpoint: str | None = Field(
        None,
        description="local model file instead of named weights: a model.pt from crystal_mattergen.train, or a "
        "released last.ckpt (its config.yaml two folders up) / run folder",
    )
    chemical_system: str | None = Field(
        None, description="condition: elements joined by '-', e.g. 'Li-Fe-O' (conditions.chemical_system wins)"
    )
    space_group: int | None = Field(
        None, ge=1, le=230, description="condition: international number (conditions.space_groups wins)"
    )
    properties: dict[str, float] = Field(
        default_factory=dict,
        description="scalar conditions in the dataset's units: dft_band_gap (eV), dft_mag_density (μB/Å³), "
        "dft_bulk_modulus (GPa), ml_bulk_modulus (GPa), energy_above_hull (eV/atom), hhi_score",
    )
    guidance_factor: float = Field(
        2.0,
        ge=0.0,
        le=100.0,
        description="classifier-free guidance γ: uncond + γ (cond - uncond); 0 = unconditional, 1 = conditional "
        "model, paper: 2.0. Ignored without conditions",
    )
    num_atoms_distribution: Literal["weights", "alex_mp_20"] = Field(
        "weights",
        description="atom counts per sample: 'weights' = the training set's histogram stored with the weights "
        "(released weights: Alex-MP-20), 'alex_mp_20' = the reference's ALEX_MP_20 table",
    )
    steps: int | None = Field(
        None,
        ge=2,
        le=100_000,
        description="time points of the sampler; None = the D3PM chain length of the weights (paper: 1000); "
        "fewer = coarser steps (atom types jump several D3PM levels)",
    )
    corrector: Literal["langevin", "none"] = Field(
        "langevin", description="'langevin': predictor-corrector sampling (paper); 'none': predictor only"
    )
    batch_size: int = Field(64, ge=1, le=1_000_000, description="crystals denoised together on the device")
    min_distance: float = Field(
        0.5, ge=0.0, le=5.0, description="Å; crystals with atoms closer than this are rejected (reported)"
    )
    max_volume_per_atom: float | None = Field(
        1000.0,
        gt=0.0,
        description="Å³; crystals with a larger cell volume per atom are rejected (reported) as blown-up lattices "
        "(a poorly trained denoiser can make the Langevin corrector explode); None = no limit",
    )

    @field_validator("properties")
    @classmethod
    def _known_properties(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(SCALAR_CONDITIONS))
        if unknown:
            raise ValueError(f"unknown scalar properties {unknown}; known: {sorted(SCALAR_CONDITIONS)}")
        for key, value in v.items():
            if not np.isfinite(value):
                raise ValueError(f"property {key!r} must be finite, got {value}")
        return v

    @field_validator("chemical_system")
    @classmethod
    def _valid_system(cls, v: str | None) -> str | None:
        if v is not None:
            parse_chemical_system(v)
        return v


def parse_chemical_system(text: str | tuple[str, ...] | list[str]) -> str:
    """``"Li-Fe-O"`` / ``("Li", "Fe", "O")`` → ``"Fe-Li-O"`` (validated, sorted, unique)."""
    parts = text.split("-") if isinstance(text, str) else list(text)
    parts = [p.strip() for p in parts if p.strip()]
    if not parts:
        raise ConfigError("mattergen: chemical system is empty")
    for p in parts:
        try:
            atomic_number(p)
        except ValueError as exc:
            raise ConfigError(f"mattergen: chemical system {text!r}: {exc}") from None
    return "-".join(sorted(set(parts)))


@dataclass
class GenerationReport:
    """What the last :meth:`MatterGenGenerator.generate` call did; ``rejected`` has one row per
    sample left out: ``{"id", "sample", "reason"}``."""

    num_sampled: int = 0
    num_valid: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    denoiser_evaluations: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "num_sampled": self.num_sampled,
            "num_valid": self.num_valid,
            "rejected": [dict(r) for r in self.rejected],
            "denoiser_evaluations": self.denoiser_evaluations,
            "seconds": self.seconds,
        }


@lru_cache(maxsize=4)
def _load_named(name: str) -> tuple[Any, dict[str, Any]]:
    from crystal.weights import resolve_weights
    from crystal_mattergen.model import load_model, load_released_file

    path, _ = resolve_weights(name)
    if name in RELEASED:
        return load_released_file(path, RELEASED[name][0])
    return load_model(path)


class MatterGenGenerator(Generator):
    """MatterGen (Zeni et al., Nature 2025): diffusion of atom types, coordinates and lattice."""

    name: ClassVar[str] = "mattergen"
    version: ClassVar[str] = "0.1.0"
    description = (
        "MatterGen: GemNet-T denoiser; lattice VP-SDE towards a density-scaled symmetric prior, wrapped VE-SDE "
        "on fractional coordinates, absorbing-state D3PM on atom types; predictor-corrector sampling with "
        "classifier-free guidance on chemical system, space group and scalar properties"
    )
    Config: ClassVar[type[ComponentConfig]] = MatterGenConfig
    consumes: ClassVar[str] = "conditions"
    produces: ClassVar[str] = "crystal"
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    weights: ClassVar[tuple[str, ...]] = WEIGHTS
    default_weights: ClassVar[str | None] = DEFAULT_WEIGHTS

    def __init__(self, config: Any = None, *, device: str = "auto", **overrides: Any) -> None:
        super().__init__(config, device=device, **overrides)
        cfg: MatterGenConfig = self.config  # type: ignore[assignment]
        if cfg.checkpoint is not None:
            from crystal_mattergen.model import load_model

            model, meta = load_model(Path(cfg.checkpoint).expanduser())
            self.source = str(cfg.checkpoint)
        else:
            self.source = cfg.weights or DEFAULT_WEIGHTS
            model, meta = _load_named(self.source)
        self.model = copy.deepcopy(model).to(self.device).eval()
        self.metadata = meta
        self.last_report = GenerationReport()
        self._check_config_conditions()

    def weights_in_use(self) -> tuple[str, ...]:
        cfg: MatterGenConfig = self.config  # type: ignore[assignment]
        return () if cfg.checkpoint is not None else (cfg.weights or DEFAULT_WEIGHTS,)

    # ---------------------------------------------------------------- conditions
    def _require(self, prop: str) -> None:
        known = self.model.property_names
        if prop not in known:
            have = ", ".join(known) if known else "none (unconditional model)"
            options = [n for n, r in RELEASED.items() if prop in r[3]]
            hint = f"; weights conditioned on it: {', '.join(options)}" if options else ""
            raise ConfigError(
                f"generator 'mattergen': weights {self.source!r} cannot condition on {prop!r} "
                f"(their conditions: {have}){hint}"
            )

    def _check_config_conditions(self) -> None:
        cfg: MatterGenConfig = self.config  # type: ignore[assignment]
        if cfg.chemical_system is not None:
            self._require("chemical_system")
        if cfg.space_group is not None:
            self._require("space_group")
        for prop in cfg.properties:
            self._require(prop)

    @classmethod
    def check_conditions(
        cls, conditions: GenerationConditions, config: ComponentConfig | Mapping[str, Any] | None = None
    ) -> None:
        """Raise :class:`ConditionError` for what MatterGen cannot honour (rule 3), without loading
        the weights: a composition or formula units always; a chemical system, space groups or a
        config property that the named weights were not fine-tuned on (:data:`RELEASED`; the demo
        is unconditional; a ``checkpoint``'s conditions are checked when it is loaded)."""
        cfg = config if isinstance(config, MatterGenConfig) else cls.make_config(config)
        assert isinstance(cfg, MatterGenConfig)
        where = "generator 'mattergen'"
        for name in ("composition", "formula_units"):
            if getattr(conditions, name) is not None:
                raise ConditionError(
                    f"{where}: conditions.{name} is not supported (MatterGen generates the composition; it supports "
                    "chemical_system and space_groups with weights fine-tuned on them)",
                    name,
                )
        if cfg.checkpoint is not None:
            return
        weights = cfg.weights or DEFAULT_WEIGHTS
        known = RELEASED[weights][3] if weights in RELEASED else ()
        wanted: list[tuple[str | None, str]] = [
            (f, prop)
            for f, prop, given in (
                ("chemical_system", "chemical_system", conditions.chemical_system or cfg.chemical_system),
                ("space_groups", "space_group", conditions.space_groups or cfg.space_group),
            )
            if given is not None
        ]
        wanted += [(None, prop) for prop in cfg.properties]
        for f, prop in wanted:
            if prop not in known:
                have = ", ".join(known) if known else "none (unconditional model)"
                options = [n for n, r in RELEASED.items() if prop in r[3]]
                hint = f"; weights conditioned on it: {', '.join(options)}" if options else ""
                raise ConditionError(
                    f"{where}: weights {weights!r} cannot condition on {prop!r} (their conditions: {have}){hint}",
                    f if f is not None and getattr(conditions, f) is not None else None,
                )

    def _plan(
        self, num_samples: int, conditions: GenerationConditions | None, rng: np.random.Generator
    ) -> dict[str, list[Any]]:
        """Per-sample condition values by property name."""
        cfg: MatterGenConfig = self.config  # type: ignore[assignment]
        cond = conditions or GenerationConditions()
        where = "generator 'mattergen'"
        self.check_conditions(cond, cfg)
        if cond.composition is not None or cond.formula_units is not None:
            raise ConfigError(
                f"{where}: conditions.composition/formula_units are not supported (MatterGen generates the "
                "composition; use conditions.chemical_system to restrict the elements)"
            )
        plan: dict[str, list[Any]] = {}
        system = cond.chemical_system if cond.chemical_system is not None else cfg.chemical_system
        if system is not None:
            self._require("chemical_system")
            plan["chemical_system"] = [parse_chemical_system(system)] * num_samples
        if cond.space_groups is not None:
            self._require("space_group")
            groups = np.asarray([int(g) for g in cond.space_groups], dtype=np.int64)
            plan["space_group"] = [int(g) for g in rng.choice(groups, size=num_samples)]
        elif cfg.space_group is not None:
            self._require("space_group")
            plan["space_group"] = [int(cfg.space_group)] * num_samples
        for prop, value in cfg.properties.items():
            self._require(prop)
            plan[prop] = [float(value)] * num_samples
        return plan

    def _conditions_tensor(self, plan: dict[str, list[Any]], start: int, count: int) -> dict[str, Any] | None:
        if not plan:
            return None
        out: dict[str, Any] = {}
        for key, values in plan.items():
            chunk = values[start : start + count]
            if key == "chemical_system":
                out[key] = list(chunk)
            elif key == "space_group":
                out[key] = torch.tensor(chunk, dtype=torch.long, device=self.device)
            else:
                out[key] = torch.tensor(chunk, dtype=torch.float32, device=self.device)
        return out

    # ---------------------------------------------------------------- generation
    def _sampler(self) -> Any:
        from crystal_mattergen.diffusion import PredictorCorrector

        cfg: MatterGenConfig = self.config  # type: ignore[assignment]
        return PredictorCorrector(self.model.diffusion, steps=cfg.steps, corrector=cfg.corrector == "langevin")

    def generate(
        self, num_samples: int, conditions: GenerationConditions | None = None, *, seed: int | None = None
    ) -> CrystalBatch:
        """Up to ``num_samples`` crystals, reproducible for ``seed`` (``None`` draws one, recorded in ids)."""
        return self.generate_detailed(num_samples, conditions, seed=seed).batch

    def generate_detailed(
        self, num_samples: int, conditions: GenerationConditions | None = None, *, seed: int | None = None
    ) -> GenerationResult:
        """:meth:`generate`'s crystals plus one :class:`RejectedSample` per sample left out (rule 5)."""
        from crystal_mattergen.diffusion import GeneratorNoise
        from crystal_mattergen.model import ALEX_MP_20_NUM_ATOMS
        from crystal_mattergen.sampler import GuidedScore

        where = "generator 'mattergen'"
        if isinstance(num_samples, bool) or not isinstance(num_samples, int | np.integer) or num_samples < 0:
            raise ConfigError(f"{where}: num_samples must be a non-negative integer, got {num_samples!r}")
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        elif isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ConfigError(f"{where}: seed must be a non-negative integer or None, got {seed!r}")
        seed = int(seed)
        num_samples = int(num_samples)
        cfg: MatterGenConfig = self.config  # type: ignore[assignment]
        plan = self._plan(num_samples, conditions, np.random.default_rng([seed, 0]))
        self.last_report = report = GenerationReport()
        if num_samples == 0:
            return GenerationResult(CrystalBatch.empty(), [])
        t0 = time.perf_counter()
        sampler = self._sampler()
        if cfg.num_atoms_distribution == "alex_mp_20":
            dist_model = copy.copy(self.model)
            dist_model.num_atoms_distribution = dict(ALEX_MP_20_NUM_ATOMS)
        else:
            dist_model = self.model
        out: list[CrystalBatch] = []
        rejected: list[dict[str, Any]] = []
        for chunk, start in enumerate(range(0, num_samples, cfg.batch_size)):
            count = min(cfg.batch_size, num_samples - start)
            num_atoms = dist_model.sample_num_atoms(
                count, torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 2, chunk]).generate_state(1)[0]))
            ).to(self.device)
            gen = torch.Generator(self.device).manual_seed(
                int(np.random.SeedSequence([seed, 1, chunk]).generate_state(1)[0])
            )
            cond = self._conditions_tensor(plan, start, count)
            score = GuidedScore(
                lambda state, t, c: self.model.raw(state, t, c, mask_elements=True),
                cond,
                cfg.guidance_factor if cond is not None else 0.0,
            )
            with torch.no_grad():
                final = sampler.sample(num_atoms, score, GeneratorNoise(gen))
            report.denoiser_evaluations += score.evaluations
            batch, rows = self._to_batch(final, seed, start, plan, sampler.N)
            out.append(batch)
            rejected += rows
        batch = CrystalBatch.concat(out)
        reasons = batch.validate(min_distance=cfg.min_distance)
        if cfg.max_volume_per_atom is not None:
            per_atom = (batch.volumes.abs() / batch.num_atoms.to(batch.volumes.dtype)).tolist()
            for i, v in enumerate(per_atom):
                if reasons[i] is None and not v <= cfg.max_volume_per_atom:
                    reasons[i] = f"cell volume {v:.4g} Å³/atom exceeds max_volume_per_atom {cfg.max_volume_per_atom:g}"
        keep = []
        for i, reason in enumerate(reasons):
            if reason is None and not batch.info[i].get("_bad"):
                keep.append(i)
            elif reason is not None:
                rejected.append({"id": batch.ids[i], "sample": batch.info[i]["sample"], "reason": reason})
        for info in batch.info:
            info.pop("_bad", None)
        rejected.sort(key=lambda r: r["sample"])
        report.num_sampled = num_samples
        report.num_valid = len(keep)
        report.rejected = rejected
        report.seconds = time.perf_counter() - t0
        if rejected:
            log.info(
                "mattergen: rejected %d of %d samples (seed %d), e.g. %s: %s; rows in last_report.rejected",
                len(rejected),
                num_samples,
                seed,
                rejected[0]["id"],
                rejected[0]["reason"],
            )
        if len(keep) < len(batch):
            batch = batch.select(torch.tensor(keep, dtype=torch.long, device=batch.device))
        return GenerationResult(batch, [RejectedSample(int(r["sample"]), str(r["reason"])) for r in rejected])

    def _to_batch(
        self, state: Any, seed: int, start: int, plan: dict[str, list[Any]], steps: int
    ) -> tuple[CrystalBatch, list[dict[str, Any]]]:
        """Sampler output → CrystalBatch; samples whose atom types are not elements (the mask state
        left over) get a placeholder type, are flagged ``_bad`` and reported."""
        from crystal_mattergen.diffusion import MASK_INDEX

        types = state.atomic_numbers.clone()
        bad_atoms = (types < 1) | (types > MASK_INDEX)
        count = len(state.num_atoms)
        bad = torch.zeros(count, dtype=torch.long, device=types.device).index_add_(0, state.batch, bad_atoms.long()) > 0
        types[bad_atoms] = 1
        rows = []
        infos = []
        ids = [f"mattergen-{seed}-{start + k}" for k in range(count)]
        for k in range(count):
            info: dict[str, Any] = {
                "generator": "mattergen",
                "weights": self.source,
                "seed": seed,
                "sample": start + k,
                "steps": steps,
            }
            for key, values in plan.items():
                info[key] = values[start + k]
            if plan:
                info["guidance_factor"] = self.config.guidance_factor  # type: ignore[attr-defined]
            if bool(bad[k]):
                info["_bad"] = True
                rows.append({"id": ids[k], "sample": start + k, "reason": "atom type left in the mask state"})
            infos.append(info)
        batch = CrystalBatch(
            atomic_numbers=types,
            frac_coords=state.pos.to(torch.float64),
            lattices=state.cell.to(torch.float64),
            num_atoms=state.num_atoms,
            ids=ids,
            info=infos,
        )
        return batch, rows
