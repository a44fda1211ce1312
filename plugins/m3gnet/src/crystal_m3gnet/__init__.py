"""crystal-m3gnet: M3GNet (Chen & Ong, Nat. Comput. Sci. 2022) as a crystal potential.

Kept tiny on purpose: listing plugins reads ``crystal_plugin.toml`` only and must not import
torch. The model is :class:`crystal_m3gnet.model.M3GNet`, the component
:class:`crystal_m3gnet.potential.M3GNetPotential`, and the reader of matgl's saved models
(``model.json`` + ``state.pt``) is :mod:`crystal_m3gnet.matgl_format`.
"""

__version__ = "0.1.0"
