"""CGCNN as a crystal :class:`~crystal.trainable.TrainableEncoder`.

Three ways to get a model, all through ``CGCNNEncoder(...)``:

* a new, randomly initialised CGCNN (``seed``) with the paper's defaults and the targets in
  ``targets`` (or one target named ``target``), to be trained;
* a crystal checkpoint (``checkpoint``, written by ``save()`` / ``crystal train``);
* an **original** CGCNN checkpoint (``.pth.tar`` of ``txie-93/cgcnn``: a dict with ``args``,
  ``state_dict``, ``normalizer``), detected automatically (no ``format="crystal-encoder"``),
  with its ``sha256`` and the ``atom_init`` JSON it was trained with. It becomes a normal
  trainable encoder: its architecture comes from ``args``, the weights load unchanged into
  ``net.model``, its normaliser becomes the target's mean/std, a classification model a
  2-class classification target; ``save()`` writes it in crystal format.

Output of ``predict``: ``{target: (B,) or (B, dim) or (N, ...)}`` — denormalised regression
values (unit of the training target) or, for binary classification, the probability of
class 1 ("metal" for the published ``semi-metal-classification`` model).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from crystal.batch import CrystalBatch
from crystal.components import ComponentConfig
from crystal.errors import ConfigError, StructureError, WeightsError
from crystal.manifest import NamedWeights, WeightsManifest
from crystal.targets import TargetSet, TargetSpec
from crystal.trainable import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, RUNTIME_FIELDS, EncoderConfig, TrainableEncoder
from crystal_cgcnn.features import derived_atom_features, load_atom_init
from crystal_cgcnn.model import CGCNN, gaussian_centres

__all__ = ["CGCNNConfig", "CGCNNEncoder", "load_original_checkpoint"]

_WHO = "encoder 'cgcnn'"
_HEX64 = r"^[0-9a-f]{64}$"
#: architecture fields read from an original checkpoint's ``args``
_ORIGINAL_ARCH = ("atom_fea_len", "n_conv", "h_fea_len", "n_h")
#: config fields that are run-time choices, not architecture: never saved, never clash with a checkpoint
_RUNTIME = frozenset({"neighbor_order"})


#: the named weights this component ships (declared once: `crystal plugins manifest --write`
#: copies them into crystal_plugin.toml, the config's `weights` field accepts exactly these names)
WEIGHTS = NamedWeights(
    WeightsManifest(
        name="cgcnn-perov5-heat-ref",
        file="package:crystal_cgcnn/weights/cgcnn-perov5-heat-ref.pt",
        sha256="ff6fa6bf93efe82a16cd269a45da6a3be10eba6ccb07776d56f5e8547dda9443",
        licence="MIT",
        training_data=(
            "Perov-5 (CDVAE splits): val.csv: 3408 structures for training + 379 held out for model selection "
            "(seed 0), tested on test.csv (3785)"
        ),
        description=(
            "CGCNN (paper defaults) predicting heat_ref, the heat of formation of the 5-atom perovskite cell "
            "(eV); 200 epochs (best 149), 80,897 parameters; model card: weights/cgcnn-perov5-heat-ref.md"
        ),
        metrics={
            "test_heat_ref_mae_eV": 0.073,
            "test_heat_ref_rmse_eV": 0.10444,
            "val_heat_ref_mae_eV": 0.06719,
            "val_heat_ref_rmse_eV": 0.08967,
        },
    ),
    WeightsManifest(
        name="cgcnn-carbon24-energy",
        file="package:crystal_cgcnn/weights/cgcnn-carbon24-energy.pt",
        sha256="654a78ed3921c691c72a46ba2af0ca30d54065fb71440918574dea2f804a7302",
        licence="MIT",
        training_data=(
            "Carbon-24 (CDVAE splits): val.csv: 1829 structures for training + 203 held out for model selection "
            "(seed 0), tested on test.csv (2030)"
        ),
        description=(
            "CGCNN (paper defaults) predicting energy_per_atom of carbon polymorphs (eV/atom); BatchNorm "
            "statistics recomputed before each validation; 150 epochs (best 133), 80,897 parameters; model card: "
            "weights/cgcnn-carbon24-energy.md"
        ),
        metrics={
            "test_energy_per_atom_mae_eV_per_atom": 0.01097,
            "test_energy_per_atom_rmse_eV_per_atom": 0.01954,
            "val_energy_per_atom_mae_eV_per_atom": 0.01178,
            "val_energy_per_atom_rmse_eV_per_atom": 0.01955,
        },
    ),
)


class CGCNNConfig(EncoderConfig):
    """Hyperparameters of :class:`CGCNNEncoder` (defaults: Xie & Grossman 2018 / the original code).

    ``weights`` takes the names of :data:`WEIGHTS`. Inherited: ``checkpoint`` (a crystal
    checkpoint *or* an original CGCNN ``.pth.tar``, detected from its content), ``sha256``
    (required for an original checkpoint), ``targets``, ``seed``.
    """

    weights: Annotated[str, WEIGHTS] | None = Field(
        None, description="named weights shipped with the plugin (`crystal plugins info`)"
    )

    atom_init: Path | None = Field(
        None,
        description='element-feature JSON {"Z": [floats]} (the original atom_init.json, 92 features); required '
        "with an original checkpoint; default: features derived from element data (93, Z 1-100)",
    )
    atom_init_sha256: str | None = Field(None, pattern=_HEX64, description="expected hex sha256 of `atom_init`")
    target: str | None = Field(
        None,
        min_length=1,
        description="name of the single target (shortcut for targets=[{name=...}]); for an original checkpoint "
        "the name of its property (default 'prediction')",
    )
    atom_fea_len: int = Field(64, ge=1, description="hidden atom feature width F (dimensionless)")
    n_conv: int = Field(3, ge=0, description="number of convolution layers")
    h_fea_len: int = Field(128, ge=1, description="hidden width after pooling")
    n_h: int = Field(1, ge=1, description="number of hidden layers after pooling (conv_to_fc + n_h - 1 fcs)")
    dropout: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="dropout probability on the pooled features after conv_to_fc (training only); default: "
        "0.5 if a structure target is a classification, else 0 (as the original)",
    )
    radius: float = Field(8.0, gt=0, description="neighbour cutoff, Å")
    max_num_nbr: int = Field(12, ge=1, description="neighbours kept per atom (the nearest ones)")
    dmin: float = Field(0.0, ge=0, description="first Gaussian centre, Å")
    step: float = Field(0.2, gt=0, description="Gaussian spacing and width σ, Å")
    neighbor_order: Literal["batched", "reference"] = Field(
        "batched",
        description="how each atom's max_num_nbr neighbours are chosen among neighbours at equal distance: "
        "'batched' (one batched search for the whole batch, ties by neighbour index; fast) or 'reference' "
        "(pymatgen's get_all_neighbors order + stable distance sort, crystal by crystal, exactly as the "
        "original code; reproduces its predictions on cells with equidistant neighbours, e.g. ideal cubic "
        "perovskites). A runtime choice: not stored in checkpoints",
    )

    @model_validator(mode="after")
    def _consistent(self) -> CGCNNConfig:
        if self.atom_init_sha256 is not None and self.atom_init is None:
            raise ValueError("atom_init_sha256 is given but atom_init is not")
        if self.checkpoint is not None and self.atom_init is not None and self.sha256 is None:
            raise ValueError(
                "atom_init with a checkpoint is for an original CGCNN checkpoint (.pth.tar), which needs its sha256 "
                "(hex digest of the file, e.g. from `sha256sum`); a crystal checkpoint carries its element features"
            )
        if self.dmin >= self.radius:
            raise ValueError("dmin must be below radius")
        if self.target is not None:
            if "targets" in self.model_fields_set:
                if tuple(s.name for s in self.targets) != (self.target,):
                    raise ValueError("give either target (one target's name) or targets, not both")
            else:
                object.__setattr__(self, "targets", (TargetSpec(name=self.target),))
        return self


def _dropout(config: CGCNNConfig, targets: TargetSet) -> float:
    if config.dropout is not None:
        return config.dropout
    classify = any(s.task == "classification" and s.level == "structure" for s in targets.specs)
    return 0.5 if classify else 0.0


def element_table(config: CGCNNConfig) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """``(features (Zmax + 1, D) float64, known (Zmax + 1,) bool, provenance)`` for ``config``."""
    if config.atom_init is None:
        table, known = derived_atom_features()
        return table, known, {"source": "derived (crystal.element_features.derived_atom_features)"}
    from crystal.weights import sha256sum

    path = Path(config.atom_init)
    if not path.is_file():
        raise ConfigError(f"{_WHO}: atom_init {str(path)!r} does not exist")
    digest = sha256sum(path)
    if config.atom_init_sha256 is not None and config.atom_init_sha256 != digest:
        raise WeightsError(f"{_WHO}: atom_init {str(path)!r} has sha256 {digest}, expected {config.atom_init_sha256}")
    table, known = load_atom_init(path)
    return table, known, {"source": "atom_init", "path": str(path), "sha256": digest}


# ------------------------------------------------------------------ original checkpoints
def _safe_globals() -> list[Any]:
    """Globals the published checkpoints need under ``weights_only=True``: the training
    ``argparse.Namespace`` (``args``) and, in ``semi-metal-classification``, a numpy float64
    scalar (``best_mae_error``) pickled as ``numpy.core.multiarray.scalar`` + its dtype."""
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    return [argparse.Namespace, (scalar, "numpy.core.multiarray.scalar"), np.dtype, type(np.dtype(np.float64))]


def _load_any(path: Path, sha256: str | None) -> tuple[Any, str]:
    """Verify (when ``sha256`` is given) and load ``path`` weights-only; returns ``(object, digest)``."""
    from crystal.weights import refused_pickle_message, sha256sum

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{_WHO}: checkpoint {str(path)!r} does not exist")
    digest = sha256sum(path)
    if sha256 is not None and digest != sha256:
        raise WeightsError(f"{_WHO}: checkpoint {str(path)!r} has sha256 {digest}, expected {sha256}")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{_WHO}: {refused_pickle_message(path, exc)}") from None
    return obj, digest


def _is_original(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") != CHECKPOINT_FORMAT and {"args", "state_dict"} <= set(obj)


def load_original_checkpoint(path: Path, sha256: str | None) -> dict[str, Any]:
    """Verify and load an original CGCNN checkpoint with ``torch.load(weights_only=True)``.

    Returns ``{"args": dict, "state_dict": ..., "normalizer": {"mean", "std"}, "sha256": str}``.
    """
    obj, digest = _load_any(path, sha256)
    if not _is_original(obj):
        raise WeightsError(f"{_WHO}: {str(path)!r} is not an original CGCNN checkpoint (args, state_dict)")
    return _parse_original(obj, digest)


def _parse_original(obj: dict[str, Any], digest: str) -> dict[str, Any]:
    args = obj["args"]
    args = dict(vars(args)) if isinstance(args, argparse.Namespace) else dict(args)
    norm = obj.get("normalizer") or {"mean": 0.0, "std": 1.0}
    return {
        "args": args,
        "state_dict": obj["state_dict"],
        "normalizer": {"mean": float(norm["mean"]), "std": float(norm["std"])},
        "epoch": obj.get("epoch"),
        "best_mae_error": None if obj.get("best_mae_error") is None else float(obj["best_mae_error"]),
        "sha256": digest,
    }


class CGCNNEncoder(TrainableEncoder):
    """CGCNN (Xie & Grossman, PRL 120, 145301 (2018)): trainable, or from original checkpoints."""

    name: ClassVar[str] = "cgcnn"
    version: ClassVar[str] = "0.2.0"
    description = (
        "CGCNN property predictor, trainable (structure-level regression/classification and per-atom targets, "
        "paper defaults); also loads the original published checkpoints (.pth.tar + atom_init.json) and "
        "reproduces their predictions"
    )
    Config: ClassVar[type[ComponentConfig]] = CGCNNConfig
    consumes: ClassVar[str] = "crystal"
    produces: ClassVar[str] = "properties"
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")

    @property
    def graph_cutoff(self) -> float:
        """The neighbour radius (Å): crystals with an isolated atom are reported, not predicted."""
        return float(self.config.radius)  # type: ignore[attr-defined]

    #: weights trained by us and shipped in the package (model cards in crystal_cgcnn/weights/)
    weights: ClassVar[tuple[str, ...]] = WEIGHTS

    config: CGCNNConfig

    def __init__(self, config: Any = None, *, device: str = "auto", **overrides: Any) -> None:
        self._from_crystal_checkpoint = False
        super().__init__(config, device=device, **overrides)
        cfg = self.config
        if self._from_crystal_checkpoint:
            self.element_features_info: dict[str, Any] = dict(
                self.metadata.get("element_features") or {"source": "crystal checkpoint"}
            )
        else:
            self.element_features_info = element_table(cfg)[2]
        #: sha256 of the atom_init file in use (None: derived features or a crystal checkpoint)
        self.atom_init_sha256: str | None = self.element_features_info.get("sha256") if cfg.atom_init else None

    # ------------------------------------------------------------------ model
    @classmethod
    def build_model(cls, config: Any, targets: TargetSet) -> nn.Module:
        assert isinstance(config, CGCNNConfig)
        table, known, _ = element_table(config)
        return CGCNN(
            table,
            known,
            atom_fea_len=config.atom_fea_len,
            n_conv=config.n_conv,
            h_fea_len=config.h_fea_len,
            n_h=config.n_h,
            radius=config.radius,
            max_num_nbr=config.max_num_nbr,
            dmin=config.dmin,
            step=config.step,
            dropout=_dropout(config, targets),
            structure_width=targets.structure_width,
            atom_width=targets.atom_width,
            neighbor_order=config.neighbor_order,
        )

    # ---------------------------------------------------------------- loading
    def _read_checkpoint(self) -> dict[str, Any] | None:
        """Crystal checkpoints go to the base class; original ones are converted to that format."""
        cfg = self.config
        assert isinstance(cfg, CGCNNConfig)
        if cfg.checkpoint is None or cfg.weights is not None:
            self._from_crystal_checkpoint = cfg.weights is not None and cfg.checkpoint is None
            return super()._read_checkpoint()
        obj, digest = _load_any(Path(cfg.checkpoint), cfg.sha256)
        if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
            self._from_crystal_checkpoint = True
            return super()._read_checkpoint()
        if not _is_original(obj):
            raise WeightsError(
                f"{_WHO}: {str(cfg.checkpoint)!r} is neither a crystal encoder checkpoint (format="
                f"{CHECKPOINT_FORMAT!r}) nor an original CGCNN checkpoint (a dict with args and state_dict)"
            )
        missing = [f for f in ("sha256", "atom_init") if getattr(cfg, f) is None]
        if missing:
            raise ConfigError(
                f"{_WHO}: {str(cfg.checkpoint)!r} is an original CGCNN checkpoint, which needs "
                f"{' and '.join(missing)} (sha256: hex digest of the file; atom_init: the atom_init.json the "
                "model was trained with)"
            )
        self.checkpoint_sha256 = digest
        return self._convert_original(_parse_original(obj, digest))

    def _merge_config(self, ckpt: dict[str, Any]) -> ComponentConfig:
        """As the base class, with ``neighbor_order`` a runtime field (any checkpoint runs in
        either mode; the saved value, if any, is ignored)."""
        from crystal.weights import merge_checkpoint_config

        saved = dict(ckpt.get("config") or {})
        saved.pop("neighbor_order", None)
        saved["targets"] = list(ckpt.get("targets") or [])
        return merge_checkpoint_config(self, saved, RUNTIME_FIELDS | _RUNTIME, kind="encoder")  # type: ignore[no-any-return]

    def _original_target(self, task: str) -> TargetSpec:
        cfg = self.config
        expected = TargetSpec(name=cfg.target or "prediction", task=task)  # type: ignore[arg-type]
        if "targets" not in cfg.model_fields_set:
            return expected
        specs = cfg.targets
        ok = (
            len(specs) == 1
            and specs[0].level == "structure"
            and specs[0].task == task
            and specs[0].width == expected.width
        )
        if not ok:
            raise ConfigError(
                f"{_WHO}: the original checkpoint {str(cfg.checkpoint)!r} predicts one structure-level {task} "
                f"target (width {expected.width}); targets must describe exactly that, or give only `target`"
            )
        return specs[0]

    def _convert_original(self, orig: dict[str, Any]) -> dict[str, Any]:
        """An original checkpoint as a crystal-format checkpoint dict (see crystal.trainable)."""
        cfg = self.config
        assert isinstance(cfg, CGCNNConfig)
        args = orig["args"]
        try:
            arch = {k: int(args[k]) for k in _ORIGINAL_ARCH}
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightsError(f"{_WHO}: original checkpoint args lack or garble {exc}") from None
        if args.get("enable_tanh"):
            raise WeightsError(f"{_WHO}: original checkpoints with enable_tanh are not supported")
        task = str(args.get("task", "regression"))
        if task not in ("regression", "classification"):
            raise WeightsError(f"{_WHO}: original checkpoint has unknown task {task!r}")
        spec = self._original_target(task)
        table, known, info = element_table(cfg)
        state = {f"model.{k}": v for k, v in orig["state_dict"].items()}
        w = state.get("model.embedding.weight")
        if w is not None and w.shape[1] != table.shape[1]:
            raise ConfigError(
                f"{_WHO}: the checkpoint expects {w.shape[1]} element features but atom_init "
                f"{str(cfg.atom_init)!r} has {table.shape[1]}"
            )
        nbr_fea_len = int(gaussian_centres(cfg.dmin, cfg.radius, cfg.step).numel())
        fc = state.get("model.convs.0.fc_full.weight")
        if fc is not None and fc.shape[1] != 2 * arch["atom_fea_len"] + nbr_fea_len:
            raise ConfigError(
                f"{_WHO}: the checkpoint expects {fc.shape[1] - 2 * arch['atom_fea_len']} Gaussian distance "
                f"features but radius/dmin/step give {nbr_fea_len}"
            )
        state["model.element_features"] = table.to(torch.get_default_dtype())
        state["model.element_known"] = known
        if spec.task == "regression":
            state[f"targets.mean_{spec.name}"] = torch.tensor([orig["normalizer"]["mean"]])
            state[f"targets.std_{spec.name}"] = torch.tensor([orig["normalizer"]["std"]])
        config = cfg.model_dump(mode="json", exclude=set(RUNTIME_FIELDS) | {"targets"})
        config.update(arch, atom_init_sha256=info["sha256"], target=spec.name)
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "plugin": self.name,
            "plugin_version": self.version,
            "config": config,
            "targets": [spec.model_dump(mode="json")],
            "state_dict": state,
            "metadata": {
                "source": "original CGCNN checkpoint (txie-93/cgcnn)",
                "original_checkpoint": str(cfg.checkpoint),
                "original_sha256": orig["sha256"],
                "original_args": {k: v for k, v in args.items() if isinstance(v, (int, float, str, bool, list))},
                "original_epoch": orig["epoch"],
                "original_best_mae_error": orig["best_mae_error"],
                "element_features": info,
            },
        }

    # ----------------------------------------------------------------- saving
    def checkpoint(self, metadata: Any = None) -> dict[str, Any]:
        """The crystal checkpoint: self-contained, the element features travel in the state
        dict (``model.element_features``), so ``atom_init`` is not needed to load it; where
        they came from is recorded in ``metadata["element_features"]``."""
        ckpt = super().checkpoint(metadata)
        for key in _RUNTIME:
            ckpt["config"].pop(key, None)
        ckpt["config"]["atom_init"] = None
        ckpt["config"]["atom_init_sha256"] = None
        ckpt["metadata"].setdefault("element_features", dict(self.element_features_info))
        return ckpt

    # ------------------------------------------------------------------ predict
    def check_elements(self, batch: CrystalBatch) -> None:
        """Raise :class:`StructureError` naming the elements without element features."""
        known = self.net.model.element_known
        z = batch.atomic_numbers.to(known.device)
        zmax = known.numel() - 1
        bad = (z < 1) | (z > zmax)
        bad |= ~known[z.clamp(0, zmax)]
        if bool(bad.any()):
            from crystal.elements import symbol

            missing = sorted(set(z[bad].tolist()))
            names = ", ".join(f"{symbol(int(x)) if 1 <= x <= 118 else '?'} (Z={x})" for x in missing)
            source = self.element_features_info.get("source", "element features")
            raise StructureError(f"{_WHO}: no element features for {names} (element features: {source})")
