"""CrystaLLM as a :class:`crystal.components.Generator`.

Sampling rules (one *sample slot* ``k = 0 … num_samples-1`` per requested crystal):

1. **Composition.** ``conditions.composition`` wins over the config's ``composition``. The cell
   formula in the prompt is that composition × ``Z``, ``Z`` drawn uniformly from
   ``conditions.formula_units`` (else the config's ``formula_units``, default ``(1,)``):
   ``"SrTiO3"`` with ``Z = 2`` prompts ``data_Sr2Ti2O6``. Counts are taken as written
   (``"C8"`` with ``Z = 1`` is an 8-atom cell). With no composition anywhere the prompt is
   ``data_`` alone and the model also chooses the formula (unconditional generation);
   a chemical system cannot be honoured and raises (:meth:`CrystaLLMGenerator.check_conditions`,
   which ``crystal validate`` calls, says so before any model is loaded).
2. **Space group.** Drawn uniformly from ``conditions.space_groups`` (else the config's
   ``space_groups``; ``None`` = the model chooses); it is written into the prompt after the
   atom-properties block, as the reference's ``--with-spacegroup`` prompts.
3. **Sampling.** All slots are decoded together in batches of ``batch_size`` (KV-cached,
   temperature, top-k; :mod:`crystal_crystallm.sampling`) until a blank line or the end of the
   context.
4. **Checks.** Every text is post-processed and checked (:mod:`crystal_crystallm.checks`:
   parses, formula consistent with the prompt, reasonable bond lengths, space group
   consistent); the crystals that also have no two atoms closer than ``min_distance`` are
   returned, the others are absent, each with the check it failed in
   :meth:`CrystaLLMGenerator.generate_detailed` (a pipeline makes them failure rows and samples
   again). Counts per failed check are in :attr:`last_report`.

Reproducibility: slot ``k``'s ``Z`` and space group come from ``numpy.random.default_rng([seed, k])``;
batch ``j``'s tokens from a ``torch.Generator`` seeded with ``SeedSequence([seed, j])``, so a
seed, the config and ``num_samples`` fix the output. Crystal ``k`` has id ``crystallm-<seed>-<k>``;
its ``info`` holds the prompt formula, requested/declared space group, bond-length score,
seed, slot and the generated CIF.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

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
from crystal.errors import ConfigError
from crystal.manifest import NamedWeights, WeightsManifest
from crystal_crystallm.canonical import make_prompt, parse_composition
from crystal_crystallm.checks import CIFCheck, check_cif
from crystal_crystallm.model import CrystaLLMNet
from crystal_crystallm.sampling import sample_tokens
from crystal_crystallm.spacegroups import SPACE_GROUP_SYMBOLS
from crystal_crystallm.tokenizer import tokenizer

if TYPE_CHECKING:
    from pymatgen.core import Composition

__all__ = ["CrystaLLMConfig", "CrystaLLMGenerator", "GenerationReport", "Request", "Sample"]

log = logging.getLogger(__name__)

SpaceGroupNumber = Annotated[int, Field(ge=1, le=230)]
FormulaUnits = Annotated[int, Field(ge=1, le=64)]
_HEX64 = r"^[0-9a-fA-F]{64}$"


_CITATION = (
    "L. M. Antunes, K. T. Butler and R. Grau-Crespo, Crystal structure generation with autoregressive large "
    "language modeling, Nat. Commun. 15, 10570 (2024), doi:10.1038/s41467-024-54639-7"
)
_ZENODO = "https://zenodo.org/records/10642388/files"
_SMALL = "small: 8 layers x 8 heads, d=512, context 1024, 25.4 M parameters"
_LARGE = "large: 16 layers x 16 heads, d=1024, context 2048, ~200 M parameters"
_BENCHMARK = "{} training split (CDVAE/DiffCSP benchmark, CIFs pre-processed as the reference's bin/preprocess.py)"


def _released(name: str, file: str, md5: str, approx: str, model: str, data: str, iters: int) -> WeightsManifest:
    """A model of the authors' Zenodo record 10642388 (CC-BY 4.0): a .tar.gz holding <name>/ckpt.pt
    (nanoGPT format, with the AdamW state). Zenodo publishes only md5 and rounded sizes, so the
    sha256 is pinned at the first download."""
    return WeightsManifest(
        name=name,
        file=f"{_ZENODO}/{file}",
        sha256=None,
        size=None,
        licence="CC-BY-4.0",
        citation=_CITATION,
        training_data=data,
        description=(
            f"CrystaLLM released model ({model}; {iters} iterations), vocabulary of 371 tokens; Zenodo "
            f"record 10642388 lists md5:{md5}, {approx} (no sha256 published); a .tar.gz holding ckpt.pt "
            "(nanoGPT format) read without extracting anything else"
        ),
    )


#: the named weights of this component (declared once: `crystal plugins manifest --write`
#: copies them into crystal_plugin.toml, the config's `weights` field accepts exactly these names):
#: ours, trained on CPU and shipped in the package, and the authors' released models on Zenodo
WEIGHTS = NamedWeights(
    WeightsManifest(
        name="crystallm-perov5",
        file="package:crystal_crystallm/weights/crystallm-perov5.pt",
        sha256="fccb2a52cd166d631408abf264f3a4614cffe0531053a65d44c7d2f69c2ab88a",
        licence="MIT",
        training_data=(
            "Perov-5 (CDVAE splits): val.csv canonicalised as CrystaLLM does: 3408 CIFs for training + 379 held "
            "out for model selection (seed 0); evaluated on test.csv"
        ),
        description=(
            "CrystaLLM GPT, 4 layers x 4 heads, d=64, context 512 (256,832 parameters), 10 epochs on one CPU "
            "thread (968 s + 684 s); model card: weights/crystallm-perov5.md"
        ),
        metrics={
            "val_loss_nats_per_token": 0.1325,
            "val_perplexity": 1.1417,
            "val_next_token_accuracy": 0.9509,
        },
    ),
    _released(
        "crystallm-v1-small",
        "crystallm_v1_small.tar.gz",
        "0221fbcd166bddb17f75be8a610892f3",
        "285.0 MB",
        _SMALL,
        "CrystaLLM v1 corpus: 2,285,719 deduplicated, symmetrised, pre-processed CIFs from the Materials Project, "
        "OQMD and NOMAD (tokens_v1_all: all of cifs_v1_prep, no validation split)",
        100_000,
    ),
    _released(
        "crystallm-v1-large",
        "crystallm_v1_large.tar.gz",
        "7229ae633f832a935eb30dc7f58a8830",
        "2.2 GB",
        _LARGE,
        "CrystaLLM v1 corpus: 2,285,719 deduplicated, symmetrised, pre-processed CIFs from the Materials Project, "
        "OQMD and NOMAD (tokens_v1_all: all of cifs_v1_prep, no validation split)",
        48_000,
    ),
    _released(
        "crystallm-v1-minus-mpts-52-small",
        "crystallm_v1_minus_mpts_52_small.tar.gz",
        "e0fa119d78fadadbe22a0a0875a388ea",
        "285.0 MB",
        _SMALL,
        "CrystaLLM v1 corpus less the MPTS-52 validation and test structures (tokens_v1_minus_mpts_52)",
        100_000,
    ),
    _released(
        "crystallm-perov-5-small",
        "crystallm_perov_5_small.tar.gz",
        "243378b326e7292cb7a39a1bd0aa179b",
        "285.9 MB",
        _SMALL,
        _BENCHMARK.format("Perov-5"),
        1_750,
    ),
    _released(
        "crystallm-perov-5-large",
        "crystallm_perov_5_large.tar.gz",
        "dbd0cfddfc1a2341ebbeb10ce828b378",
        "2.3 GB",
        _LARGE,
        _BENCHMARK.format("Perov-5"),
        1_750,
    ),
    _released(
        "crystallm-carbon-24-small",
        "crystallm_carbon_24_small.tar.gz",
        "8b30dd04ded754fb532c85bc4f50f264",
        "284.6 MB",
        _SMALL,
        _BENCHMARK.format("Carbon-24"),
        8_000,
    ),
    _released(
        "crystallm-carbon-24-large",
        "crystallm_carbon_24_large.tar.gz",
        "b4eaec93761b0906294b03779b4261e6",
        "2.3 GB",
        _LARGE,
        _BENCHMARK.format("Carbon-24"),
        8_000,
    ),
    _released(
        "crystallm-mp-20-small",
        "crystallm_mp_20_small.tar.gz",
        "132bab875f673851c3a13d884dc8a264",
        "284.3 MB",
        _SMALL,
        _BENCHMARK.format("MP-20"),
        5_000,
    ),
    _released(
        "crystallm-mp-20-large",
        "crystallm_mp_20_large.tar.gz",
        "2096d75a309fbe3eddf569232422b9a8",
        "2.3 GB",
        _LARGE,
        _BENCHMARK.format("MP-20"),
        5_000,
    ),
    _released(
        "crystallm-mpts-52-small",
        "crystallm_mpts_52_small.tar.gz",
        "a24ea9f14c143f3d2e88a9f6238ad3e9",
        "284.4 MB",
        _SMALL,
        _BENCHMARK.format("MPTS-52"),
        3_500,
    ),
    _released(
        "crystallm-mpts-52-large",
        "crystallm_mpts_52_large.tar.gz",
        "99e427f1eeb154e243ce637fd180b90a",
        "2.3 GB",
        _LARGE,
        _BENCHMARK.format("MPTS-52"),
        3_500,
    ),
)


class CrystaLLMConfig(ComponentConfig):
    """Configuration of the ``crystallm`` generator (conditions override the first three)."""

    composition: str | None = Field(
        None, description="formula to prompt with, e.g. 'SrTiO3' (counts as written, × Z); None: unconditional"
    )
    formula_units: tuple[FormulaUnits, ...] = Field(
        (1,), min_length=1, description="allowed Z (formula units per cell in the prompt), drawn uniformly"
    )
    space_groups: tuple[SpaceGroupNumber, ...] | None = Field(
        None, min_length=1, description="international numbers 1–230 to prompt with (uniformly); None: model's choice"
    )
    weights: Annotated[str, WEIGHTS] | None = Field(
        None,
        description="named weights: ours (crystallm-perov5, the default; model card in crystal_crystallm/weights/) "
        "or a released model (crystallm-v1-small, ...; downloaded once into the weights cache)",
    )
    checkpoint: Path | None = Field(
        None,
        description="a checkpoint file: ours (python -m crystal_crystallm.train), or a released ckpt.pt or .tar.gz",
    )
    sha256: str | None = Field(None, pattern=_HEX64, description="expected hex sha256 of `checkpoint`")
    temperature: float = Field(1.0, gt=0.0, le=10.0, description="softmax temperature (dimensionless)")
    top_k: int | None = Field(10, ge=1, description="sample among the k most likely tokens; None: all")
    batch_size: int = Field(64, ge=1, le=4096, description="sequences decoded together")
    kv_cache: bool = Field(True, description="cache keys/values while decoding (False re-runs the prefix each step)")
    max_tokens: int | None = Field(
        None, ge=8, description="maximum tokens per CIF, prompt included; None: the model's context"
    )
    bond_length_cutoff: float = Field(
        1.0, ge=0.0, le=1.0, description="minimum bond-length reasonableness score (fraction of bonds, reference 1.0)"
    )
    bond_length_tolerance: float = Field(
        0.32, gt=0.0, lt=1.0, description="a bond is reasonable within (1 ± tolerance) × expected length"
    )
    check_bond_lengths: bool = Field(True, description="apply the bond-length check")
    check_space_group: bool = Field(True, description="require the declared space group to be found by spglib")
    symprec: float = Field(0.1, gt=0.0, le=1.0, description="spglib tolerance of the space-group check, Å")
    min_distance: float = Field(0.5, ge=0.0, le=5.0, description="reject crystals with atoms closer than this, Å")

    @field_validator("composition")
    @classmethod
    def _valid_composition(cls, v: str | None) -> str | None:
        if v is not None:
            parse_composition(v, "generator 'crystallm': config composition")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> CrystaLLMConfig:
        if self.weights is not None and self.checkpoint is not None:
            raise ConfigError("generator 'crystallm': give either weights or checkpoint, not both")
        if self.sha256 is not None and self.checkpoint is None:
            raise ConfigError("generator 'crystallm': sha256 is the digest of `checkpoint`, which is not set")
        return self


@dataclass(frozen=True)
class Request:
    """One sample to draw: the prompt's cell composition (``None``: unconditional) and space group."""

    composition: Composition | None = None
    space_group: int | None = None

    def prompt(self) -> str:
        if self.composition is None:
            if self.space_group is not None:
                raise ConfigError("generator 'crystallm': a space group needs a composition to prompt with")
            return "data_"
        return make_prompt(self.composition, self.space_group)


@dataclass
class Sample:
    """A generated text, whether it ended before the context ran out, and its checks."""

    request: Request
    text: str
    finished: bool
    check: CIFCheck


@dataclass
class GenerationReport:
    """What the last :meth:`CrystaLLMGenerator.generate` / ``sample`` call did."""

    num_sampled: int = 0
    num_unfinished: int = 0  # ran out of context before a blank line
    failures: dict[str, int] = field(default_factory=dict)  # first failed check → count
    num_valid: int = 0
    tokens_generated: int = 0
    sampling_seconds: float = 0.0
    checking_seconds: float = 0.0

    @property
    def fraction_valid(self) -> float:
        return self.num_valid / self.num_sampled if self.num_sampled else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "num_sampled": self.num_sampled,
            "num_valid": self.num_valid,
            "fraction_valid": self.fraction_valid,
            "num_unfinished": self.num_unfinished,
            "failures": dict(self.failures),
            "tokens_generated": self.tokens_generated,
            "sampling_seconds": self.sampling_seconds,
            "checking_seconds": self.checking_seconds,
        }


class CrystaLLMGenerator(Generator):
    """CrystaLLM (Antunes, Butler & Grau-Crespo, Nat. Commun. 15, 10570 (2024)): CIF text from a GPT."""

    name = "crystallm"
    version = "0.1.0"
    description = (
        "GPT decoder on canonical CIF tokens; prompted by composition × Z and optionally space group; KV-cached "
        "batched top-k sampling; returns only CIFs that parse, match the prompt's formula, have reasonable bond "
        "lengths and a consistent space group"
    )
    Config = CrystaLLMConfig
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    weights: ClassVar[tuple[str, ...]] = WEIGHTS
    default_weights: ClassVar[str | None] = "crystallm-perov5"

    def __init__(
        self,
        config: ComponentConfig | dict[str, Any] | None = None,
        *,
        device: str = "auto",
        net: CrystaLLMNet | None = None,
        **overrides: Any,
    ) -> None:
        """``net`` (tests, freshly trained models) replaces loading ``weights``/``checkpoint``."""
        super().__init__(config, device=device, **overrides)
        cfg: CrystaLLMConfig = self.config  # type: ignore[assignment]
        self.weights_sha256: str | None = None
        self.meta: dict[str, Any] = {}
        if net is not None:
            if cfg.weights is not None or cfg.checkpoint is not None:
                raise ConfigError("generator 'crystallm': pass a net or weights/checkpoint, not both")
            self.net = net
        elif cfg.checkpoint is not None:
            from crystal_crystallm.checkpoint import load_checkpoint

            self.net, self.meta, self.weights_sha256 = load_checkpoint(cfg.checkpoint, cfg.sha256)
        else:
            from crystal_crystallm.checkpoint import load_named_weights

            name = cfg.weights or self.default_weights
            assert name is not None
            self.net, self.meta, self.weights_sha256 = load_named_weights(name)
        self.net.to(self.device).eval()
        self.tokenizer = tokenizer(self.net.vocab_size)  # the released models' 371 tokens, or our 375
        if cfg.max_tokens is not None and cfg.max_tokens > self.net.cfg.block_size:
            raise ConfigError(
                f"generator 'crystallm': max_tokens={cfg.max_tokens} exceeds the model's context of "
                f"{self.net.cfg.block_size} tokens"
            )
        self.last_report = GenerationReport()

    def weights_in_use(self) -> tuple[str, ...]:
        cfg: CrystaLLMConfig = self.config  # type: ignore[assignment]
        if cfg.checkpoint is not None or self.weights_sha256 is None:
            return ()
        return (cfg.weights or self.default_weights,)  # type: ignore[return-value]

    @property
    def context(self) -> int:
        """Tokens per CIF, prompt included."""
        cfg: CrystaLLMConfig = self.config  # type: ignore[assignment]
        return cfg.max_tokens or self.net.cfg.block_size

    # ------------------------------------------------------------------ requests
    @classmethod
    def check_conditions(
        cls, conditions: GenerationConditions, config: ComponentConfig | Mapping[str, Any] | None = None
    ) -> None:
        """Raise :class:`ConditionError` for what CrystaLLM cannot prompt with (rules 1–2), without
        loading a model: a chemical system without a composition, space groups without a composition
        (in the conditions or the config); a composition that does not parse raises too."""
        cfg = config if isinstance(config, CrystaLLMConfig) else cls.make_config(config)
        assert isinstance(cfg, CrystaLLMConfig)
        supports = "it supports composition, formula_units and space_groups (with a composition)"
        if conditions.chemical_system is not None and conditions.composition is None:
            raise ConditionError(
                "generator 'crystallm': conditions.chemical_system is not supported; CrystaLLM is prompted with a "
                f"composition (conditions.composition) or nothing ({supports})",
                "chemical_system",
            )
        text = conditions.composition if conditions.composition is not None else cfg.composition
        if text is not None:
            parse_composition(text, "generator 'crystallm': composition")
        elif conditions.space_groups is not None:
            raise ConditionError(
                f"generator 'crystallm': space_groups need a composition to prompt with ({supports})", "space_groups"
            )

    def requests(self, num_samples: int, conditions: GenerationConditions | None, seed: int) -> list[Request]:
        """The ``num_samples`` prompts of a :meth:`generate` call (rules 1–2 of the module docstring)."""
        cfg: CrystaLLMConfig = self.config  # type: ignore[assignment]
        cond = conditions or GenerationConditions()
        self.check_conditions(cond, cfg)
        text = cond.composition if cond.composition is not None else cfg.composition
        z_choices = _ints(cond.formula_units, "formula_units", 1, 10_000) if cond.formula_units else cfg.formula_units
        sg_raw = cond.space_groups if cond.space_groups is not None else cfg.space_groups
        sg_choices = _ints(sg_raw, "space_groups", 1, 230) if sg_raw is not None else None
        base = parse_composition(text, "generator 'crystallm': composition") if text is not None else None
        if base is None and sg_choices is not None:
            raise ConfigError("generator 'crystallm': space_groups need a composition to prompt with")
        out = []
        for k in range(num_samples):
            rng = np.random.default_rng([seed, k])
            z = int(rng.choice(z_choices))
            sg = int(rng.choice(sg_choices)) if sg_choices is not None else None
            out.append(Request(None if base is None else base * z, sg))
        return out

    # ------------------------------------------------------------------ sampling
    def sample(self, requests: Sequence[Request], *, seed: int) -> list[Sample]:
        """Sample and check one CIF per request (batched); updates :attr:`last_report`."""
        cfg: CrystaLLMConfig = self.config  # type: ignore[assignment]
        tok = self.tokenizer
        prompt_ids: dict[str, list[int]] = {}
        for r in requests:
            p = r.prompt()
            if p not in prompt_ids:
                ids = tok.encode(p)
                if tok.unk_id in ids:
                    raise ConfigError(f"generator 'crystallm': prompt {p!r} contains text outside the vocabulary")
                if len(ids) >= self.context:
                    raise ConfigError(
                        f"generator 'crystallm': the prompt for {p.splitlines()[0]!r} has {len(ids)} tokens; "
                        f"it must be shorter than the context of {self.context} tokens"
                    )
                prompt_ids[p] = ids
        report = GenerationReport(num_sampled=len(requests))
        texts: list[str] = []
        finished: list[bool] = []
        t0 = time.perf_counter()
        for j, start in enumerate(range(0, len(requests), cfg.batch_size)):
            chunk = requests[start : start + cfg.batch_size]
            prompts = [prompt_ids[r.prompt()] for r in chunk]
            gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, j]).generate_state(1)[0]))
            ids, done = sample_tokens(
                self.net,
                prompts,
                temperature=cfg.temperature,
                top_k=cfg.top_k,
                generator=gen,
                use_cache=cfg.kv_cache,
                max_length=self.context,
                newline_id=tok.newline_id,
            )
            texts.extend(tok.decode_batch(ids))
            finished.extend(done.tolist())
            real = (ids != tok.pad_id).sum(dim=1).cpu()
            report.tokens_generated += int(real.sum()) - sum(len(p) for p in prompts)
        report.sampling_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        samples = []
        for r, text, done in zip(requests, texts, finished):
            check = check_cif(
                text,
                expected=r.composition,
                expected_space_group=r.space_group,
                bond_length_cutoff=cfg.bond_length_cutoff,
                bond_length_tolerance=cfg.bond_length_tolerance,
                symprec=cfg.symprec,
                check_bond_lengths=cfg.check_bond_lengths,
                check_space_group=cfg.check_space_group,
            )
            if not done and check.reason is None:
                check.reason = "parse: the context ran out before the CIF ended"
            samples.append(Sample(r, text, done, check))
        report.checking_seconds = time.perf_counter() - t0
        report.num_unfinished = sum(not d for d in finished)
        report.failures = dict(Counter(s.check.reason.split(":", 1)[0] for s in samples if s.check.reason))
        report.num_valid = sum(s.check.valid for s in samples)
        self.last_report = report
        return samples

    def generate(
        self, num_samples: int, conditions: GenerationConditions | None = None, *, seed: int | None = None
    ) -> CrystalBatch:
        """Up to ``num_samples`` crystals that pass every check; identical for identical ``seed`` and config.

        ``seed=None`` draws a fresh 32-bit seed (recorded in ids and ``info``).
        """
        return self.generate_detailed(num_samples, conditions, seed=seed).batch

    def generate_detailed(
        self, num_samples: int, conditions: GenerationConditions | None = None, *, seed: int | None = None
    ) -> GenerationResult:
        """:meth:`generate`'s crystals plus one :class:`RejectedSample` per sample left out, with the
        check it failed (``"parse: ..."``, ``"bond_length: ..."``, ``"min_distance: ..."``, ...)."""
        cfg: CrystaLLMConfig = self.config  # type: ignore[assignment]
        if isinstance(num_samples, bool) or not isinstance(num_samples, int | np.integer) or num_samples < 0:
            raise ConfigError(f"generator 'crystallm': num_samples must be a non-negative integer, got {num_samples!r}")
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        elif isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ConfigError(f"generator 'crystallm': seed must be a non-negative integer or None, got {seed!r}")
        seed = int(seed)
        requests = self.requests(int(num_samples), conditions, seed)
        if not requests:
            self.last_report = GenerationReport()
            return GenerationResult(CrystalBatch.empty(), [])
        samples = self.sample(requests, seed=seed)
        keep = [k for k, s in enumerate(samples) if s.check.valid]
        rejected = [
            RejectedSample(k, s.check.reason or "failed the CIF checks")
            for k, s in enumerate(samples)
            if not s.check.valid
        ]
        if not keep:
            self._log(seed)
            return GenerationResult(CrystalBatch.empty(), rejected)
        batch = CrystalBatch.from_structures(
            [samples[k].check.structure for k in keep], ids=[f"crystallm-{seed}-{k}" for k in keep]
        )
        batch.info = [self._info(samples[k], seed, k) for k in keep]
        reasons = batch.validate(min_distance=cfg.min_distance)
        close = [i for i, why in enumerate(reasons) if why is not None]
        if close:
            ok = [i for i, why in enumerate(reasons) if why is None]
            self.last_report.failures["min_distance"] = len(close)
            self.last_report.num_valid -= len(close)
            rejected += [RejectedSample(keep[i], f"min_distance: {reasons[i]}") for i in close]
            rejected.sort(key=lambda r: r.sample)
            batch = batch.select(ok) if ok else CrystalBatch.empty()
        self._log(seed)
        return GenerationResult(batch.to(self.device) if len(batch) else batch, rejected)

    def _info(self, s: Sample, seed: int, k: int) -> dict[str, Any]:
        r = s.request
        return {
            "generator": "crystallm",
            "prompt_formula": None if r.composition is None else r.composition.formula.replace(" ", ""),
            "requested_space_group": r.space_group,
            "space_group_symbol": s.check.declared_space_group,
            "space_group": (
                SPACE_GROUP_SYMBOLS.index(s.check.declared_space_group) + 1
                if s.check.declared_space_group in SPACE_GROUP_SYMBOLS
                else None
            ),
            "bond_length_score": s.check.bond_score,
            "seed": seed,
            "sample": k,
            "cif": s.check.cif,
        }

    def _log(self, seed: int) -> None:
        r = self.last_report
        log.info(
            "crystallm: %d of %d samples passed the checks (seed %d); failures: %s",
            r.num_valid,
            r.num_sampled,
            seed,
            ", ".join(f"{k} {v}" for k, v in sorted(r.failures.items())) or "none",
        )


def _ints(values: Any, what: str, lo: int, hi: int) -> tuple[int, ...]:
    """Validate a condition tuple of integers in ``lo..hi``."""
    if isinstance(values, int | np.integer) and not isinstance(values, bool):
        values = (values,)
    try:
        items = list(values)
    except TypeError:
        raise ConfigError(f"generator 'crystallm': {what} must be a sequence of integers, got {values!r}") from None
    if not items:
        raise ConfigError(f"generator 'crystallm': {what} is empty")
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int | np.integer):
            raise ConfigError(f"generator 'crystallm': {what} must contain integers, got {v!r}")
        if not lo <= int(v) <= hi:
            raise ConfigError(f"generator 'crystallm': {what} value {int(v)} is out of range {lo}–{hi}")
    return tuple(int(v) for v in items)
