"""Property (condition) embeddings of MatterGen, and the element mask used at sampling time.

Conventions of microsoft/mattergen's ``property_embeddings.py`` (state-dict layout identical):
a :class:`PropertyEmbedding` holds a ``conditional_embedding_module`` (depends on the value),
an ``unconditional_embedding_module`` (a learnt vector, or zeros for properties added by an
adapter) and an optional ``scaler`` (standardisation with ``means``/``stds`` buffers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

__all__ = [
    "MAX_ATOMIC_NUM",
    "PROPERTY_NAMES",
    "SELECTED_ATOMIC_NUMBERS",
    "ChemicalSystemEmbedding",
    "EmbeddingVector",
    "NoiseLevelEncoding",
    "PropertyEmbedding",
    "SpaceGroupEmbedding",
    "StandardScaler",
    "ZerosEmbedding",
    "chemical_system_multi_hot",
    "mask_disallowed_elements",
]

MAX_ATOMIC_NUM = 100

#: The property names of the reference (``PROPERTY_SOURCE_IDS``).
PROPERTY_NAMES = (
    "dft_mag_density",
    "dft_bulk_modulus",
    "dft_shear_modulus",
    "energy_above_hull",
    "formation_energy_per_atom",
    "space_group",
    "hhi_score",
    "ml_bulk_modulus",
    "chemical_system",
    "dft_band_gap",
)

#: Elements the released models may generate (H..Bi without noble gases, Tc, Pm; the
#: reference's ``SELECTED_ATOMIC_NUMBERS``).
SELECTED_ATOMIC_NUMBERS = tuple(z for z in range(1, 84) if z not in (2, 10, 18, 36, 43, 54, 61))


class NoiseLevelEncoding(nn.Module):
    """Sinusoidal encoding ``[sin(t ω_0), cos(t ω_0), sin(t ω_1), ...]`` with
    ``ω_k = 10000^(-2k/d)`` → (B, d). State: the ``div_term`` buffer (d/2,)."""

    def __init__(self, d_model: int):
        super().__init__()
        self.d_model = d_model
        div_term = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        self.register_buffer("div_term", div_term)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        x = torch.zeros((t.shape[0], self.d_model), device=self.div_term.device, dtype=self.div_term.dtype)
        arg = t.reshape(-1)[:, None] * self.div_term[None]
        x[:, 0::2] = torch.sin(arg)
        x[:, 1::2] = torch.cos(arg)
        return x


class StandardScaler(nn.Module):
    """``(x - mean) / std`` (optionally of ``log10 x``). State: ``means`` (1,), ``stds`` (1,)."""

    def __init__(self, log10_transform: bool = False):
        super().__init__()
        self.log10_transform = log10_transform
        self.register_buffer("means", torch.zeros(1))
        self.register_buffer("stds", torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.log10_transform:
            x = torch.log10(x)
        return (x - self.means) / self.stds


class EmbeddingVector(nn.Module):
    """A learnt vector (the unconditional embedding). State: ``embedding.weight`` (1, d)."""

    def __init__(self, hidden_dim: int):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.embedding = nn.Embedding(1, hidden_dim)

    def forward(self, n: int) -> torch.Tensor:
        return self.embedding.weight.expand(n, -1)


class ZerosEmbedding(nn.Module):
    """Zeros (the unconditional embedding of adapter properties); no state."""

    def __init__(self, hidden_dim: int):
        super().__init__()
        self.hidden_dim = hidden_dim

    def forward(self, n: int) -> torch.Tensor:
        return torch.zeros(n, self.hidden_dim)


class SpaceGroupEmbedding(nn.Module):
    """Space-group number 1..230 → learnt vector. State: ``embedding.weight`` (230, d)."""

    def __init__(self, hidden_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(230, hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(x.long() - 1)


def _as_element_lists(values: Sequence[Any]) -> list[list[str]]:
    out = []
    for v in values:
        out.append([s for s in v.split("-") if s] if isinstance(v, str) else [str(s) for s in v])
    return out


def chemical_system_multi_hot(values: Sequence[Any], device: torch.device | str = "cpu") -> torch.Tensor:
    """``"Li-Fe-O"`` strings or element-symbol lists → multi-hot (B, 101), column Z = element Z."""
    from crystal.elements import atomic_number

    out = torch.zeros(len(values), MAX_ATOMIC_NUM + 1, device=device)
    for b, elements in enumerate(_as_element_lists(values)):
        for sym in elements:
            out[b, atomic_number(sym)] = 1.0
    return out


class ChemicalSystemEmbedding(nn.Module):
    """Multi-hot chemical system (101,) → Linear → (B, d). State: ``embedding.weight/bias``."""

    def __init__(self, hidden_dim: int):
        super().__init__()
        self.embedding = nn.Linear(MAX_ATOMIC_NUM + 1, hidden_dim)

    def forward(self, x: Sequence[Any]) -> torch.Tensor:
        w = self.embedding.weight
        return self.embedding(chemical_system_multi_hot(x, device=w.device).to(w.dtype))


EmbeddingKind = Literal["scalar", "space_group", "chemical_system"]


class PropertyEmbedding(nn.Module):
    """Conditional or unconditional embedding of one property, per crystal → (B, d)."""

    def __init__(
        self,
        name: str,
        kind: EmbeddingKind,
        hidden_dim: int,
        zero_unconditional: bool = False,
        scaler: bool = True,
        log10_transform: bool = False,
    ):
        super().__init__()
        self.name = name
        self.kind = kind
        self.hidden_dim = hidden_dim
        if kind == "scalar":
            self.conditional_embedding_module: nn.Module = NoiseLevelEncoding(hidden_dim)
        elif kind == "space_group":
            self.conditional_embedding_module = SpaceGroupEmbedding(hidden_dim)
        elif kind == "chemical_system":
            self.conditional_embedding_module = ChemicalSystemEmbedding(hidden_dim)
        else:
            raise ValueError(f"unknown property embedding kind {kind!r}; allowed: scalar, space_group, chemical_system")
        self.unconditional_embedding_module: nn.Module = (
            ZerosEmbedding(hidden_dim) if zero_unconditional else EmbeddingVector(hidden_dim)
        )
        self.scaler: nn.Module = StandardScaler(log10_transform) if scaler else nn.Identity()

    def forward(
        self, value: Any, n_crystals: int, use_unconditional: torch.Tensor, device: torch.device
    ) -> torch.Tensor:
        """``use_unconditional``: (B,) bool; ``value`` may be None when all are unconditional."""
        uncond = self.unconditional_embedding_module(n_crystals).to(device)
        if bool(use_unconditional.all()):
            return uncond
        if value is None:
            raise ValueError(f"property {self.name!r}: a value is needed for the conditional embedding")
        if isinstance(value, torch.Tensor):
            value = value.to(device)
            if value.dim() == 2:
                value = value.squeeze(-1)
            value = self.scaler(value.float() if self.kind == "scalar" else value)
        cond = self.conditional_embedding_module(value)
        return torch.where(use_unconditional.view(-1, 1), uncond, cond)


def mask_disallowed_elements(
    logits: torch.Tensor,
    batch: torch.Tensor,
    chemical_system: Sequence[Any] | None = None,
    use_unconditional: torch.Tensor | None = None,
) -> torch.Tensor:
    """Adds ``-1e10`` to the logits (N, 100 or 101; zero-based, index Z-1) of elements outside
    :data:`SELECTED_ATOMIC_NUMBERS` (and of the mask class), and, for crystals conditioned on a
    chemical system (``use_unconditional[b]`` False), of elements outside that system."""
    n_classes = logits.shape[1]
    keep = torch.zeros(n_classes, device=logits.device)
    keep[torch.tensor(SELECTED_ATOMIC_NUMBERS, device=logits.device) - 1] = 1.0
    logits = logits + (1 - keep[None]) * -1e10
    if chemical_system is None:
        return logits
    n_crystals = len(chemical_system)
    if use_unconditional is None:
        use_unconditional = torch.zeros(n_crystals, dtype=torch.bool, device=logits.device)
    multi_hot = chemical_system_multi_hot(chemical_system, device=logits.device)[:, 1:]  # (B, 100) zero-based
    keep_b = torch.where(use_unconditional.view(-1, 1).to(logits.device), torch.ones_like(multi_hot), multi_hot)
    if keep_b.shape[1] == n_classes - 1:  # the mask class is masked (again) for every crystal, as the reference
        keep_b = torch.cat([keep_b, torch.zeros_like(keep_b[:, :1])], dim=-1)
    return logits + (1 - keep_b[batch]) * -1e10
