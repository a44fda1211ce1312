"""crystal-mattergen: MatterGen (Zeni et al., Nature 2025) as a ``crystal`` generator.

Kept tiny on purpose: listing plugins reads ``crystal_plugin.toml`` only and must not import
torch. The component lives in :mod:`crystal_mattergen.generator`; the diffusion (corruption
processes, predictor-corrector sampler) in :mod:`crystal_mattergen.diffusion`, classifier-free
guidance in :mod:`crystal_mattergen.sampler`, the GemNet-T denoiser in
:mod:`crystal_mattergen.denoiser` and the released-checkpoint loader in
:mod:`crystal_mattergen.checkpoint`.
"""

__version__ = "0.1.0"
