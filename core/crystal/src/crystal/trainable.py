"""Trainable encoders: the contract between a model plugin and crystal's training engine.

A plugin subclasses :class:`TrainableEncoder`, declares its hyperparameters in a
:class:`EncoderConfig` subclass and implements one class method::

    @classmethod
    def build_model(cls, config, targets: TargetSet) -> torch.nn.Module: ...

The module's ``forward(batch: CrystalBatch)`` returns ``(structure_block, atom_block)``:
raw outputs of shapes ``(B, targets.structure_width)`` and ``(N, targets.atom_width)``
(either may be ``None`` when its width is 0). It receives the batch on its device with
float64 positions and builds whatever representation it needs (graphs, line graphs) there,
batched. Everything else — loading shipped weights or a checkpoint (sha256-verified,
``weights_only=True``), normalisation, prediction, saving — is done here, so that every
encoder is trained by ``crystal train`` and used by ``crystal predict`` the same way.

Checkpoint format (one ``torch.save`` dict of plain data and tensors, never a pickled
module)::

    {"format": "crystal-encoder", "format_version": 1,
     "plugin": "<encoder name>", "plugin_version": "<version>",
     "config": {<architecture hyperparameters, JSON>},
     "targets": [<TargetSpec dicts>],
     "state_dict": {"model.<...>": Tensor, "targets.mean_<t>": Tensor, ...},
     "metadata": {<training data, split, seed, metrics ...>}}
"""

from __future__ import annotations

import abc
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from crystal.batch import CrystalBatch
from crystal.components import ComponentConfig, Encoder
from crystal.errors import StructureError, WeightsError
from crystal.targets import TargetSet, TargetSpec

__all__ = [
    "CHECKPOINT_FORMAT",
    "EncoderConfig",
    "EncoderNet",
    "TrainableEncoder",
    "load_encoder_checkpoint",
]

CHECKPOINT_FORMAT = "crystal-encoder"
CHECKPOINT_VERSION = 1
_HEX64 = r"^[0-9a-f]{64}$"
#: config fields that select weights rather than describe the architecture
RUNTIME_FIELDS = frozenset({"weights", "checkpoint", "sha256"})


class EncoderConfig(ComponentConfig):
    """Base config of trainable encoders; plugins add their architecture fields."""

    weights: str | None = Field(None, description="named weights shipped with the plugin (`crystal plugins info`)")
    checkpoint: Path | None = Field(None, description="a crystal encoder checkpoint (.pt) written by `crystal train`")
    sha256: str | None = Field(
        None, pattern=_HEX64, description="expected hex sha256 of `checkpoint` (checked when given)"
    )
    targets: tuple[TargetSpec, ...] = Field(
        (TargetSpec(name="prediction"),), description="targets of a new (untrained) model"
    )
    seed: int = Field(0, description="seed of the random initialisation of a new model")


class EncoderNet(nn.Module):
    """A plugin's model and its :class:`TargetSet`: ``forward`` returns raw outputs per target."""

    def __init__(self, model: nn.Module, targets: TargetSet) -> None:
        super().__init__()
        self.model = model
        self.targets = targets

    def forward(self, batch: CrystalBatch) -> dict[str, torch.Tensor]:
        structure, atom = self.model(batch)
        return self.targets.split(structure, atom)


def load_encoder_checkpoint(
    path: Path, sha256: str | None = None, *, who: str = "encoder"
) -> tuple[dict[str, Any], str]:
    """Verify (when ``sha256`` is given) and load a crystal encoder checkpoint.

    Returns ``(checkpoint dict, actual sha256)``; raises :class:`WeightsError` on a bad
    digest, a file that is not weights-only, or a dict that is not this format.
    """
    from crystal.weights import read_checkpoint

    return read_checkpoint(path, sha256, format=CHECKPOINT_FORMAT, version=CHECKPOINT_VERSION, kind="encoder", who=who)


class TrainableEncoder(Encoder):
    """Base of encoders trained by crystal (see the module docstring for the contract)."""

    __abstract_base__ = True
    Config: ClassVar[type[ComponentConfig]] = EncoderConfig
    #: largest atomic number the model's element embedding covers
    max_atomic_number: ClassVar[int] = 100

    def __init__(self, config: Any = None, *, device: str = "auto", **overrides: Any) -> None:
        super().__init__(config, device=device, **overrides)
        if not isinstance(self.config, EncoderConfig):
            raise TypeError(f"{type(self).__qualname__}.Config must subclass crystal.trainable.EncoderConfig")
        self.checkpoint_sha256: str | None = None
        self.metadata: dict[str, Any] = {}
        ckpt = self._read_checkpoint()
        #: False for a freshly initialised model (predictions are meaningless until trained)
        self.trained = ckpt is not None
        self._warned_untrained = False
        if ckpt is not None:
            self.config = self._merge_config(ckpt)
            self.metadata = dict(ckpt.get("metadata") or {})
        cfg = self.config
        assert isinstance(cfg, EncoderConfig)
        targets = TargetSet(cfg.targets)
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
            torch.manual_seed(cfg.seed)
            self.net = EncoderNet(self.build_model(cfg, targets), targets)
        if ckpt is not None:
            try:
                self.net.load_state_dict(ckpt["state_dict"], strict=True)
            except (RuntimeError, KeyError) as exc:
                raise WeightsError(
                    f"encoder {self.name!r}: checkpoint does not match the architecture: {exc}"
                ) from None
        self.net.to(self.device).eval()

    # ----------------------------------------------------------------- plugin API
    @classmethod
    @abc.abstractmethod
    def build_model(cls, config: Any, targets: TargetSet) -> nn.Module:
        """A fresh model whose ``forward(batch)`` returns ``(structure_block, atom_block)``."""

    # ------------------------------------------------------------------ loading
    def _read_checkpoint(self) -> dict[str, Any] | None:
        from crystal.weights import read_component_checkpoint

        found = read_component_checkpoint(
            self.config,
            self.weights,
            plugin=self.name,
            format=CHECKPOINT_FORMAT,
            version=CHECKPOINT_VERSION,
            kind="encoder",
        )
        if found is None:
            return None
        ckpt, self.checkpoint_sha256 = found
        return ckpt

    def _merge_config(self, ckpt: Mapping[str, Any]) -> ComponentConfig:
        """The checkpoint's architecture + this instance's runtime fields; clashes are errors."""
        from crystal.weights import merge_checkpoint_config

        saved = dict(ckpt.get("config") or {})
        saved["targets"] = list(ckpt.get("targets") or [])
        return merge_checkpoint_config(self, saved, RUNTIME_FIELDS, kind="encoder")  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ predict
    @property
    def targets(self) -> tuple[str, ...]:
        return self.net.targets.names

    @property
    def target_set(self) -> TargetSet:
        return self.net.targets

    def check_elements(self, batch: CrystalBatch) -> None:
        """Raise :class:`StructureError` naming the elements the embedding does not cover."""
        z = batch.atomic_numbers
        bad = (z < 1) | (z > self.max_atomic_number)
        if bool(bad.any()):
            from crystal.elements import symbol

            names = ", ".join(
                f"{symbol(int(x)) if 1 <= x <= 118 else '?'} (Z={int(x)})" for x in sorted(set(z[bad].tolist()))
            )
            raise StructureError(
                f"encoder {self.name!r}: element(s) {names} are outside the model's elements (Z 1-{self.max_atomic_number})"
            )

    def predict(self, batch: CrystalBatch) -> dict[str, torch.Tensor]:
        batch = batch.to(self.device, dtype=torch.float64)
        if len(batch) == 0:
            return {s.name: torch.zeros(0, device=self.device) for s in self.net.targets.specs}
        self.check_elements(batch)
        if not self.trained and not self._warned_untrained:
            import warnings

            self._warned_untrained = True
            known = ", ".join(self.weights) or "none shipped"
            warnings.warn(
                f"encoder {self.name!r} has no trained weights (random initialisation): pass weights= "
                f"({known}) or checkpoint=, or train it with `crystal train`",
                UserWarning,
                stacklevel=2,
            )
        self.net.eval()
        with torch.no_grad():
            raw = self.net(batch)
        return self.net.targets.denormalize(raw, batch.num_atoms)

    # ------------------------------------------------------------------- saving
    def checkpoint(self, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The checkpoint dict of this encoder (see the module docstring)."""
        cfg = self.config
        arch = cfg.model_dump(mode="json", exclude=set(RUNTIME_FIELDS) | {"targets"})
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "plugin": self.name,
            "plugin_version": self.version,
            "config": arch,
            "targets": [s.model_dump(mode="json") for s in self.net.targets.specs],
            "state_dict": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            "metadata": dict(metadata if metadata is not None else self.metadata),
        }

    def save(self, path: str | os.PathLike[str], metadata: Mapping[str, Any] | None = None) -> str:
        """Write the checkpoint atomically (temporary file, then rename); returns its sha256."""
        from crystal.weights import save_checkpoint

        return save_checkpoint(self.checkpoint(metadata), path)
