"""crystal-chgnet: the CHGNet universal potential as a ``crystal`` potential plugin.

Kept tiny on purpose: listing plugins reads ``crystal_plugin.toml`` only and must not
import torch or chgnet. The component lives in :mod:`crystal_chgnet.potential`.
"""

__version__ = "0.1.0"
