"""What an encoder predicts: named targets, their heads' widths, normalisation and losses.

A :class:`TargetSpec` describes one property: per structure ``(B, dim)`` or per atom
``(N, dim)``, regression (``dim`` components) or classification (``num_classes`` logits).
A :class:`TargetSet` (an ``nn.Module``, so its normalisation statistics travel in the
``state_dict``) lays the targets out in two raw output blocks that a model's heads fill::

    structure block  (B, structure_width)   atom block  (N, atom_width)

and turns raw outputs into values (``denormalize``), losses and metrics. Regression targets
are standardised with the training set's mean and standard deviation per component,
``y_norm = (y - μ) / σ``, and the network predicts ``y_norm``; classification targets are
class indices ``0 … C-1`` and the network predicts logits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from crystal.config import StrictModel

__all__ = ["TargetSet", "TargetSpec"]


class TargetSpec(StrictModel):
    """One predicted property."""

    name: str = Field(min_length=1, description="property name: the data set's column / info key")
    task: Literal["regression", "classification"] = Field("regression", description="regression or classification")
    level: Literal["structure", "atom"] = Field(
        "structure", description="one value per structure (B, dim) or per atom (N, dim)"
    )
    dim: int = Field(1, ge=1, description="regression: number of components (1 = scalar)")
    num_classes: int | None = Field(None, ge=2, description="classification: number of classes (class indices 0..C-1)")
    unit: str = Field("", description="unit of the property, for reports (e.g. 'eV/atom')")
    loss: Literal["mse", "l1", "huber", "cross_entropy"] | None = Field(
        None, description="training loss; default mse for regression, cross_entropy for classification"
    )
    weight: float = Field(1.0, gt=0, description="weight of this target's loss in the total loss")
    normalize: bool = Field(True, description="regression: standardise with the training set's mean and std")
    extensive: bool = Field(
        False,
        description="structure-level regression whose value scales with the number of atoms N (e.g. total "
        "energy, eV): the network predicts the per-atom value y/N (standardised over the training set) and "
        "predictions are multiplied by N, so supercells scale exactly",
    )

    @model_validator(mode="after")
    def _check(self) -> TargetSpec:
        if self.task == "classification":
            if self.num_classes is None:
                object.__setattr__(self, "num_classes", 2)
            if self.dim != 1:
                raise ValueError("classification targets are scalar class indices (dim must be 1)")
            if self.loss not in (None, "cross_entropy"):
                raise ValueError(f"classification targets use the cross_entropy loss, not {self.loss!r}")
        else:
            if self.num_classes is not None:
                raise ValueError("num_classes is only for classification targets")
            if self.loss == "cross_entropy":
                raise ValueError("cross_entropy is only for classification targets")
        if self.extensive and (self.task != "regression" or self.level != "structure"):
            raise ValueError("extensive applies to structure-level regression targets only")
        return self

    @property
    def width(self) -> int:
        """Raw output columns: ``dim`` (regression) or ``num_classes`` (classification)."""
        return int(self.num_classes) if self.task == "classification" else self.dim  # type: ignore[arg-type]

    @property
    def loss_name(self) -> str:
        return self.loss or ("cross_entropy" if self.task == "classification" else "mse")


class TargetSet(nn.Module):
    """The targets of one model, with normalisation buffers ``mean``/``std`` per target."""

    def __init__(self, specs: Sequence[TargetSpec | Mapping[str, object]]) -> None:
        super().__init__()
        parsed = [s if isinstance(s, TargetSpec) else TargetSpec.model_validate(s) for s in specs]
        if not parsed:
            raise ValueError("at least one target is needed")
        names = [s.name for s in parsed]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate target names: {', '.join(dup)}")
        self.specs: tuple[TargetSpec, ...] = tuple(parsed)
        self._slices: dict[str, tuple[str, slice]] = {}
        offsets = {"structure": 0, "atom": 0}
        for s in self.specs:
            start = offsets[s.level]
            self._slices[s.name] = (s.level, slice(start, start + s.width))
            offsets[s.level] = start + s.width
            if s.task == "regression":
                self.register_buffer(f"mean_{s.name}", torch.zeros(s.dim))
                self.register_buffer(f"std_{s.name}", torch.ones(s.dim))
        self.structure_width = offsets["structure"]
        self.atom_width = offsets["atom"]

    # ------------------------------------------------------------------ layout
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    def __getitem__(self, name: str) -> TargetSpec:
        for s in self.specs:
            if s.name == name:
                return s
        raise KeyError(name)

    def split(self, structure: torch.Tensor | None, atom: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Cut the raw blocks ``(B, structure_width)`` / ``(N, atom_width)`` into ``{name: (·, width)}``."""
        out: dict[str, torch.Tensor] = {}
        for name, (level, sl) in self._slices.items():
            block = structure if level == "structure" else atom
            if block is None:
                raise ValueError(f"the model produced no {level} outputs but target {name!r} needs them")
            out[name] = block[:, sl]
        return out

    # ------------------------------------------------------------- statistics
    def stats(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"mean_{name}"), getattr(self, f"std_{name}")

    def fit_normalizer(self, values: Mapping[str, torch.Tensor], num_atoms: torch.Tensor | None = None) -> None:
        """Set mean/std of every normalised regression target from training values ``(M, dim)``
        (of ``y/N`` for extensive targets, which need ``num_atoms`` (M,))."""
        for s in self.specs:
            if s.task != "regression" or not s.normalize:
                continue
            v = self._per_atom(s, values[s.name].reshape(-1, s.dim).to(torch.float64), num_atoms)
            mean = v.mean(0)
            std = v.std(0, unbiased=False) if v.shape[0] > 1 else torch.ones_like(mean)
            std = torch.where(std > 1e-12, std, torch.ones_like(std))
            m, sd = self.stats(s.name)
            m.copy_(mean.to(m.dtype))
            sd.copy_(std.to(sd.dtype))

    @staticmethod
    def _per_atom(s: TargetSpec, y: torch.Tensor, num_atoms: torch.Tensor | None) -> torch.Tensor:
        if not s.extensive:
            return y
        if num_atoms is None:
            raise ValueError(f"target {s.name!r} is extensive: num_atoms is needed")
        return y / num_atoms.to(y.dtype)[:, None]

    def normalize(self, name: str, y: torch.Tensor, num_atoms: torch.Tensor | None = None) -> torch.Tensor:
        """Raw-output scale of values ``y`` (standardised; per atom for extensive targets)."""
        s = self[name]
        if s.task != "regression":
            return y
        m, sd = self.stats(name)
        return (self._per_atom(s, y.reshape(-1, s.dim), num_atoms) - m) / sd

    def denormalize(
        self, raw: Mapping[str, torch.Tensor], num_atoms: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Values in the target's unit: regression ``(·,)`` or ``(·, dim)`` (times ``N`` for
        extensive targets, which need ``num_atoms`` (B,)); classification probabilities ``(·,)``
        of class 1 when binary, else ``(·, C)``."""
        out: dict[str, torch.Tensor] = {}
        for s in self.specs:
            r = raw[s.name]
            if s.task == "regression":
                m, sd = self.stats(s.name)
                v = r * sd.to(r.dtype) + m.to(r.dtype)
                if s.extensive:
                    if num_atoms is None:
                        raise ValueError(f"target {s.name!r} is extensive: num_atoms is needed")
                    v = v * num_atoms.to(v.dtype)[:, None]
                out[s.name] = v[:, 0] if s.dim == 1 else v
            else:
                p = torch.softmax(r, dim=-1)
                out[s.name] = p[:, 1] if s.num_classes == 2 else p
        return out

    # ------------------------------------------------------------------ losses
    def loss(
        self,
        raw: Mapping[str, torch.Tensor],
        truth: Mapping[str, torch.Tensor],
        num_atoms: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted total loss and the per-target losses (on normalised values / logits;
        extensive targets need ``num_atoms`` (B,))."""
        import torch.nn.functional as F

        parts: dict[str, torch.Tensor] = {}
        total: torch.Tensor | None = None
        for s in self.specs:
            r = raw[s.name]
            if s.task == "classification":
                part = F.cross_entropy(r, truth[s.name].reshape(-1).long())
            else:
                y = self.normalize(s.name, truth[s.name].to(r.dtype), num_atoms)
                if s.loss_name == "l1":
                    part = F.l1_loss(r, y)
                elif s.loss_name == "huber":
                    part = F.huber_loss(r, y)
                else:
                    part = F.mse_loss(r, y)
            parts[s.name] = part
            total = part * s.weight if total is None else total + part * s.weight
        assert total is not None
        return total, parts

    def metrics(self, values: Mapping[str, torch.Tensor], truth: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """``{name_mae, name_rmse}`` (regression, target unit) or ``{name_accuracy}``."""
        out: dict[str, float] = {}
        for s in self.specs:
            v, t = values[s.name], truth[s.name]
            if s.task == "regression":
                err = v.reshape(-1, s.dim).to(torch.float64) - t.reshape(-1, s.dim).to(torch.float64)
                out[f"{s.name}_mae"] = float(err.abs().mean()) if err.numel() else math.nan
                out[f"{s.name}_rmse"] = float(err.pow(2).mean().sqrt()) if err.numel() else math.nan
            else:
                pred = (v > 0.5).long() if s.num_classes == 2 and v.dim() == 1 else v.argmax(-1)
                out[f"{s.name}_accuracy"] = (
                    float((pred == t.reshape(-1).long()).double().mean()) if t.numel() else math.nan
                )
        return out

    def extra_repr(self) -> str:
        return ", ".join(f"{s.name}:{s.task}/{s.level}/{s.width}" for s in self.specs)
