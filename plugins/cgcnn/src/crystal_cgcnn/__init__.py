"""crystal-cgcnn: the Crystal Graph Convolutional Neural Network as a ``crystal`` encoder.

Kept tiny on purpose: listing plugins reads ``crystal_plugin.toml`` only and must not
import torch. The component lives in :mod:`crystal_cgcnn.encoder`.
"""

__version__ = "0.2.0"
