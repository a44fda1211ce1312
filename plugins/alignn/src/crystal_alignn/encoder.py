"""ALIGNN as a trainable crystal encoder.

Inputs: a :class:`~crystal.batch.CrystalBatch`. Outputs: ``{target: values}`` for the
configured targets (``(B,)`` / ``(B, dim)`` per structure, ``(N,)`` / ``(N, dim)`` per atom,
in the unit of the training data; classification targets as probabilities), see
:class:`crystal.trainable.TrainableEncoder`. Hyperparameter defaults are those of the paper
and of the reference ``ALIGNNConfig`` (``usnistgov/alignn``, ``alignn/models/alignn.py``).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field
from torch import nn

from crystal.manifest import NamedWeights, WeightsManifest
from crystal.targets import TargetSet
from crystal.trainable import EncoderConfig, TrainableEncoder

__all__ = ["ALIGNNConfig", "ALIGNNEncoder"]


#: the named weights this component ships (declared once: `crystal plugins manifest --write`
#: copies them into crystal_plugin.toml, the config's `weights` field accepts exactly these names)
WEIGHTS = NamedWeights(
    WeightsManifest(
        name="alignn-perov5-heat-ref",
        file="package:crystal_alignn/weights/alignn-perov5-heat-ref.pt",
        sha256="6f0588ec2e72b9cafb364a7cf25d74526864fcafa0a1c7912d17ea5e2943da7f",
        licence="MIT",
        training_data=(
            "Perov-5 (CDVAE splits): val.csv: 3408 structures for training + 379 held out for model selection "
            "(seed 0), tested on test.csv (3785)"
        ),
        description=(
            "ALIGNN, reference architecture at reduced width (hidden 64, embedding 32; paper 256/64), predicting "
            "heat_ref, the heat of formation of the 5-atom perovskite cell (eV); the benchmarks/encoders.py run; "
            "30 epochs (best 28), 267,393 parameters; model card: weights/alignn-perov5-heat-ref.md"
        ),
        metrics={
            "test_heat_ref_mae_eV": 0.08175,
            "test_heat_ref_rmse_eV": 0.11199,
            "val_heat_ref_mae_eV": 0.07406,
            "val_heat_ref_rmse_eV": 0.0976,
        },
    ),
    WeightsManifest(
        name="alignn-carbon24-energy",
        file="package:crystal_alignn/weights/alignn-carbon24-energy.pt",
        sha256="720af952b4aa55a8269b01ce4e2a02f01fc5d3c7fa199e5bca666dd497dfc779",
        licence="MIT",
        training_data=(
            "Carbon-24 (CDVAE splits): val.csv: 1829 structures for training + 203 held out for model selection "
            "(seed 0), tested on test.csv (2030)"
        ),
        description=(
            "ALIGNN at reduced width (hidden 64, embedding 32) with unnormalised edge gates (gate_normalization "
            "= none, a documented deviation: with the reference's normalised gates every Carbon-24 polymorph "
            "gets the same prediction) predicting energy_per_atom (eV/atom); 30 epochs (best 28), 267,393 "
            "parameters; model card: weights/alignn-carbon24-energy.md"
        ),
        metrics={
            "test_energy_per_atom_mae_eV_per_atom": 0.01532,
            "test_energy_per_atom_rmse_eV_per_atom": 0.02479,
            "val_energy_per_atom_mae_eV_per_atom": 0.01469,
            "val_energy_per_atom_rmse_eV_per_atom": 0.02256,
        },
    ),
)


class ALIGNNConfig(EncoderConfig):
    """Architecture of :class:`ALIGNNEncoder` (names as in the reference ``ALIGNNConfig``)."""

    weights: Annotated[str, WEIGHTS] | None = Field(
        None, description="named weights shipped with the plugin (`crystal plugins info`)"
    )

    bond_rbf_max: float = Field(
        8.0,
        gt=0,
        description="upper end of the bond-length RBF centres, Å (the reference's RBFExpansion vmax, equal to its "
        "8 Å neighbour cutoff); the atom graph itself is the exact k-nearest-neighbour shell, see max_neighbors",
    )
    max_neighbors: int = Field(
        12,
        ge=1,
        description="k of the atom graph (count): every atom keeps its neighbours up to the distance of its "
        "k-th nearest (ties included, however far), then the graph is made undirected",
    )
    alignn_layers: int = Field(4, ge=0, description="ALIGNN layers (atom-graph + line-graph convolution), count")
    gcn_layers: int = Field(4, ge=0, description="further edge-gated convolutions on the atom graph, count")
    edge_input_features: int = Field(80, ge=2, description="RBF bins of bond lengths from 0 to bond_rbf_max Å, count")
    triplet_input_features: int = Field(
        40, ge=2, description="RBF bins of bond-angle cosines from -1 to 1 (dimensionless), count"
    )
    embedding_features: int = Field(64, ge=1, description="width of the first bond and angle embedding layer, features")
    hidden_features: int = Field(
        256, ge=1, description="width of atom, bond and angle features in every layer, features"
    )
    layer_order: Literal["atom-then-line", "line-then-atom"] = Field(
        "atom-then-line",
        description="order of the two convolutions in an ALIGNN layer: 'atom-then-line' as in the reference "
        "code (atom graph, then line graph on its bond messages), 'line-then-atom' as the paper describes",
    )
    gate_normalization: Literal["sum", "none"] = Field(
        "sum",
        description="'sum': edge gates normalised by their sum as in the reference code (single-element crystals "
        "then all get the same prediction); 'none': unnormalised gates of Bresson & Laurent (2017) — a deviation "
        "that lets the geometry reach the atom features of elemental crystals",
    )


class ALIGNNEncoder(TrainableEncoder):
    """ALIGNN (Choudhary & DeCost, npj Comput. Mater. 7, 185 (2021)) property predictor."""

    name: ClassVar[str] = "alignn"
    version: ClassVar[str] = "0.1.0"
    description = (
        "ALIGNN property predictor (trainable): edge-gated graph convolutions on the 12-nearest-neighbour atom "
        "graph and its bond-angle line graph; structure targets in their training unit, per-atom targets "
        "optional"
    )
    Config: ClassVar[type[EncoderConfig]] = ALIGNNConfig
    consumes: ClassVar[str] = "crystal"
    produces: ClassVar[str] = "properties"
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    #: weights trained by us and shipped in the package (model cards in crystal_alignn/weights/)
    weights: ClassVar[tuple[str, ...]] = WEIGHTS
    #: the derived element features cover Z = 1-100
    max_atomic_number: ClassVar[int] = 100

    @classmethod
    def build_model(cls, config: Any, targets: TargetSet) -> nn.Module:
        from crystal_alignn.model import ALIGNN

        assert isinstance(config, ALIGNNConfig)
        return ALIGNN(
            targets,
            bond_rbf_max=config.bond_rbf_max,
            max_neighbors=config.max_neighbors,
            alignn_layers=config.alignn_layers,
            gcn_layers=config.gcn_layers,
            edge_input_features=config.edge_input_features,
            triplet_input_features=config.triplet_input_features,
            embedding_features=config.embedding_features,
            hidden_features=config.hidden_features,
            layer_order=config.layer_order,
            normalize_gates=config.gate_normalization == "sum",
        )
