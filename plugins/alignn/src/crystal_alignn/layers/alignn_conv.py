"""One ALIGNN layer: an edge-gated graph convolution on the atom graph and one on its line graph."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from crystal_alignn.layers.edge_gated_conv import EdgeGatedGraphConv

__all__ = ["ALIGNNConv", "LayerOrder"]

LayerOrder = Literal["atom-then-line", "line-then-atom"]


class ALIGNNConv(nn.Module):
    """ALIGNN layer on atom features ``x``, bond features ``y`` and angle features ``z``.

    ``"atom-then-line"`` (the reference implementation, ``ALIGNNConv.forward``)::

        x', m  = EGGC_g(x, y)          # atom graph g: atoms updated, bond messages m
        y', z' = EGGC_L(g)(m, z)       # line graph L(g): bonds and angles updated

    ``"line-then-atom"`` (the order the paper and the reference README describe)::

        m, z'  = EGGC_L(g)(y, z)
        x', y' = EGGC_g(x, m)

    Both convolutions are residual :class:`EdgeGatedGraphConv` of width ``F``.

    Shapes: ``x`` (N, F), ``y`` (E, F), ``z`` (T, F), ``edge_index`` (2, E) atoms,
    ``line_index`` (2, T) bonds → ``(x', y', z')`` of the same shapes.
    """

    def __init__(self, features: int, order: LayerOrder = "atom-then-line", normalize_gates: bool = True) -> None:
        super().__init__()
        self.order = order
        self.node_update = EdgeGatedGraphConv(features, features, normalize_gates=normalize_gates)
        self.edge_update = EdgeGatedGraphConv(features, features, normalize_gates=normalize_gates)

    def forward(
        self,
        edge_index: torch.Tensor,
        line_index: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        z: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.order == "atom-then-line":
            x, m = self.node_update(edge_index, x, y)
            y, z = self.edge_update(line_index, m, z)
        else:
            m, z = self.edge_update(line_index, y, z)
            x, y = self.node_update(edge_index, x, m)
        return x, y, z

    def extra_repr(self) -> str:
        return f"order={self.order!r}"
