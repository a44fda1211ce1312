"""crystal-alignn: the Atomistic Line Graph Neural Network as a trainable ``crystal`` encoder.

Kept tiny on purpose: listing plugins reads ``crystal_plugin.toml`` only and must not
import torch. The component lives in :mod:`crystal_alignn.encoder`.
"""

__version__ = "0.1.0"
