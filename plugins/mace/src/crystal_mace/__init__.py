"""crystal-mace: MACE (Batatia et al., NeurIPS 2022) as a trainable ``crystal`` potential.

Kept tiny on purpose: listing plugins reads ``crystal_plugin.toml`` only and must not import
torch or e3nn. The model is :class:`crystal_mace.model.MACE`, the component
:class:`crystal_mace.potential.MACEPotential`.
"""

__version__ = "0.1.0"
