"""crystal-schnet: SchNet (Schütt et al., J. Chem. Phys. 148, 241722 (2018)) as a ``crystal`` encoder.

Kept tiny on purpose: listing plugins reads ``crystal_plugin.toml`` only and must not
import torch. The component lives in :mod:`crystal_schnet.encoder`, the network in
:mod:`crystal_schnet.model` and its operators in :mod:`crystal_schnet.layers`.
"""

__version__ = "0.1.0"
