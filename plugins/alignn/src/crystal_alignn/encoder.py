"""ALIGNN as a trainable crystal encoder.

Inputs: a :class:`~crystal.batch.CrystalBatch`. Outputs: ``{target: values}`` for the
configured targets (``(B,)`` / ``(B, dim)`` per structure, ``(N,)`` / ``(N, dim)`` per atom,
in the unit of the training data; classification targets as probabilities), see
:class:`crystal.trainable.TrainableEncoder`. Hyperparameter defaults are those of the paper
and of the reference ``ALIGNNConfig`` (``usnistgov/alignn``, ``alignn/models/alignn.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field
from torch import nn

from crystal.components import ComponentConfig
from crystal.manifest import NamedWeights, WeightsManifest
from crystal.targets import TargetSet
from crystal.trainable import RUNTIME_FIELDS, EncoderConfig, TrainableEncoder

__all__ = ["JARVIS_ATOM_FEATURES", "ALIGNNConfig", "ALIGNNEncoder"]

_CITATION = (
    "K. Choudhary and B. DeCost, Atomistic Line Graph Neural Network for improved materials property "
    "predictions, npj Comput. Mater. 7, 185 (2021), doi:10.1038/s41524-021-00650-1"
)
_JARVIS_DATA = (
    "JARVIS-DFT 3D (jarvis-tools dataset dft_3d, the 2021.8.18 release of the paper), the entries with the "
    "property; random 80/10/10 train/validation/test split (the reference's TrainingConfig, seed 123)"
)


def _jarvis(name: str, url: str, what: str, unit: str, mae: float | None, size: int | None = None) -> WeightsManifest:
    return WeightsManifest(
        name=name,
        file=url,
        sha256=None,  # figshare publishes md5 only: pinned at first download
        size=size,
        licence="NIST-Software",
        citation=_CITATION,
        training_data=_JARVIS_DATA,
        description=(
            f"released JARVIS ALIGNN model (usnistgov/alignn, figshare zip: config.json + checkpoint): {what} "
            f"({unit}); reference architecture (4 ALIGNN + 4 GCN layers, 256 hidden, 92 CGCNN atom features), "
            "run with the reference's graph construction; its element features (jarvis-tools atom_init.json) are downloaded on first use"
        ),
        metrics={f"paper_test_mae_{unit.replace('/', '_per_')}": mae} if mae is not None else {},
    )


#: the 92 CGCNN element features (``atom_init.json``) the released JARVIS models were trained
#: with, as jarvis-tools ships them (``jarvis/core/atom_init.json``); downloaded and cached
#: like weights the first time a JARVIS model is converted (or give ``atom_init``)
JARVIS_ATOM_FEATURES = WeightsManifest(
    name="alignn-jarvis-cgcnn-atom-features",
    file=(
        "https://raw.githubusercontent.com/usnistgov/jarvis/5a5be4be95ae4f5048fb638cf7946090ea88c08b/"
        "jarvis/core/atom_init.json"
    ),
    sha256="aab9b30f300e1b871b560ef2a715c4356880349293b222b4a14608ff872c80fe",
    size=28393,
    licence="NIST-PD",
    citation="T. Xie and J. C. Grossman, Phys. Rev. Lett. 120, 145301 (2018) (CGCNN atom features)",
    training_data="element data (CGCNN Table I categories), not trained",
    description="92-dim one-hot CGCNN element features {Z: [...]} for Z = 1-100, input of the JARVIS ALIGNN models",
)


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
    _jarvis(
        "alignn-jv-formation-energy",
        "https://ndownloader.figshare.com/files/31458679",
        "JARVIS-DFT OptB88vdW formation energy per atom (jv_formation_energy_peratom_alignn)",
        "eV/atom",
        0.033,
    ),
    _jarvis(
        "alignn-jv-optb88vdw-bandgap",
        "https://ndownloader.figshare.com/files/31459636",
        "JARVIS-DFT OptB88vdW band gap (jv_optb88vdw_bandgap_alignn)",
        "eV",
        0.14,
    ),
    _jarvis(
        "alignn-jv-mbj-bandgap",
        "https://ndownloader.figshare.com/files/31458694",
        "JARVIS-DFT TBmBJ band gap (jv_mbj_bandgap_alignn)",
        "eV",
        0.31,
    ),
    _jarvis(
        "alignn-jv-bulk-modulus",
        "https://ndownloader.figshare.com/files/31458649",
        "JARVIS-DFT Voigt bulk modulus Kv (jv_bulk_modulus_kv_alignn)",
        "GPa",
        10.40,
    ),
    _jarvis(
        "alignn-jv-shear-modulus",
        "https://ndownloader.figshare.com/files/31458724",
        "JARVIS-DFT Voigt shear modulus Gv (jv_shear_modulus_gv_alignn)",
        "GPa",
        9.48,
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
    atom_features: Literal["derived", "cgcnn"] = Field(
        "derived",
        description="element input features: 'derived' (93-dim, crystal.element_features) or 'cgcnn' (the 92-dim "
        "CGCNN atom_init.json features of the released JARVIS models; from `atom_init` or the checkpoint)",
    )
    atom_init: Path | None = Field(
        None,
        description="element-feature JSON {\"Z\": [92 numbers]} for atom_features = 'cgcnn' (jarvis-tools' "
        "atom_init.json); for a JARVIS zip it defaults to the registry's copy (downloaded once)",
    )
    link: Literal["identity", "log", "logit"] = Field(
        "identity",
        description="output link of the reference: 'log' applies exp, 'logit' sigmoid to the structure outputs",
    )
    graph_construction: Literal["batched", "reference"] = Field(
        "batched",
        description="'batched': crystal's vectorised 12-nearest graph (ties within 1e-6 Å, self-image bonds once); "
        "'reference': the reference's own construction, one crystal at a time (exact float ties, lattice rounded "
        "to 5 decimals, self-image bonds twice) — the default of loaded JARVIS models, for parity",
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
            element_features=_element_table(config),
            link=config.link,
            reference_graph=config.graph_construction == "reference",
        )

    # ------------------------------------------------------------------ loading
    def _read_checkpoint(self) -> dict[str, Any] | None:
        """A crystal checkpoint, or a released JARVIS zip (named weights or ``checkpoint``)
        converted in memory by :mod:`crystal_alignn.jarvis`."""
        from crystal.errors import ConfigError, WeightsError
        from crystal.weights import resolve_weights, sha256sum
        from crystal_alignn.jarvis import is_jarvis_archive

        cfg = self.config
        assert isinstance(cfg, ALIGNNConfig)
        path = None
        if cfg.weights is not None and cfg.checkpoint is None and cfg.weights in self.weights:
            entry = WEIGHTS.entry(cfg.weights)
            if entry.remote:
                found, _ = resolve_weights(entry)
                if is_jarvis_archive(found):
                    path, digest = found, sha256sum(found)
        elif cfg.checkpoint is not None and is_jarvis_archive(cfg.checkpoint):
            path = Path(cfg.checkpoint)
            digest = sha256sum(path)
            if cfg.sha256 is not None and digest != cfg.sha256:
                raise WeightsError(
                    f"encoder 'alignn': checkpoint {str(path)!r} has sha256 {digest}, expected {cfg.sha256}"
                )
        if path is None:
            ckpt = super()._read_checkpoint()
            if ckpt is None and cfg.atom_features == "cgcnn" and cfg.atom_init is None:
                raise ConfigError(
                    "encoder 'alignn': atom_features = 'cgcnn' needs atom_init (the element-feature JSON)"
                )
            return ckpt
        self.checkpoint_sha256 = digest
        return _convert_jarvis(path, cfg)

    def _merge_config(self, ckpt: Mapping[str, Any]) -> ComponentConfig:
        """As the base class; ``graph_construction`` set by the user overrides the checkpoint's."""
        from crystal.weights import merge_checkpoint_config

        saved = dict(ckpt.get("config") or {})
        saved["targets"] = list(ckpt.get("targets") or [])
        runtime = set(RUNTIME_FIELDS) | {"atom_init"}
        if "graph_construction" in self.config.model_fields_set:
            runtime.add("graph_construction")
        return merge_checkpoint_config(self, saved, frozenset(runtime), kind="encoder")  # type: ignore[no-any-return]


def _element_table(config: ALIGNNConfig) -> Any:
    """The element-feature table of ``config`` (None: the derived features)."""
    if config.atom_features == "derived":
        return None
    import torch

    from crystal_alignn.jarvis import ATOM_FEATURES_WIDTH, load_atom_features

    if config.atom_init is not None:
        return load_atom_features(config.atom_init)
    return torch.zeros((101, ATOM_FEATURES_WIDTH), dtype=torch.float64)  # filled from the checkpoint


def _convert_jarvis(path: Path, config: ALIGNNConfig) -> dict[str, Any]:
    """The crystal checkpoint of the JARVIS zip at ``path`` (see :mod:`crystal_alignn.jarvis`)."""
    from crystal.weights import resolve_weights
    from crystal_alignn.jarvis import jarvis_checkpoint, load_atom_features, read_jarvis_archive

    reference_config, state, member = read_jarvis_archive(path)
    features = config.atom_init
    if features is None:
        features, _ = resolve_weights(JARVIS_ATOM_FEATURES)
    table = load_atom_features(features)
    return jarvis_checkpoint(reference_config, state, table, source=f"{path.name}:{member}")
