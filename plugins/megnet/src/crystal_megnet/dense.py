"""Stacks of dense layers, initialised like the Keras reference (Glorot-uniform kernels,
zero biases)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from crystal_megnet.activation import softplus2

__all__ = ["DenseStack", "glorot_linear"]


def glorot_linear(in_dim: int, out_dim: int) -> nn.Linear:
    """``nn.Linear`` with Keras' default initialisation (``glorot_uniform`` kernel, zero bias)."""
    layer = nn.Linear(in_dim, out_dim)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class DenseStack(nn.Module):
    """``x → σ(x W_1 + b_1) → … → x W_L + b_L`` with σ = softplus2.

    ``activate_last`` says whether σ is also applied after the last layer: ``True`` for the
    reference code's ``Dense(..., activation=softplus2)`` stacks (pre-block layers and the
    readout's hidden layers), ``False`` for the update functions φ of a MEGNet layer, whose
    reference implementation returns the last layer's pre-activation.

    Shapes: (*, ``dims[0]``) → (*, ``dims[-1]``).
    """

    def __init__(self, dims: Sequence[int], *, activate_last: bool) -> None:
        super().__init__()
        if len(dims) < 2:
            raise ValueError("a dense stack needs an input and at least one output width")
        self.layers = nn.ModuleList(glorot_linear(a, b) for a, b in itertools.pairwise(dims))
        self.activate_last = activate_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for k, layer in enumerate(self.layers):
            x = layer(x)
            if k < last or self.activate_last:
                x = softplus2(x)
        return x
