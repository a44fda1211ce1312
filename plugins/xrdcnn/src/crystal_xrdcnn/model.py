"""The 1D CNN: a convolutional trunk on the powder pattern and three classification heads.

After Park et al., IUCrJ 4, 486 (2017): the pattern is read as a 1D image by stacked
convolution + max-pooling blocks, followed by fully connected layers with dropout and a
softmax per task.  Shapes, for ``B`` patterns of ``L`` points (L = ``input_points``)::

    x (B, L) → transform (sqrt of the max-normalised pattern) → (B, 1, L)
    → AvgPool(input_pool)                                   (B, 1, L / input_pool)
    → [Conv1d(c_{i-1}→c_i, k_i, 'same') → (BatchNorm) → ReLU → MaxPool(p)] × 4     (B, c_4, L')
    → flatten → Linear(c_4 L' → hidden) → ReLU → Dropout     (B, hidden)
    → heads: Linear(hidden → 7), Linear(hidden → 112), Linear(hidden → 230) logits

Loss: the sum of the three cross-entropies (``training_loss``), so one trunk serves all
heads (Park et al. trained one network per task).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from crystal.config import StrictModel
from crystal_xrdcnn.labels import HEADS

__all__ = ["XRDCNN", "NetConfig"]


class NetConfig(StrictModel):
    """Architecture (stored with the weights)."""

    input_points: int = Field(4251, ge=16, description="pattern length L (points on the 2θ grid)")
    input_pool: int = Field(2, ge=1, description="average-pooling factor applied to the input (points)")
    transform: Literal["none", "sqrt"] = Field(
        "sqrt", description="input transform of the max-normalised pattern ('sqrt' lifts weak peaks)"
    )
    channels: tuple[int, ...] = Field((16, 32, 64, 64), description="output channels of each conv block")
    kernels: tuple[int, ...] = Field((35, 25, 15, 9), description="kernel size of each conv block (points)")
    pool: int = Field(3, ge=1, description="max-pooling size and stride after each conv block (points)")
    batch_norm: bool = Field(False, description="BatchNorm1d after each convolution (not in Park et al.)")
    hidden: int = Field(256, ge=1, description="width of the fully connected layer")
    dropout: float = Field(0.5, ge=0, lt=1, description="dropout probability before the heads")
    classes: tuple[int, int, int] = Field(
        (7, 112, 230), description="classes of crystal system, extinction, space group"
    )


class XRDCNN(nn.Module):
    """Trunk + three heads; ``forward`` returns logits per head (see the module docstring)."""

    def __init__(self, config: NetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or NetConfig()
        if len(cfg.channels) != len(cfg.kernels):
            raise ValueError("channels and kernels must have the same length")
        layers: list[nn.Module] = [nn.AvgPool1d(cfg.input_pool)] if cfg.input_pool > 1 else []
        length = cfg.input_points // cfg.input_pool
        c_in = 1
        for c, k in zip(cfg.channels, cfg.kernels, strict=True):
            layers.append(nn.Conv1d(c_in, c, k, padding=k // 2))
            if cfg.batch_norm:
                layers.append(nn.BatchNorm1d(c))
            layers += [nn.ReLU(), nn.MaxPool1d(cfg.pool)]
            length = (length + 2 * (k // 2) - k + 1) // cfg.pool
            c_in = c
        self.trunk = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(c_in * length, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout))
        self.heads = nn.ModuleDict({h: nn.Linear(cfg.hidden, n) for h, n in zip(HEADS, cfg.classes, strict=True)})

    def prepare(self, signals: torch.Tensor) -> torch.Tensor:
        """(B, L) patterns → (B, 1, L) network input (max-normalised, transformed)."""
        x = signals.to(next(self.parameters()).dtype)
        x = x / x.amax(dim=1, keepdim=True).clamp_min(1e-12)
        x = x.clamp_min(0.0)
        if self.config.transform == "sqrt":
            x = torch.sqrt(x)
        return x[:, None, :]

    def forward(self, signals: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.fc(self.trunk(self.prepare(signals)))
        return {h: head(z) for h, head in self.heads.items()}

    def training_loss(self, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """``batch = (signals (B, L), crystal_system (B,), extinction_group (B,), space_group (B,))``."""
        signals, *targets = batch
        logits = self(signals)
        out: dict[str, torch.Tensor] = {}
        total = signals.new_zeros(())
        for (head, y), t in zip(logits.items(), targets, strict=True):
            ce = nn.functional.cross_entropy(y, t)
            total = total + ce
            out[f"{head}_acc"] = (y.argmax(dim=1) == t).float().mean()
        out["loss"] = total
        return out
