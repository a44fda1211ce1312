"""crystal-sevennet: the SevenNet-0 universal potential as a ``crystal`` potential plugin.

Kept tiny on purpose: listing plugins reads ``crystal_plugin.toml`` only and must not
import torch or sevenn. The component lives in :mod:`crystal_sevennet.potential`.
"""

__version__ = "0.1.0"
