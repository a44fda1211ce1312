"""CGCNN encoder: the original published checkpoints, or a randomly initialised CGCNN.

Inputs: a :class:`~crystal.batch.CrystalBatch`. Output: ``{target: (B,) float32}``, the
denormalised regression value of each crystal (unit of the training target), or for a
classification checkpoint the probability of class 1 (``exp`` of the LogSoftmax output;
"metal" for the published ``semi-metal-classification`` model).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field, model_validator

from crystal.batch import CrystalBatch
from crystal.components import ComponentConfig, Encoder
from crystal.errors import ConfigError, StructureError, WeightsError
from crystal_cgcnn.features import derived_atom_features, load_atom_init
from crystal_cgcnn.model import CGCNN, gaussian_centres, nearest_neighbours

__all__ = ["CGCNNConfig", "CGCNNEncoder", "load_checkpoint"]

_ARCH_FIELDS = ("atom_fea_len", "n_conv", "h_fea_len", "n_h", "classification")
_HEX64 = r"^[0-9a-f]{64}$"


class CGCNNConfig(ComponentConfig):
    """Configuration of :class:`CGCNNEncoder`.

    With ``checkpoint`` (an original-format ``.pth.tar``), ``sha256`` (its hex sha256,
    checked before loading) and ``atom_init`` (the element-feature JSON it was trained
    with) are required, and the architecture comes from the checkpoint's ``args``.
    Without it the model is randomly initialised (``seed``) with the fields below and
    element features derived from element data (or ``atom_init`` if given).
    """

    checkpoint: Path | None = Field(None, description="original CGCNN checkpoint (.pth.tar)")
    sha256: str | None = Field(None, pattern=_HEX64, description="hex sha256 of `checkpoint` (required with it)")
    atom_init: Path | None = Field(None, description="atom_init.json element features (required with `checkpoint`)")
    atom_init_sha256: str | None = Field(None, pattern=_HEX64, description="optional hex sha256 of `atom_init`")
    target: str = Field("prediction", min_length=1, description="name of the predicted property")
    seed: int = Field(0, description="seed of the random initialisation (no checkpoint)")
    atom_fea_len: int = Field(64, ge=1)
    n_conv: int = Field(3, ge=0)
    h_fea_len: int = Field(128, ge=1)
    n_h: int = Field(1, ge=1)
    classification: bool = False
    radius: float = Field(8.0, gt=0, description="neighbour cutoff, Å")
    max_num_nbr: int = Field(12, ge=1, description="neighbours kept per atom")
    dmin: float = Field(0.0, ge=0, description="first Gaussian centre, Å")
    step: float = Field(0.2, gt=0, description="Gaussian spacing and width, Å")

    @model_validator(mode="after")
    def _consistent(self) -> CGCNNConfig:
        if self.checkpoint is None:
            if self.sha256 is not None:
                raise ValueError("sha256 is given but checkpoint is not")
        else:
            if self.sha256 is None:
                raise ValueError("checkpoint needs its sha256 (hex digest of the file, e.g. from `sha256sum`)")
            if self.atom_init is None:
                raise ValueError("checkpoint needs atom_init (the atom_init.json the model was trained with)")
            clash = sorted(set(_ARCH_FIELDS) & self.model_fields_set)
            if clash:
                raise ValueError(f"{', '.join(clash)} are read from the checkpoint's args; do not set them")
        if self.atom_init_sha256 is not None and self.atom_init is None:
            raise ValueError("atom_init_sha256 is given but atom_init is not")
        if self.dmin >= self.radius:
            raise ValueError("dmin must be below radius")
        return self


def _safe_globals() -> list[Any]:
    """Globals the published checkpoints need under ``weights_only=True``: the training
    ``argparse.Namespace`` (``args``) and, in ``semi-metal-classification``, a numpy float64
    scalar (``best_mae_error``) pickled as ``numpy.core.multiarray.scalar`` + its dtype."""
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    return [argparse.Namespace, (scalar, "numpy.core.multiarray.scalar"), np.dtype, type(np.dtype(np.float64))]


def load_checkpoint(path: Path, sha256: str) -> dict[str, Any]:
    """Verify and load an original CGCNN checkpoint with ``torch.load(weights_only=True)``.

    Returns ``{"args": dict, "state_dict": ..., "normalizer": {"mean", "std"}}``.
    """
    from crystal.weights import sha256sum

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"encoder 'cgcnn': checkpoint {str(path)!r} does not exist")
    actual = sha256sum(path)
    if actual != sha256:
        raise WeightsError(f"encoder 'cgcnn': checkpoint {str(path)!r} has sha256 {actual}, expected {sha256}")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"encoder 'cgcnn': cannot load checkpoint {str(path)!r}: {exc}") from None
    if not isinstance(ckpt, dict) or not {"args", "state_dict"} <= set(ckpt):
        raise WeightsError(f"encoder 'cgcnn': {str(path)!r} is not an original CGCNN checkpoint (args, state_dict)")
    args = ckpt["args"]
    args = dict(vars(args)) if isinstance(args, argparse.Namespace) else dict(args)
    norm = ckpt.get("normalizer") or {"mean": 0.0, "std": 1.0}
    return {
        "args": args,
        "state_dict": ckpt["state_dict"],
        "normalizer": {"mean": float(norm["mean"]), "std": float(norm["std"])},
    }


class CGCNNEncoder(Encoder):
    """CGCNN (Xie & Grossman, PRL 120, 145301 (2018)) property predictor."""

    name: ClassVar[str] = "cgcnn"
    version: ClassVar[str] = "0.1.0"
    Config: ClassVar[type[ComponentConfig]] = CGCNNConfig
    consumes: ClassVar[str] = "crystal"
    produces: ClassVar[str] = "properties"
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")

    def __init__(self, config: Any = None, *, device: str = "auto", **overrides: Any) -> None:
        super().__init__(config, device=device, **overrides)
        cfg = self.config
        assert isinstance(cfg, CGCNNConfig)
        self.checkpoint_sha256: str | None = None
        self.atom_init_sha256: str | None = None
        if cfg.atom_init is not None:
            from crystal.weights import sha256sum

            if not Path(cfg.atom_init).is_file():
                raise ConfigError(f"encoder 'cgcnn': atom_init {str(cfg.atom_init)!r} does not exist")
            self.atom_init_sha256 = sha256sum(Path(cfg.atom_init))
            if cfg.atom_init_sha256 is not None and cfg.atom_init_sha256 != self.atom_init_sha256:
                raise WeightsError(
                    f"encoder 'cgcnn': atom_init {str(cfg.atom_init)!r} has sha256 {self.atom_init_sha256}, "
                    f"expected {cfg.atom_init_sha256}"
                )
            table, known = load_atom_init(cfg.atom_init)
        else:
            table, known = derived_atom_features()
        centres = gaussian_centres(cfg.dmin, cfg.radius, cfg.step)
        nbr_fea_len = int(centres.numel())
        self.mean, self.std = 0.0, 1.0
        if cfg.checkpoint is not None:
            assert cfg.sha256 is not None
            ckpt = load_checkpoint(cfg.checkpoint, cfg.sha256)
            self.checkpoint_sha256 = cfg.sha256
            args = ckpt["args"]
            try:
                arch = {
                    "atom_fea_len": int(args["atom_fea_len"]),
                    "n_conv": int(args["n_conv"]),
                    "h_fea_len": int(args["h_fea_len"]),
                    "n_h": int(args["n_h"]),
                    "classification": args.get("task", "regression") == "classification",
                }
            except KeyError as exc:
                raise WeightsError(f"encoder 'cgcnn': checkpoint args lack {exc}") from None
            self.mean, self.std = ckpt["normalizer"]["mean"], ckpt["normalizer"]["std"]
            state = ckpt["state_dict"]
        else:
            arch = {k: getattr(cfg, k) for k in _ARCH_FIELDS}
            state = None
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
            torch.manual_seed(cfg.seed)
            model = CGCNN(int(table.shape[1]), nbr_fea_len, **arch)
        if state is not None:
            w = state.get("embedding.weight")
            if w is not None and w.shape[1] != table.shape[1]:
                raise ConfigError(
                    f"encoder 'cgcnn': the checkpoint expects {w.shape[1]} element features but atom_init "
                    f"{str(cfg.atom_init)!r} has {table.shape[1]}"
                )
            fc = state.get("convs.0.fc_full.weight")
            if fc is not None and fc.shape[1] != 2 * arch["atom_fea_len"] + nbr_fea_len:
                raise ConfigError(
                    f"encoder 'cgcnn': the checkpoint expects {fc.shape[1] - 2 * arch['atom_fea_len']} Gaussian "
                    f"distance features but radius/dmin/step give {nbr_fea_len}"
                )
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise WeightsError(
                    f"encoder 'cgcnn': checkpoint does not match the CGCNN architecture: {exc}"
                ) from None
        self.classification = bool(arch["classification"])
        self.model = model.to(self.device).eval()
        self.atom_table = table.to(device=self.device, dtype=torch.float32)
        self.known = known.to(self.device)
        self.centres = centres.to(self.device)

    @property
    def targets(self) -> tuple[str, ...]:
        return (self.config.target,)  # type: ignore[attr-defined]

    def _check_elements(self, z: torch.Tensor) -> None:
        zmax = self.known.numel() - 1
        bad = (z < 1) | (z > zmax)
        bad |= ~self.known[z.clamp(0, zmax)]
        if bool(bad.any()):
            from crystal.elements import symbol

            missing = sorted(set(z[bad].tolist()))
            names = ", ".join(f"{symbol(int(x)) if 1 <= x <= 118 else '?'} (Z={x})" for x in missing)
            source = "atom_init file" if self.config.atom_init is not None else "derived element features"  # type: ignore[attr-defined]
            raise StructureError(f"encoder 'cgcnn': no element features for {names} in the {source}")

    def predict(self, batch: CrystalBatch) -> dict[str, torch.Tensor]:
        cfg = self.config
        assert isinstance(cfg, CGCNNConfig)
        batch = batch.to(self.device)
        target = cfg.target
        if len(batch) == 0:
            return {target: torch.zeros(0, dtype=torch.float32, device=self.device)}
        z = batch.atomic_numbers
        self._check_elements(z)
        with torch.no_grad():
            graph = nearest_neighbours(batch.to(dtype=torch.float64), cfg.radius, cfg.max_num_nbr)
            # Gaussian expansion in float64 then float32, as the original (numpy then torch.Tensor)
            d = graph.distance.to(torch.float64)
            nbr_fea = torch.exp(-((d[..., None] - self.centres) ** 2) / cfg.step**2).to(torch.float32)
            out = self.model(self.atom_table[z], nbr_fea, graph.index, batch.batch, len(batch))
        value = out[:, 1].exp() if self.classification else out[:, 0] * self.std + self.mean
        return {target: value}
