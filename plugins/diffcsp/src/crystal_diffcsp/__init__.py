"""crystal-diffcsp: DiffCSP (Jiao et al., NeurIPS 2023) as a ``crystal`` generator.

Kept tiny on purpose: listing plugins reads ``crystal_plugin.toml`` only and must not
import torch. The component lives in :mod:`crystal_diffcsp.generator`; the denoiser in
:mod:`crystal_diffcsp.cspnet`, the diffusion in :mod:`crystal_diffcsp.diffusion`.
"""

__version__ = "0.1.0"
