"""Model-free matching: rank candidate structures by how well their simulated pattern
agrees with a measured one.

Both patterns live on the same 2θ grid (the measured one is resampled with
:func:`crystal_xrd.io.resample`).  Scores, for patterns ``a`` and ``b`` (G,):

* cosine   ``a·b / (|a| |b|)``
* pearson  cosine of the mean-centred patterns (insensitive to a constant background)

Narrow peaks make both scores very sensitive to small misalignments (a computed cell is
typically 1–2 % off the measured one; diffractometers have zero shifts).  With
``max_strain`` / ``max_shift`` every candidate is also compared after an isotropic strain
``d → d(1+ε)`` (``sin θ' = sin θ/(1+ε)``) on a uniform grid of ``strain_steps`` values in
``[-max_strain, max_strain]`` and a zero shift on ``shift_steps`` values in
``[-max_shift, max_shift]`` (degrees); its score is the best over that grid, and the best
``ε`` and shift are reported.  Peaks are simulated once; only their positions change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from crystal.batch import CrystalBatch
from crystal.errors import ConfigError
from crystal_xrd.config import XRDConfig
from crystal_xrd.io import MeasuredPattern, resample
from crystal_xrd.simulate import make_config, simulate

__all__ = ["MatchResult", "match", "similarity"]


def similarity(
    simulated: torch.Tensor, measured: torch.Tensor, metric: Literal["cosine", "pearson"] = "cosine"
) -> torch.Tensor:
    """(B,) similarity of each row of ``simulated`` (B, G) to ``measured`` (G,) or (B, G)."""
    a = simulated
    b = measured.to(a.dtype).expand_as(a)
    if metric == "pearson":
        a = a - a.mean(dim=-1, keepdim=True)
        b = b - b.mean(dim=-1, keepdim=True)
    elif metric != "cosine":
        raise ConfigError(f"match: unknown metric {metric!r}; allowed: cosine, pearson")
    eps = torch.finfo(a.dtype).tiny
    scores: torch.Tensor = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(eps)
    return scores


@dataclass
class MatchResult:
    """Candidates ranked best first: ``order`` (B,) indices into the candidate batch,
    ``scores`` (B,) their similarity, ``ids`` their ids; ``two_theta`` (G,) and ``measured`` (G,)
    the common grid and the resampled measurement, ``simulated`` (B, G) in candidate order."""

    order: torch.Tensor
    scores: torch.Tensor
    ids: list[str]
    two_theta: torch.Tensor
    measured: torch.Tensor
    simulated: torch.Tensor
    strain: torch.Tensor | None = None
    shift: torch.Tensor | None = None


def match(
    measured: MeasuredPattern | torch.Tensor,
    candidates: CrystalBatch,
    config: XRDConfig | Mapping[str, Any] | None = None,
    *,
    metric: Literal["cosine", "pearson"] = "cosine",
    max_strain: float = 0.0,
    strain_steps: int = 41,
    max_shift: float = 0.0,
    shift_steps: int = 11,
    **overrides: Any,
) -> MatchResult:
    """Rank ``candidates`` by the similarity of their simulated pattern to ``measured``.

    ``measured`` is a :class:`MeasuredPattern` (resampled onto the config's grid) or a (G,)
    tensor already on that grid.  The simulation uses ``config`` (augmentation disabled).
    ``max_strain`` (fraction) and ``max_shift`` (degrees) search candidate misalignments
    (see the module docstring); ``scores``, ``strain`` and ``shift`` are then the best ones,
    in rank order, and ``simulated`` the best-aligned patterns.
    """
    if max_strain < 0 or max_shift < 0 or strain_steps < 1 or shift_steps < 1:
        raise ConfigError("match: max_strain, max_shift must be >= 0 and strain_steps, shift_steps >= 1")
    cfg = make_config(config, **overrides)
    if cfg.augment is not None:
        cfg = make_config(cfg, augment=None)
    sim = simulate(candidates, cfg)
    if isinstance(measured, MeasuredPattern):
        y = resample(measured, sim.two_theta, normalize="max", scale=cfg.scale)
    else:
        y = torch.as_tensor(measured, device=sim.two_theta.device)
        if y.shape != sim.two_theta.shape:
            raise ConfigError(
                f"match: measured pattern has {tuple(y.shape)} points, the grid has {tuple(sim.two_theta.shape)}; "
                "pass a MeasuredPattern to resample it"
            )
    if max_strain == 0 and max_shift == 0:
        scores = similarity(sim.patterns, y, metric)
        order = torch.argsort(scores, descending=True, stable=True)
        return MatchResult(
            order=order,
            scores=scores[order],
            ids=[candidates.ids[i] for i in order.tolist()],
            two_theta=sim.two_theta,
            measured=y.to(sim.patterns.dtype),
            simulated=sim.patterns,
        )
    scores, strain, shift, best = _search(
        sim, y.to(sim.patterns.dtype), cfg, metric, max_strain, strain_steps, max_shift, shift_steps
    )
    order = torch.argsort(scores, descending=True, stable=True)
    return MatchResult(
        order=order,
        scores=scores[order],
        ids=[candidates.ids[i] for i in order.tolist()],
        two_theta=sim.two_theta,
        measured=y.to(sim.patterns.dtype),
        simulated=best,
        strain=strain[order],
        shift=shift[order],
    )


def _search(
    sim: Any,
    y: torch.Tensor,
    cfg: XRDConfig,
    metric: Literal["cosine", "pearson"],
    max_strain: float,
    strain_steps: int,
    max_shift: float,
    shift_steps: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best similarity over a strain × shift grid; returns (scores, strain, shift, patterns) per candidate."""
    from crystal_xrd.augment import perturb_positions
    from crystal_xrd.profile import broaden, peak_widths

    peaks = sim.peaks
    b, g = sim.patterns.shape
    dev, dt = sim.patterns.device, sim.patterns.dtype
    eps = (
        torch.linspace(-max_strain, max_strain, strain_steps, dtype=dt, device=dev)
        if max_strain > 0
        else torch.zeros(1, dtype=dt, device=dev)
    )
    dlt = (
        torch.linspace(-max_shift, max_shift, shift_steps, dtype=dt, device=dev)
        if max_shift > 0
        else torch.zeros(1, dtype=dt, device=dev)
    )
    combos = torch.cartesian_prod(eps, dlt).reshape(-1, 2)  # (S, 2)
    best = torch.full((b,), -2.0, dtype=dt, device=dev)
    best_strain = torch.zeros(b, dtype=dt, device=dev)
    best_shift = torch.zeros(b, dtype=dt, device=dev)
    best_pat = sim.patterns.clone()
    per = max(1, cfg.chunk_elements // max(1, b * g))
    for start in range(0, len(combos), per):
        c = combos[start : start + per]  # (s, 2)
        s = len(c)
        tt = peaks.two_theta.to(dt).repeat(s, 1)  # (s*B, P)
        strain = c[:, 0].repeat_interleave(b)
        shift = c[:, 1].repeat_interleave(b)
        pos, ok = perturb_positions(tt, strain, shift)
        mask = peaks.mask.repeat(s, 1) & ok
        width = peak_widths(pos, cfg.fwhm, cfg.wavelength_angstrom, cfg.crystallite_size, cfg.scherrer_constant)
        pats = broaden(
            pos,
            peaks.intensity.to(dt).repeat(s, 1),
            mask,
            width,
            cfg.two_theta_min,
            cfg.step,
            cfg.num_points,
            cfg.profile,
            cfg.eta,
            cfg.window,
        )  # (s*B, G)
        sc = similarity(pats, y, metric).reshape(s, b)
        top, k = sc.max(dim=0)
        better = top > best
        best = torch.where(better, top, best)
        best_strain = torch.where(better, c[k, 0], best_strain)
        best_shift = torch.where(better, c[k, 1], best_shift)
        rows = k * b + torch.arange(b, device=dev)
        best_pat = torch.where(better[:, None], pats[rows], best_pat)
    return best, best_strain, best_shift, best_pat
