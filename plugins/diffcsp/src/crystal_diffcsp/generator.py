"""DiffCSP as a :class:`crystal.Generator`: crystal structure prediction (composition given) and
ab initio generation (atom types diffused too, atom counts drawn from the training set).

Sampling rules:

1. **Mode.** ``mode="csp"`` needs a composition (``GenerationConditions.composition`` or the
   config's ``composition``; conditions win; with neither, the named weights' default from
   :data:`DEFAULT_COMPOSITIONS`): counts as written (``"SrTiO3"`` is 5 atoms) times
   ``Z`` formula units, ``Z`` drawn uniformly (seeded) from ``formula_units`` for each sample.
   ``mode="ab_initio"`` takes no composition: the atom count of each sample is drawn from the
   training histogram stored with the weights, the types are denoised with the structure.
2. **Unsupported conditions** raise :class:`~crystal.components.ConditionError` (a
   :class:`~crystal.errors.ConfigError` naming the field): space groups (DiffCSP has no symmetry
   conditioning), chemical systems, and a composition or formula units in ab initio mode.
   Elements the weights were not trained on raise too (their embeddings are untrained).
   :meth:`DiffCSPGenerator.check_conditions` checks all of this without loading the model (the
   elements of the named weights are listed in :data:`WEIGHTS_ELEMENTS`), so ``crystal validate``
   catches it.
3. **Batching.** Up to ``batch_size`` crystals are denoised together as one batch on the device;
   chunk ``c`` draws its noise from a generator seeded with ``(seed, c)``, so a call is
   reproducible for its seed, ``num_samples`` and config.
4. **Validity.** Crystals with NaN/inf values, a degenerate cell or atoms closer than
   ``min_distance`` (periodic images included) are left out (``B < num_samples``), each with its
   reason in :meth:`DiffCSPGenerator.generate_detailed` (a pipeline turns them into failure rows
   and samples again; :func:`crystal.generation.generate_valid`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
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
from crystal.elements import SYMBOLS, atomic_number, parse_formula
from crystal.errors import ConfigError
from crystal.manifest import NamedWeights, WeightsManifest

__all__ = [
    "DEFAULT_COMPOSITIONS",
    "DEFAULT_WEIGHTS",
    "WEIGHTS_ELEMENTS",
    "DiffCSPConfig",
    "DiffCSPGenerator",
    "parse_composition",
]

log = logging.getLogger(__name__)

#: the named weights this component ships (declared once: `crystal plugins manifest --write`
#: copies them into crystal_plugin.toml, the config's `weights` field accepts exactly these names)
WEIGHTS = NamedWeights(
    WeightsManifest(
        name="diffcsp-perov5-csp",
        file="package:crystal_diffcsp/weights/diffcsp-perov5-csp.pt",
        sha256="0896ac7f362d5f1f11ee83c16c0b1e9e38c10dc44cfa2c3a760e3f6819d3c3d1",
        licence="MIT",
        training_data=(
            "Perov-5 (CDVAE splits): val.csv: 3408 structures for training + 379 held out for model selection "
            "(seed 0), tested on the first 200 (k = 1) and 10 (k = 20) structures of test.csv"
        ),
        description=(
            "DiffCSP crystal structure prediction (composition given), small CSPNet (H 128, 4 layers, 64 "
            "frequencies, time embedding 128; 644,992 parameters), 100 epochs (best 91) on 1 CPU thread; model "
            "card: weights/diffcsp-perov5-csp.md"
        ),
        metrics={
            "val_loss": 0.87255,
            "val_loss_lattice": 0.34383,
            "val_loss_coord": 0.52872,
            "test_first200_k1_match_rate_percent": 21.5,
            "test_first200_k1_rmse_normalised": 0.4338,
            "test_first10_k20_match_rate_percent": 90.0,
            "test_first10_k20_rmse_normalised": 0.3636,
        },
    ),
    WeightsManifest(
        name="diffcsp-carbon24-csp",
        file="package:crystal_diffcsp/weights/diffcsp-carbon24-csp.pt",
        sha256="0b62afbc7132f8a31e5f672850e004f6407066076f6f30aebc1bb115bf21c1fd",
        licence="MIT",
        training_data=(
            "Carbon-24 (CDVAE splits): val.csv: 1829 structures for training + 203 held out for model selection "
            "(seed 0), tested on the first 60 (k = 1, T = 1000) and 200 / 10 (k = 1 / k = 20, 100 steps) "
            "structures of test.csv"
        ),
        description=(
            "DiffCSP crystal structure prediction for carbon (composition C_n given), small CSPNet (H 128, 4 "
            "layers, 64 frequencies, time embedding 128; 644,992 parameters), 150 epochs (best 145) on 1 CPU "
            "thread; model card: weights/diffcsp-carbon24-csp.md"
        ),
        metrics={
            "val_loss": 1.40385,
            "val_loss_lattice": 0.48528,
            "val_loss_coord": 0.91857,
            "test_first60_k1_match_rate_percent": 36.67,
            "test_first60_k1_rmse_normalised": 0.4266,
            "test_first200_k1_steps100_match_rate_percent": 20.5,
            "test_first10_k20_steps100_match_rate_percent": 80.0,
        },
    ),
)


#: default named weights per mode (None: no shipped weights for that mode; pass `checkpoint`)
DEFAULT_WEIGHTS: dict[str, str | None] = {"csp": "diffcsp-perov5-csp", "ab_initio": None}
#: composition used in csp mode when neither the conditions nor the config give one (named weights only)
DEFAULT_COMPOSITIONS: dict[str, str] = {"diffcsp-perov5-csp": "SrTiO3", "diffcsp-carbon24-csp": "C8"}
_PEROV5_ELEMENTS = (
    "Li Be B N O F Na Mg Al Si S K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Rb Sr Y Zr Nb Mo Ru Rh Pd Ag Cd In Sn "
    "Sb Te Cs Ba La Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi"
)
#: the elements each named weights were trained on, by atomic number (read without loading the
#: weights by check_conditions; a test compares them with the weights' own config)
WEIGHTS_ELEMENTS: dict[str, tuple[str, ...]] = {
    "diffcsp-perov5-csp": tuple(_PEROV5_ELEMENTS.split()),
    "diffcsp-carbon24-csp": ("C",),
}


def parse_composition(text: str, where: str = "composition") -> list[tuple[int, int]]:
    """``"SrTiO3"`` → ``[(38, 1), (22, 1), (8, 3)]`` (Z, count as written), read by
    :func:`crystal.elements.parse_formula`; clear errors otherwise."""
    try:
        amounts = parse_formula(text)
    except ValueError as exc:
        raise ConfigError(f"diffcsp: {where}: {exc}") from None
    return [(atomic_number(sym), n) for sym, n in amounts.items()]


class DiffCSPConfig(ComponentConfig):
    """Configuration of the ``diffcsp`` generator."""

    mode: Literal["csp", "ab_initio"] = Field(
        "csp", description="'csp': structure for a given composition; 'ab_initio': composition generated too"
    )
    weights: Annotated[str, WEIGHTS] | None = Field(
        None,
        description="named weights; None = the mode's default (csp: diffcsp-perov5-csp; ab_initio: none shipped, "
        "pass checkpoint)",
    )
    checkpoint: str | None = Field(
        None,
        description="path to a model.pt from crystal_diffcsp.train, or a released reference DiffCSP run "
        "(a folder with epoch=...ckpt + hparams.yaml, or the .ckpt; loaded weights-only); overrides weights",
    )
    composition: str | None = Field(
        None,
        description="csp: formula unit, e.g. 'SrTiO3' (conditions override it); None = the named weights' default "
        "(perov5: SrTiO3, carbon24: C8)",
    )
    formula_units: tuple[int, ...] = Field(
        (1,), min_length=1, description="csp: Z per cell, drawn uniformly per sample"
    )
    steps: int | None = Field(
        None, ge=1, description="denoising steps; None = all T of the weights (paper: 1000); fewer = respaced DDPM"
    )
    step_lr: float | None = Field(
        None, gt=0, description="Langevin corrector step (fractional units²); None = the value stored with the weights"
    )
    corrector: Literal["langevin", "none"] = Field(
        "langevin", description="'langevin': predictor-corrector sampling (paper); 'none': predictor only"
    )
    batch_size: int = Field(512, ge=1, le=1_000_000, description="crystals denoised together on the device")
    min_distance: float = Field(
        0.5, ge=0.0, le=5.0, description="Å; crystals with atoms closer than this are left out of the result"
    )

    @field_validator("formula_units")
    @classmethod
    def _positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(int(z) < 1 for z in v):
            raise ValueError(f"formula units must be >= 1, got {list(v)}")
        return v

    @field_validator("composition")
    @classmethod
    def _valid_composition(cls, v: str | None) -> str | None:
        if v is not None:
            parse_composition(v)
        return v


@lru_cache(maxsize=8)
def _load_named(name: str) -> tuple[Any, dict[str, Any]]:
    from crystal.weights import load_state_dict
    from crystal_diffcsp.checkpoint import model_from_state

    return model_from_state(load_state_dict(name), f"weights {name!r}")


class DiffCSPGenerator(Generator):
    """DiffCSP (Jiao et al., NeurIPS 2023): joint equivariant diffusion of lattice and fractional coordinates."""

    name: ClassVar[str] = "diffcsp"
    version: ClassVar[str] = "0.1.0"
    description = (
        "DiffCSP: lattice DDPM + wrapped-normal score matching on fractional coordinates, denoised by the "
        "periodic-E(3)-equivariant CSPNet; crystal structure prediction (composition given) and ab initio "
        "generation; predictor-corrector sampling"
    )
    Config: ClassVar[type[ComponentConfig]] = DiffCSPConfig
    consumes: ClassVar[str] = "conditions"
    produces: ClassVar[str] = "crystal"
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    weights: ClassVar[tuple[str, ...]] = WEIGHTS
    default_weights: ClassVar[str | None] = "diffcsp-perov5-csp"

    def __init__(self, config: Any = None, *, device: str = "auto", **overrides: Any) -> None:
        super().__init__(config, device=device, **overrides)
        cfg: DiffCSPConfig = self.config  # type: ignore[assignment]
        if cfg.checkpoint is not None:
            from crystal_diffcsp.checkpoint import load_checkpoint

            model, meta = load_checkpoint(Path(cfg.checkpoint).expanduser())
            self.source = str(cfg.checkpoint)
        else:
            name = cfg.weights or DEFAULT_WEIGHTS[cfg.mode]
            if name is None:
                raise ConfigError(
                    f"generator 'diffcsp': no shipped weights for mode {cfg.mode!r}; train some with "
                    "`python -m crystal_diffcsp.train --mode ab_initio ...` and pass checkpoint=<model.pt>"
                )
            model, meta = _load_named(name)
            self.source = name
        if model.config.mode != cfg.mode:
            raise ConfigError(
                f"generator 'diffcsp': weights {self.source!r} were trained for mode {model.config.mode!r}, "
                f"but the config asks for mode {cfg.mode!r}"
            )
        import copy

        self.model = copy.deepcopy(model).to(self.device).eval()
        self.metadata = meta
        self.elements = frozenset(int(z) for z in model.config.elements)

    def weights_in_use(self) -> tuple[str, ...]:
        cfg: DiffCSPConfig = self.config  # type: ignore[assignment]
        if cfg.checkpoint is not None:
            return ()
        name = cfg.weights or DEFAULT_WEIGHTS[cfg.mode]
        return (name,) if name else ()

    # ---------------------------------------------------------------- requests
    @classmethod
    def check_conditions(
        cls, conditions: GenerationConditions, config: ComponentConfig | Mapping[str, Any] | None = None
    ) -> None:
        """Raise :class:`ConditionError` for what DiffCSP cannot honour with ``config`` (rule 2),
        without loading a model: space groups and chemical systems always; a composition or
        formula units in ab initio mode; in csp mode no composition anywhere, a composition with
        elements the named weights were not trained on (:data:`WEIGHTS_ELEMENTS`; a checkpoint's
        elements are checked when it is loaded), or more than 100 atoms per cell."""
        cfg = config if isinstance(config, DiffCSPConfig) else cls.make_config(config)
        assert isinstance(cfg, DiffCSPConfig)
        where = "generator 'diffcsp'"
        named = None if cfg.checkpoint is not None else cfg.weights or DEFAULT_WEIGHTS[cfg.mode]
        trained = WEIGHTS_ELEMENTS.get(named or "", ())
        supports = (
            "it supports composition and formula_units (mode 'csp')"
            if cfg.mode == "csp"
            else "it supports no condition in mode 'ab_initio' (the composition is generated)"
        )
        if named and trained:
            supports += f"; weights {named!r} know the elements {' '.join(trained)}"
        if conditions.space_groups is not None:
            raise ConditionError(
                f"{where}: conditions.space_groups is not supported: DiffCSP has no space-group conditioning "
                f"({supports}; use the 'pyxtal' generator for symmetry-constrained crystals)",
                "space_groups",
            )
        if conditions.chemical_system is not None:
            raise ConditionError(
                f"{where}: conditions.chemical_system is not supported: DiffCSP cannot draw compositions from a "
                f"chemical system ({supports}); give a composition instead",
                "chemical_system",
            )
        if cfg.mode == "ab_initio":
            for name in ("composition", "formula_units"):
                if getattr(conditions, name) is not None:
                    raise ConditionError(
                        f"{where}: mode 'ab_initio' generates the composition; conditions.{name} needs mode 'csp'",
                        name,
                    )
            return
        text = conditions.composition if conditions.composition is not None else cfg.composition
        if text is None and named is not None:
            text = DEFAULT_COMPOSITIONS.get(named)
        if text is None:
            if cfg.checkpoint is not None:
                return  # a checkpoint's own default is known once it is loaded (_plan)
            raise ConditionError(
                f"{where}: mode 'csp' needs a composition (conditions.composition or config composition)",
                "composition",
            )
        field = "composition" if conditions.composition is not None else None
        formula = parse_composition(text, "conditions.composition" if field else "composition")
        unknown = [SYMBOLS[z - 1] for z in sorted({z for z, _ in formula}) if trained and SYMBOLS[z - 1] not in trained]
        if unknown:
            raise ConditionError(
                f"{where}: composition {text!r} contains {', '.join(unknown)}, outside the elements weights "
                f"{named!r} were trained on ({' '.join(trained)})",
                field,
            )
        zs = tuple(conditions.formula_units) if conditions.formula_units is not None else cfg.formula_units
        per_formula = sum(n for _, n in formula)
        too_big = [z for z in zs if z * per_formula > 100]
        if too_big:
            raise ConditionError(
                f"{where}: formula_units {too_big} give more than 100 atoms per cell for {text!r}",
                "formula_units" if conditions.formula_units is not None else None,
            )

    def _plan(self, num_samples: int, conditions: GenerationConditions | None, rng: np.random.Generator) -> Any:
        """Per-sample atomic numbers (csp) or atom counts (ab initio)."""
        cfg: DiffCSPConfig = self.config  # type: ignore[assignment]
        cond = conditions or GenerationConditions()
        where = "generator 'diffcsp'"
        self.check_conditions(cond, cfg)
        if cfg.mode == "ab_initio":
            if cond.composition is not None or cond.formula_units is not None:
                raise ConfigError(
                    f"{where}: mode 'ab_initio' generates the composition; conditions.composition/formula_units "
                    "need mode 'csp'"
                )
            return None
        text = cond.composition if cond.composition is not None else cfg.composition
        if text is None:
            text = DEFAULT_COMPOSITIONS.get(self.source)
        if text is None:
            raise ConfigError(f"{where}: mode 'csp' needs a composition (conditions.composition or config composition)")
        formula = parse_composition(text, "conditions.composition" if cond.composition else "composition")
        unknown = sorted({z for z, _ in formula} - self.elements)
        if unknown:
            names = ", ".join(SYMBOLS[z - 1] for z in unknown)
            known = " ".join(SYMBOLS[z - 1] for z in sorted(self.elements))
            raise ConfigError(
                f"{where}: composition {text!r} contains {names}, outside the elements weights "
                f"{self.source!r} were trained on ({known})"
            )
        zs = tuple(cond.formula_units) if cond.formula_units is not None else cfg.formula_units
        per_formula = sum(n for _, n in formula)
        too_big = [z for z in zs if z * per_formula > 100]
        if too_big:
            raise ConfigError(f"{where}: formula_units {too_big} give more than 100 atoms per cell for {text!r}")
        draws = rng.choice(np.asarray(zs, dtype=np.int64), size=num_samples)
        unit = torch.tensor([z for z, n in formula for _ in range(n)], dtype=torch.long)
        return text, [(int(z), unit.repeat(int(z))) for z in draws]

    # ---------------------------------------------------------------- generation
    def generate(
        self, num_samples: int, conditions: GenerationConditions | None = None, *, seed: int | None = None
    ) -> CrystalBatch:
        """Up to ``num_samples`` crystals, reproducible for ``seed`` (``None`` draws one, recorded in ids)."""
        return self.generate_detailed(num_samples, conditions, seed=seed).batch

    def generate_detailed(
        self, num_samples: int, conditions: GenerationConditions | None = None, *, seed: int | None = None
    ) -> GenerationResult:
        """:meth:`generate`'s crystals plus one :class:`RejectedSample` (slot, reason) per crystal left
        out as invalid (rule 4)."""
        if isinstance(num_samples, bool) or not isinstance(num_samples, int | np.integer) or num_samples < 0:
            raise ConfigError(f"generator 'diffcsp': num_samples must be a non-negative integer, got {num_samples!r}")
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        elif isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ConfigError(f"generator 'diffcsp': seed must be a non-negative integer or None, got {seed!r}")
        seed = int(seed)
        plan = self._plan(int(num_samples), conditions, np.random.default_rng([seed, 0]))
        if num_samples == 0:
            return GenerationResult(CrystalBatch.empty(), [])
        cfg: DiffCSPConfig = self.config  # type: ignore[assignment]
        out: list[CrystalBatch] = []
        for chunk, start in enumerate(range(0, int(num_samples), cfg.batch_size)):
            count = min(cfg.batch_size, int(num_samples) - start)
            gen = torch.Generator(self.device).manual_seed(
                int(np.random.SeedSequence([seed, 1, chunk]).generate_state(1)[0])
            )
            if plan is None:
                num_atoms = self.model.sample_num_atoms(count, torch.Generator().manual_seed(seed + chunk))
                zs = None
                formulas: list[Any] = [None] * count
            else:
                items = plan[1][start : start + count]
                num_atoms = torch.tensor([len(u) for _, u in items], dtype=torch.long)
                zs = torch.cat([u for _, u in items]).to(self.device)
                formulas = [z for z, _ in items]
            res = self.model.sample(
                num_atoms,
                zs,
                generator=gen,
                steps=cfg.steps,
                step_lr=cfg.step_lr,
                corrector=cfg.corrector == "langevin",
            )
            infos = []
            for k in range(count):
                info: dict[str, Any] = {
                    "generator": "diffcsp",
                    "mode": cfg.mode,
                    "weights": self.source,
                    "seed": seed,
                    "sample": start + k,
                    "steps": len(self.model.time_grid(cfg.steps)),
                }
                if plan is not None:
                    info["composition"] = plan[0]
                    info["formula_units"] = formulas[k]
                infos.append(info)
            out.append(
                CrystalBatch(
                    atomic_numbers=res.atomic_numbers.to(self.device),
                    frac_coords=res.frac_coords.to(torch.float64),
                    lattices=res.lattices.to(torch.float64),
                    num_atoms=num_atoms.to(self.device),
                    ids=[f"diffcsp-{seed}-{start + k}" for k in range(count)],
                    info=infos,
                )
            )
        batch = CrystalBatch.concat(out)
        reasons = batch.validate(min_distance=cfg.min_distance)
        keep = [i for i, r in enumerate(reasons) if r is None]
        rejected = [RejectedSample(k, r) for k, r in enumerate(reasons) if r is not None]
        if rejected:
            log.info(
                "diffcsp: left out %d of %d crystals (seed %d) as invalid, e.g. %s",
                len(rejected),
                len(batch),
                seed,
                rejected[0].reason,
            )
            batch = batch.select(torch.tensor(keep, dtype=torch.long, device=batch.device))
        return GenerationResult(batch, rejected)

    def generate_all(self, atomic_numbers: torch.Tensor, num_atoms: torch.Tensor, *, seed: int = 0) -> CrystalBatch:
        """Crystal structure prediction for many compositions at once, nothing left out.

        ``atomic_numbers`` (N,) and ``num_atoms`` (B,) describe B cells (e.g. a test set); returns
        B crystals in order (invalid ones included, for benchmarks that count them as failures).
        """
        cfg: DiffCSPConfig = self.config  # type: ignore[assignment]
        if cfg.mode != "csp":
            raise ConfigError("generator 'diffcsp': generate_all needs mode 'csp'")
        unknown = sorted(set(atomic_numbers.tolist()) - self.elements)
        if unknown:
            raise ConfigError(
                f"generator 'diffcsp': elements {[SYMBOLS[z - 1] for z in unknown]} are not in the weights"
            )
        if int(num_atoms.min()) < 1:
            raise ConfigError("generator 'diffcsp': every crystal needs at least one atom")
        ptr = torch.cat([num_atoms.new_zeros(1), torch.cumsum(num_atoms, 0)])
        out = []
        for chunk, start in enumerate(range(0, len(num_atoms), cfg.batch_size)):
            stop = min(start + cfg.batch_size, len(num_atoms))
            gen = torch.Generator(self.device).manual_seed(
                int(np.random.SeedSequence([seed, 2, chunk]).generate_state(1)[0])
            )
            na = num_atoms[start:stop]
            zs = atomic_numbers[int(ptr[start]) : int(ptr[stop])]
            res = self.model.sample(
                na,
                zs.to(self.device),
                generator=gen,
                steps=cfg.steps,
                step_lr=cfg.step_lr,
                corrector=cfg.corrector == "langevin",
            )
            out.append(
                CrystalBatch(
                    atomic_numbers=res.atomic_numbers.cpu(),
                    frac_coords=res.frac_coords.to(torch.float64).cpu(),
                    lattices=res.lattices.to(torch.float64).cpu(),
                    num_atoms=na.cpu(),
                )
            )
        return CrystalBatch.concat(out)
