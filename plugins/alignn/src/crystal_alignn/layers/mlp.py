"""ALIGNN's MLP layer: Linear → BatchNorm → SiLU."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MLPLayer"]


class MLPLayer(nn.Module):
    """:math:`\\mathrm{SiLU}(\\mathrm{BN}(W x + b))` (the reference ``MLPLayer``).

    Used for the atom embedding and the two-layer bond and angle embeddings.

    Shapes: ``x`` (M, in_features) → (M, out_features).
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(nn.Linear(in_features, out_features), nn.BatchNorm1d(out_features), nn.SiLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.layer(x)
        return out
