"""ALIGNN's building blocks, one module each.

* :mod:`~crystal_alignn.layers.rbf` — :class:`RBFExpansion`, Gaussian expansion of bond
  lengths and angle cosines.
* :mod:`~crystal_alignn.layers.mlp` — :class:`MLPLayer`, Linear → BatchNorm → SiLU.
* :mod:`~crystal_alignn.layers.edge_gated_conv` — :class:`EdgeGatedGraphConv`, the
  edge-gated graph convolution (on the atom graph or on the line graph).
* :mod:`~crystal_alignn.layers.alignn_conv` — :class:`ALIGNNConv`, one ALIGNN layer
  (an edge-gated convolution on each graph).
"""

from __future__ import annotations

from crystal_alignn.layers.alignn_conv import ALIGNNConv
from crystal_alignn.layers.edge_gated_conv import EdgeGatedGraphConv
from crystal_alignn.layers.mlp import MLPLayer
from crystal_alignn.layers.rbf import RBFExpansion

__all__ = ["ALIGNNConv", "EdgeGatedGraphConv", "MLPLayer", "RBFExpansion"]
