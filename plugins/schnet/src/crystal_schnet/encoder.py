"""SchNet as a trainable crystal encoder.

Inputs: a :class:`~crystal.batch.CrystalBatch`. Outputs (``predict``): one tensor per
target of the config's ``targets`` — structure-level ``(B,)``/``(B, dim)`` or atom-level
``(N,)``/``(N, dim)`` regression values in the unit of the training target, or
classification probabilities (see :class:`crystal.targets.TargetSet`). Structure-level
heads pool atom-wise outputs (``readout``); atom-level heads are the atom-wise outputs
before aggregation.

Defaults are the Materials Project setup of Schütt et al., J. Chem. Phys. 148, 241722
(2018): ``F = 64`` features and filters, ``T = 6`` interactions, neighbours within
``r_c = 5 Å`` (hard cutoff), Gaussian expansion with ``γ = 10 Å⁻²``, mean readout for the
intensive formation energy per atom.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field
from torch import nn

from crystal.manifest import NamedWeights, WeightsManifest
from crystal.targets import TargetSet
from crystal.trainable import EncoderConfig, TrainableEncoder

__all__ = ["SchNetConfig", "SchNetEncoder"]


#: the named weights this component ships (declared once: `crystal plugins manifest --write`
#: copies them into crystal_plugin.toml, the config's `weights` field accepts exactly these names)
WEIGHTS = NamedWeights(
    WeightsManifest(
        name="schnet-perov5-heat-ref",
        file="package:crystal_schnet/weights/schnet-perov5-heat-ref.pt",
        sha256="71d8d88cbfb6bb4847928c07ed24d6bfb744187957205aa973ff0c63f13b8056",
        licence="MIT",
        training_data=(
            "Perov-5 (CDVAE splits): val.csv: 3408 structures for training + 379 held out for model selection "
            "(seed 0), tested on test.csv (3785)"
        ),
        description=(
            "SchNet (paper defaults) predicting heat_ref, the heat of formation of the 5-atom perovskite cell "
            "(eV); the benchmarks/encoders.py run (30 epochs, AdamW 1e-3 one-cycle, batch 64); 30 epochs (best "
            "27), 127,617 parameters; model card: weights/schnet-perov5-heat-ref.md"
        ),
        metrics={
            "test_heat_ref_mae_eV": 0.10813,
            "test_heat_ref_rmse_eV": 0.14539,
            "val_heat_ref_mae_eV": 0.0951,
            "val_heat_ref_rmse_eV": 0.1246,
        },
    ),
)


class SchNetConfig(EncoderConfig):
    """Hyperparameters of :class:`SchNetEncoder` (defaults: the paper's materials setup)."""

    weights: Annotated[str, WEIGHTS] | None = Field(
        None, description="named weights shipped with the plugin (`crystal plugins info`)"
    )

    n_features: int = Field(
        64, ge=2, description="F: width of the atom-type embedding and atom-wise features (dimensionless count)"
    )
    n_filters: int = Field(64, ge=1, description="width of the continuous filters of each cfconv (dimensionless count)")
    n_interactions: int = Field(6, ge=1, description="T: number of interaction blocks (dimensionless count)")
    cutoff: float = Field(
        5.0, gt=0, description="r_c: neighbours (all periodic images) with distance < r_c interact, Å"
    )
    num_gaussians: int = Field(
        50, ge=1, description="K: Gaussians exp(-gamma (d - mu_k)^2) with centres mu_k evenly spaced on [0, cutoff] Å"
    )
    gamma: float = Field(10.0, gt=0, description="gamma: width parameter of the Gaussian expansion, Å^-2")
    cutoff_fn: Literal["none", "cosine"] = Field(
        "none",
        description="envelope of the filters: 'none' = hard cutoff at r_c (the paper), "
        "'cosine' = 0.5 (cos(pi d / r_c) + 1) (smooth, SchNetPack); d in Å",
    )
    readout: Literal["mean", "sum"] = Field(
        "mean",
        description="aggregation of the atom-wise outputs of structure-level targets: 'mean' for intensive "
        "targets (e.g. formation energy per atom, eV/atom), 'sum' for extensive ones (e.g. total energy, eV)",
    )


class SchNetEncoder(TrainableEncoder):
    """SchNet (Schütt et al., J. Chem. Phys. 148, 241722 (2018); NeurIPS 2017) property predictor."""

    name: ClassVar[str] = "schnet"
    version: ClassVar[str] = "0.1.0"
    description = (
        "SchNet property predictor (structure- and atom-level targets, regression or classification; units of "
        "the training targets); randomly initialised with the paper's materials defaults unless a checkpoint is "
        "given"
    )
    Config: ClassVar[type[EncoderConfig]] = SchNetConfig
    consumes: ClassVar[str] = "crystal"
    produces: ClassVar[str] = "properties"

    @property
    def graph_cutoff(self) -> float:
        """The neighbour cutoff of the graph (Å): crystals with an isolated atom are reported, not predicted."""
        return float(self.config.cutoff)  # type: ignore[attr-defined]

    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    #: weights trained by us and shipped in the package (model cards in crystal_schnet/weights/)
    weights: ClassVar[tuple[str, ...]] = WEIGHTS
    #: embedding rows 0…100; elements with Z > 100 raise StructureError (TrainableEncoder.check_elements)
    max_atomic_number: ClassVar[int] = 100

    config: SchNetConfig

    @classmethod
    def build_model(cls, config: Any, targets: TargetSet) -> nn.Module:
        from crystal_schnet.model import SchNet

        return SchNet(
            num_features=config.n_features,
            num_filters=config.n_filters,
            num_interactions=config.n_interactions,
            cutoff=config.cutoff,
            num_gaussians=config.num_gaussians,
            gamma=config.gamma,
            cutoff_fn=config.cutoff_fn,
            readout=config.readout,
            structure_width=targets.structure_width,
            atom_width=targets.atom_width,
            num_elements=cls.max_atomic_number + 1,
        )
