"""The ``m3gnet`` potential: :class:`~crystal_m3gnet.model.M3GNet` behind crystal's trainable-potential contract.

Core (:mod:`crystal.trainable_potential`) builds the radius graph at ``cutoff``, differentiable
edge vectors, adds the per-element reference energies ``e0s`` and takes forces and stress by
autograd; this module declares the architecture (:class:`M3GNetConfig`), builds the model and
loads matgl's released potentials (``model.json`` + ``state.pt``, see
:mod:`crystal_m3gnet.matgl_format`), either as named weights or from a matgl model folder.

Named weights: a weights entry is one file, so each entry is the authors' ``state.pt`` (raw file
of the matgl GitHub repository at a fixed commit, sha256-pinned); its ``model.json`` (5 KB of
hyper-parameters) ships inside this package (``crystal_m3gnet/matgl_models/<folder>.model.json``,
byte-identical to the authors' file at the same commit). ``model.pt`` (pickled init args) is
never used.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field, model_validator

from crystal.components import ComponentConfig
from crystal.errors import ConfigError
from crystal.manifest import NamedWeights, WeightsManifest
from crystal.trainable_potential import RUNTIME_FIELDS, PotentialConfig, TrainablePotential
from crystal_m3gnet import __version__
from crystal_m3gnet.model import M3GNet

__all__ = ["MATGL_FOLDERS", "WEIGHTS", "M3GNetConfig", "M3GNetPotential"]

_MATGL_COMMIT = "e9cde2291acd0b4c4a342428e7dd5e4d596b7bf9"
_RAW = f"https://raw.githubusercontent.com/materialsvirtuallab/matgl/{_MATGL_COMMIT}/pretrained_models"
_CITATION = (
    "C. Chen and S. P. Ong, A universal graph deep learning interatomic potential for the periodic table, "
    "Nat. Comput. Sci. 2, 718-728 (2022), doi:10.1038/s43588-022-00349-3"
)

#: named weights -> the matgl pretrained_models folder whose model.json ships in this package
MATGL_FOLDERS = {
    "m3gnet-mp-2021.2.8-pes": "M3GNet-MP-2021.2.8-PES",
    "m3gnet-mp-2021.2.8-direct-pes": "M3GNet-MP-2021.2.8-DIRECT-PES",
}

WEIGHTS = NamedWeights(
    WeightsManifest(
        name="m3gnet-mp-2021.2.8-pes",
        file=f"{_RAW}/M3GNet-MP-2021.2.8-PES/state.pt",
        sha256="a9aa723705bd1a242ec8749332f137811c4a94e17995a564f8f94a9aca68061b",
        size=1228529,
        licence="BSD-3-Clause",
        citation=_CITATION,
        training_data=(
            "MP-2021.2.8: Materials Project structure relaxations as of 2021-02-08 (167,378 training / 9,294 "
            "validation structures; structures with forces > 100 eV/Å or no bond removed)"
        ),
        description=(
            "matgl's M3GNet universal potential, 89 elements (H-Pu), 3 blocks, 64 features, max_n = max_l = 3, "
            "cutoff 5 Å, three-body cutoff 4 Å; the state.pt of matgl's pretrained_models/M3GNet-MP-2021.2.8-PES "
            "(hyper-parameters: the authors' model.json, shipped in crystal_m3gnet/matgl_models). CAVEAT: run, "
            "like matgl 4.x, with messages summed onto the centre atom; the weights were trained with the older "
            "convention, and multi-element energies differ (README: 'The aggregation convention')"
        ),
        metrics={
            "train_energy_mae_meV_per_atom": 18.697,
            "train_forces_mae_eV_per_A": 0.063,
            "train_stress_mae_GPa": 0.259,
            "val_energy_mae_meV_per_atom": 21.099,
            "val_forces_mae_eV_per_A": 0.072,
            "val_stress_mae_GPa": 0.380,
        },
    ),
    WeightsManifest(
        name="m3gnet-mp-2021.2.8-direct-pes",
        file=f"{_RAW}/M3GNet-MP-2021.2.8-DIRECT-PES/state.pt",
        sha256=None,
        licence="BSD-3-Clause",
        citation=_CITATION,
        training_data=(
            "MP-2021.2.8-DIRECT: Materials Project relaxations as of 2021-02-08 combined with DIRECT sampling "
            "(167,192 training / 9,284 validation structures)"
        ),
        description=(
            "matgl's M3GNet universal potential trained on DIRECT-sampled data (authors: 'preliminary'), 89 "
            "elements, 3 blocks, 128 features, max_n = max_l = 3, cutoff 5 Å, three-body cutoff 4 Å; the state.pt "
            "of matgl's pretrained_models/M3GNet-MP-2021.2.8-DIRECT-PES (no published sha256: pinned at first "
            "download)"
        ),
        metrics={
            "train_energy_mae_meV_per_atom": 21.848,
            "train_forces_mae_eV_per_A": 0.049,
            "train_stress_mae_GPa": 0.257,
            "val_energy_mae_meV_per_atom": 33.547,
            "val_forces_mae_eV_per_A": 0.087,
            "val_stress_mae_GPa": 0.593,
        },
    ),
)

#: config fields that say where the weights come from or how to run, not what the model is
M3GNET_RUNTIME_FIELDS = RUNTIME_FIELDS | {"matgl_model"}


class M3GNetConfig(PotentialConfig):
    """Hyper-parameters of :class:`M3GNetPotential`; defaults are the paper's / matgl's released
    universal potential (M3GNet-MP-2021.2.8-PES).

    ``weights`` takes the names of :data:`WEIGHTS`; ``matgl_model`` a folder saved by matgl.
    Inherited: ``checkpoint`` (a crystal checkpoint), ``sha256``, ``elements``, ``cutoff`` (5 Å),
    ``e0s`` (matgl's ``element_refs``), ``seed``, ``dtype`` (float64 by default; matgl runs float32),
    ``batch_size``, ``min_distance``.
    """

    weights: Annotated[str, WEIGHTS] | None = Field(
        None,
        description="named weights: the authors' released M3GNet potentials (downloaded once, sha256-checked; "
        "`crystal weights list`)",
    )
    matgl_model: Path | None = Field(
        None,
        description="a folder saved by matgl (`Potential.save`: model.json + state.pt; model.pt is not read), "
        "e.g. a copy of matgl's pretrained_models/M3GNet-MP-2021.2.8-PES; the architecture comes from it",
    )
    threebody_cutoff: float = Field(
        4.0, gt=0, le=20, description="bonds shorter than this form three-body terms (Å; at most `cutoff`)"
    )
    max_n: int = Field(3, ge=1, le=16, description="radial orders n of the spherical Bessel basis (dimensionless)")
    max_l: int = Field(
        3, ge=1, le=8, description="angular orders l of the basis: spherical Bessel j_l and harmonics Y_l^0 (l < max_l)"
    )
    nblocks: int = Field(3, ge=1, le=8, description="three-body + graph-convolution blocks")
    dim_node_embedding: int = Field(64, ge=1, description="atom feature width (dimensionless)")
    dim_edge_embedding: int = Field(64, ge=1, description="bond feature width (dimensionless)")
    units: int = Field(64, ge=1, description="hidden width of the gated MLPs (dimensionless)")
    data_mean: float = Field(0.0, description="eV per crystal added to the scaled model output (matgl's data_mean)")
    data_std: float = Field(
        1.0, gt=0, description="eV; the summed atom outputs are multiplied by it (matgl's data_std)"
    )

    @model_validator(mode="after")
    def _check(self) -> M3GNetConfig:
        if self.threebody_cutoff > self.cutoff:
            raise ValueError(f"threebody_cutoff ({self.threebody_cutoff} Å) exceeds cutoff ({self.cutoff} Å)")
        if self.matgl_model is not None and (self.weights is not None or self.checkpoint is not None):
            raise ValueError("give one of matgl_model, weights or checkpoint")
        return self


class M3GNetPotential(TrainablePotential):
    """M3GNet interatomic potential (Chen & Ong 2022): the released matgl universal potentials, or trained by crystal.

    >>> pot = M3GNetPotential(weights="m3gnet-mp-2021.2.8-pes")  # doctest: +SKIP
    >>> pot.compute(batch)  # energy (B,) eV, forces (N, 3) eV/Å, stress (B, 3, 3) eV/Å³  # doctest: +SKIP
    """

    name = "m3gnet"
    memory_metric = "edges"  # radius graph at the cutoff (and three-body triplets within it)
    version = __version__
    description = (
        "M3GNet (Chen & Ong 2022: three-body spherical Bessel x Y_l0 bond updates, gated graph convolutions, "
        "cutoff 5 Å / 4 Å), matgl's released universal potentials or trained by crystal: total energy (eV), "
        "forces (eV/Å) and stress (eV/Å³) of batched crystals"
    )
    Config: ClassVar[type[ComponentConfig]] = M3GNetConfig
    consumes = "crystal"
    produces = "energy+forces+stress"
    devices = ("cpu", "cuda")
    weights = WEIGHTS

    @classmethod
    def build_model(cls, config: Any) -> torch.nn.Module:
        """A fresh :class:`M3GNet` for ``config`` (PyTorch's default initialisation, as matgl)."""
        assert isinstance(config, M3GNetConfig)
        return M3GNet(
            num_elements=len(config.elements),
            dim_node_embedding=config.dim_node_embedding,
            dim_edge_embedding=config.dim_edge_embedding,
            units=config.units,
            max_n=config.max_n,
            max_l=config.max_l,
            nblocks=config.nblocks,
            cutoff=config.cutoff,
            threebody_cutoff=config.threebody_cutoff,
            data_mean=config.data_mean,
            data_std=config.data_std,
        )

    # ------------------------------------------------------------------ loading
    def _read_checkpoint(self) -> dict[str, Any] | None:
        """matgl weights (named, or a ``matgl_model`` folder) converted to a crystal checkpoint;
        a crystal ``checkpoint`` as usual."""
        from crystal_m3gnet.matgl_format import convert_matgl, load_state, read_matgl_folder

        cfg = self.config
        assert isinstance(cfg, M3GNetConfig)
        if cfg.weights is not None:
            from crystal.weights import resolve_weights, sha256sum

            if cfg.weights not in MATGL_FOLDERS:
                raise ConfigError(f"potential {self.name!r}: unknown weights {cfg.weights!r}")
            folder = MATGL_FOLDERS[cfg.weights]
            text = resources.files("crystal_m3gnet").joinpath(f"matgl_models/{folder}.model.json").read_text("utf-8")
            path, _entry = resolve_weights(cfg.weights)
            model_json, state, where = json.loads(text), load_state(path), f"weights {cfg.weights!r}"
        elif cfg.matgl_model is not None:
            from crystal.weights import sha256sum

            model_json, state, path = read_matgl_folder(cfg.matgl_model)
            where = f"matgl model {str(cfg.matgl_model)!r}"
        else:
            return super()._read_checkpoint()
        self.checkpoint_sha256 = sha256sum(path)
        return convert_matgl(model_json, state, where=where, plugin=self.name, plugin_version=self.version)

    def _merge_config(self, ckpt: Any) -> ComponentConfig:
        from crystal.weights import merge_checkpoint_config

        return merge_checkpoint_config(self, dict(ckpt.get("config") or {}), M3GNET_RUNTIME_FIELDS, kind="potential")  # type: ignore[no-any-return]

    def checkpoint(self, metadata: Any = None) -> dict[str, Any]:
        """The crystal checkpoint of this potential (a matgl source folder is not part of it)."""
        ckpt = super().checkpoint(metadata)
        ckpt["config"].pop("matgl_model", None)
        return ckpt
