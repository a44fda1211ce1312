"""crystal-megnet: the MatErials Graph Network (MEGNet) as a trainable ``crystal`` encoder.

Kept tiny on purpose: listing plugins reads ``crystal_plugin.toml`` only and must not
import torch. The component lives in :mod:`crystal_megnet.encoder`, the network in
:mod:`crystal_megnet.model` and its layers in :mod:`crystal_megnet.graph_network`,
:mod:`crystal_megnet.set2set`, :mod:`crystal_megnet.dense` and :mod:`crystal_megnet.activation`.
"""

__version__ = "0.1.0"
