"""MEGNet encoder: a trainable MEGNet (Chen et al. 2019) with the paper's crystal defaults.

Inputs: a :class:`~crystal.batch.CrystalBatch`; the declared ``state_inputs`` are read from
``batch.crystal_properties`` (one number per crystal). Output: ``{target: tensor}`` per the
config's ``targets`` — regression values ``(B,)``/``(B, dim)`` (per atom ``(N,)``/``(N, dim)``)
in the unit of the training data, classification probabilities. A new model is randomly
initialised (``seed``); a trained one is loaded with ``checkpoint`` + ``sha256``.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar

from pydantic import Field, model_validator
from torch import nn

from crystal.components import ComponentConfig
from crystal.manifest import NamedWeights, WeightsManifest
from crystal.targets import TargetSet
from crystal.trainable import EncoderConfig, TrainableEncoder

__all__ = ["MEGNetConfig", "MEGNetEncoder"]

#: the reference code's element vocabulary: Embedding(nvocal=95) covers Z = 0 … 94
MAX_ATOMIC_NUMBER = 94


#: the named weights this component ships (declared once: `crystal plugins manifest --write`
#: copies them into crystal_plugin.toml, the config's `weights` field accepts exactly these names)
WEIGHTS = NamedWeights(
    WeightsManifest(
        name="megnet-perov5-heat-ref",
        file="package:crystal_megnet/weights/megnet-perov5-heat-ref.pt",
        sha256="88608ebaefd1ff5449221bb7cae38ebe05b8379692586faa49dfbe53ab911862",
        licence="MIT",
        training_data=(
            "Perov-5 (CDVAE splits): val.csv: 3408 structures for training + 379 held out for model selection "
            "(seed 0), tested on test.csv (3785)"
        ),
        description=(
            "MEGNet (paper defaults) predicting heat_ref, the heat of formation of the 5-atom perovskite cell "
            "(eV); the benchmarks/encoders.py run (30 epochs, AdamW 1e-3 one-cycle, batch 64); 30 epochs (best "
            "30), 167,761 parameters; model card: weights/megnet-perov5-heat-ref.md"
        ),
        metrics={
            "test_heat_ref_mae_eV": 0.15428,
            "test_heat_ref_rmse_eV": 0.20119,
            "val_heat_ref_mae_eV": 0.14789,
            "val_heat_ref_rmse_eV": 0.1966,
        },
    ),
)


class MEGNetConfig(EncoderConfig):
    """Hyperparameters of :class:`MEGNetEncoder`; defaults are the paper's crystal models
    (the ``mp-2018.6.1`` models of the reference code ``materialsvirtuallab/megnet``)."""

    weights: Annotated[str, WEIGHTS] | None = Field(
        None, description="named weights shipped with the plugin (`crystal plugins info`)"
    )

    cutoff: float = Field(
        4.0,
        gt=0,
        description="bond cutoff radius: every pair of atoms closer than this (periodic images included) is a bond, Å",
    )
    num_gaussians: int = Field(100, ge=2, description="number of Gaussian centres of the bond-distance expansion")
    gaussian_start: float = Field(0.0, ge=0, description="first Gaussian centre, Å")
    gaussian_stop: float = Field(5.0, gt=0, description="last Gaussian centre (centres evenly spaced, inclusive), Å")
    gaussian_width: float = Field(0.5, gt=0, description="Gaussian width σ of exp(-(d - μ)²/σ²), Å")
    embedding_dim: int = Field(16, ge=1, description="width of the atomic-number embedding (dimensionless)")
    hidden_dim: int = Field(
        64,
        ge=1,
        description="n1: width of the first dense layer of every pre-block stack and of the hidden layers of φe, φv, φu",
    )
    block_dim: int = Field(
        32, ge=1, description="n2: width of atom, bond and state features between blocks and of the first readout layer"
    )
    readout_dim: int = Field(
        16, ge=1, description="n3: Set2Set width (its output is 2·n3) and second readout layer width"
    )
    num_blocks: int = Field(3, ge=1, description="number of MEGNet blocks (graph-network updates)")
    set2set_steps: int = Field(3, ge=1, description="number of Set2Set attention steps T in the atom and bond readouts")
    dropout: float = Field(
        0.0, ge=0, lt=1, description="dropout rate after every block and before the readout, training only (0 = off)"
    )
    state_inputs: tuple[str, ...] = Field(
        (),
        description="per-crystal global-state inputs read from batch.crystal_properties, in this order, each one "
        "number per crystal in the unit of the data (e.g. 'temperature', K); empty = the paper's default state [0, 0]",
    )
    state_default: dict[str, float] = Field(
        default_factory=dict,
        description="value of a state input for crystals whose batch lacks it, in that input's unit "
        "(e.g. {'temperature': 300.0}); a declared input without a default must be present",
    )

    @model_validator(mode="after")
    def _check(self) -> MEGNetConfig:
        if self.gaussian_stop <= self.gaussian_start:
            raise ValueError("gaussian_stop must be above gaussian_start")
        names = list(self.state_inputs)
        if any(not n.strip() for n in names):
            raise ValueError("state_inputs names must be non-empty")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate state_inputs: {', '.join(dup)}")
        unknown = sorted(set(self.state_default) - set(names))
        if unknown:
            declared = ", ".join(names) or "none"
            raise ValueError(
                f"state_default for undeclared state inputs {', '.join(unknown)} (state_inputs: {declared})"
            )
        bad = sorted(k for k, v in self.state_default.items() if not math.isfinite(v))
        if bad:
            raise ValueError(f"state_default must be finite numbers (not for {', '.join(bad)})")
        return self


class MEGNetEncoder(TrainableEncoder):
    """MEGNet (Chen, Ye, Zuo, Zheng & Ong, Chem. Mater. 31, 3564 (2019)) property predictor."""

    name: ClassVar[str] = "megnet"
    version: ClassVar[str] = "0.1.0"
    description = (
        "MEGNet property predictor (trainable): per-structure and per-atom regression/classification targets in "
        "the unit of the training data; optional per-crystal global-state inputs (e.g. temperature)"
    )
    Config: ClassVar[type[ComponentConfig]] = MEGNetConfig
    consumes: ClassVar[str] = "crystal"
    produces: ClassVar[str] = "properties"
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")

    @property
    def graph_cutoff(self) -> float:
        """The neighbour cutoff of the graph (Å): crystals with an isolated atom are reported, not predicted."""
        return float(self.config.cutoff)  # type: ignore[attr-defined]

    weights: ClassVar[tuple[str, ...]] = WEIGHTS
    max_atomic_number: ClassVar[int] = MAX_ATOMIC_NUMBER

    @classmethod
    def build_model(cls, config: Any, targets: TargetSet) -> nn.Module:
        from crystal_megnet.model import MEGNet

        assert isinstance(config, MEGNetConfig)
        return MEGNet(
            targets,
            state_names=config.state_inputs,
            state_defaults=config.state_default,
            max_atomic_number=cls.max_atomic_number,
            embedding_dim=config.embedding_dim,
            cutoff=config.cutoff,
            gaussian_start=config.gaussian_start,
            gaussian_stop=config.gaussian_stop,
            num_gaussians=config.num_gaussians,
            gaussian_width=config.gaussian_width,
            hidden_dim=config.hidden_dim,
            block_dim=config.block_dim,
            readout_dim=config.readout_dim,
            num_blocks=config.num_blocks,
            set2set_steps=config.set2set_steps,
            dropout=config.dropout,
        )
