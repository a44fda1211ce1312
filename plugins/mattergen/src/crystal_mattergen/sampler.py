"""Classifier-free guidance for MatterGen's sampler (reference: ``GuidedPredictorCorrector``).

A conditional MatterGen denoiser is evaluated twice at every score call: once with the
property embeddings switched to their *unconditional* (learned "no label") value and once with
the conditions. The two model outputs are mixed per field as the reference does,

    score_γ = score_uncond + γ (score_cond - score_uncond)        (torch.lerp(uncond, cond, γ))

with ``γ`` = ``guidance_factor``: ``γ = 0`` is the unconditional model (one evaluation), ``γ = 1``
the conditional model (one evaluation), ``γ > 1`` over-weights the condition (the paper's
property-targeted results use γ = 2; for atom types the mix acts on logits, i.e.
``p(x)^{1-γ} p(x|y)^γ``). As in the reference, each branch's model outputs are first converted
to scores (``out / std``) and the scores are mixed.

Conditions are per-crystal values keyed by the reference's property names:
``chemical_system`` (a str such as ``"Li-Fe-O"``), ``space_group`` (int 1-230), and scalars
such as ``dft_band_gap`` (eV), ``dft_mag_density`` (μB/Å³), ``dft_bulk_modulus`` (GPa),
``energy_above_hull`` (eV/atom), ``hhi_score``, ``ml_bulk_modulus`` (GPa).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch

from crystal_mattergen.diffusion import Guided, State

__all__ = ["CONDITION_FIELDS", "SCALAR_CONDITIONS", "ConditionalDenoiser", "GuidedScore"]

#: scalar properties the released fine-tuned models condition on (reference PROPERTY_SOURCE_IDS), with units
SCALAR_CONDITIONS: dict[str, str] = {
    "dft_band_gap": "eV",
    "dft_mag_density": "μB/Å³",
    "dft_bulk_modulus": "GPa",
    "ml_bulk_modulus": "GPa",
    "energy_above_hull": "eV/atom",
    "hhi_score": "",
}
CONDITION_FIELDS: tuple[str, ...] = ("chemical_system", "space_group", *SCALAR_CONDITIONS)


class ConditionalDenoiser(Protocol):
    """What guidance needs from a denoiser: raw outputs for a batch, with the conditions used
    (``conditions`` given) or replaced by the unconditional embeddings (``conditions=None``).

    Returns ``{"pos": (N, 3), "cell": (B, 3, 3), "atomic_numbers": (N, 101)}`` model targets."""

    def __call__(
        self, state: State, t: torch.Tensor, conditions: Mapping[str, Sequence[Any]] | None
    ) -> dict[str, torch.Tensor]: ...


class GuidedScore:
    """The score function handed to :class:`~crystal_mattergen.diffusion.PredictorCorrector`."""

    def __init__(
        self,
        denoiser: ConditionalDenoiser,
        conditions: Mapping[str, Sequence[Any]] | None,
        guidance_factor: float,
    ) -> None:
        self.denoiser = denoiser
        self.conditions = dict(conditions) if conditions else None
        self.guidance_factor = float(guidance_factor)
        #: number of denoiser evaluations so far (2 per call when guidance mixes)
        self.evaluations = 0

    def __call__(self, state: State, t: torch.Tensor) -> dict[str, torch.Tensor] | Guided:
        """Raw outputs of one branch, or both as :class:`~crystal_mattergen.diffusion.Guided`
        (the sampler converts each to scores, then mixes them, as the reference does)."""
        g = self.guidance_factor
        if self.conditions is None or abs(g) < 1e-15:
            self.evaluations += 1
            return self.denoiser(state, t, None)
        if abs(g - 1) < 1e-15:
            self.evaluations += 1
            return self.denoiser(state, t, self.conditions)
        uncond = self.denoiser(state, t, None)
        cond = self.denoiser(state, t, self.conditions)
        self.evaluations += 2
        return Guided(uncond, cond, g)

    def mixed_outputs(self, state: State, t: torch.Tensor) -> dict[str, torch.Tensor]:
        """The guided model outputs ``lerp(uncond, cond, γ)`` (equal to mixing scores up to rounding)."""
        out = self(state, t)
        if isinstance(out, Guided):
            return {k: torch.lerp(out.unconditional[k], out.conditional[k], out.factor) for k in out.unconditional}
        return out
