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

from typing import Any, ClassVar, Literal

from pydantic import Field
from torch import nn

from crystal.targets import TargetSet
from crystal.trainable import EncoderConfig, TrainableEncoder

__all__ = ["SchNetConfig", "SchNetEncoder"]


class SchNetConfig(EncoderConfig):
    """Hyperparameters of :class:`SchNetEncoder` (defaults: the paper's materials setup)."""

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
    Config: ClassVar[type[EncoderConfig]] = SchNetConfig
    consumes: ClassVar[str] = "crystal"
    produces: ClassVar[str] = "properties"
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    #: weights trained by us and shipped in the package (model cards in crystal_schnet/weights/)
    weights: ClassVar[tuple[str, ...]] = ("schnet-perov5-heat-ref",)
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
