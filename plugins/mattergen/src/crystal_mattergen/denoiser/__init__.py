"""MatterGen's GemNet-T denoiser (score network) with property conditioning and adapters."""

from __future__ import annotations

from crystal_mattergen.denoiser.model import (
    GEMNET_DT_SCALES,
    MASK_TOKEN,
    NUM_ATOM_CLASSES,
    DenoiserConfig,
    DenoiserOutput,
    MatterGenDenoiser,
    PropertyEmbeddingConfig,
)
from crystal_mattergen.denoiser.properties import (
    MAX_ATOMIC_NUM,
    PROPERTY_NAMES,
    SELECTED_ATOMIC_NUMBERS,
    chemical_system_multi_hot,
    mask_disallowed_elements,
)

__all__ = [
    "GEMNET_DT_SCALES",
    "MASK_TOKEN",
    "MAX_ATOMIC_NUM",
    "NUM_ATOM_CLASSES",
    "PROPERTY_NAMES",
    "SELECTED_ATOMIC_NUMBERS",
    "DenoiserConfig",
    "DenoiserOutput",
    "MatterGenDenoiser",
    "PropertyEmbeddingConfig",
    "chemical_system_multi_hot",
    "mask_disallowed_elements",
]
