"""Batched powder-XRD simulation: peaks and patterns of a whole :class:`CrystalBatch`.

Pipeline (every stage is a tensor operation over the batch; crystals are only grouped
into memory-bounded chunks of similar size):

1. reciprocal points with ``2θ_min ≤ 2θ ≤ 2θ_max`` (:mod:`crystal_xrd.reflections`)
2. ``I_h = 2 |F_h|² LP(θ_h) [· W_MD(h)]`` (:mod:`crystal_xrd.structure_factor`; the 2 is the
   Friedel mate, ``W_MD`` the March–Dollase factor when augmenting)
3. merging into peaks with multiplicities (:mod:`crystal_xrd.peaks`)
4. optional augmentation of positions and intensities (:mod:`crystal_xrd.augment`)
5. normalisation and broadening onto the 2θ grid (:mod:`crystal_xrd.profile`)

Geometry (|g|², 2θ, merging) is computed in float64 whatever the batch dtype so that
equivalent reflections merge identically; structure factors and patterns use the batch
dtype.  This matches pymatgen's ``XRDCalculator`` (same scattering factors, LP factor and
Friedel treatment) — see ``plugins/xrd/tests/test_xrd_parity.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import ValidationError

from crystal.batch import CrystalBatch
from crystal.config import format_validation_error
from crystal.errors import ConfigError, StructureError
from crystal_xrd.augment import AugmentDraws, draw, grid_augment, march_dollase, perturb_positions
from crystal_xrd.config import XRDConfig
from crystal_xrd.peaks import XRDPeaks, compact, merge_reflections
from crystal_xrd.profile import broaden, grid, peak_widths
from crystal_xrd.reflections import g_limits, index_bounds, reflections_in_shell
from crystal_xrd.structure_factor import lorentz_polarization, structure_factor_intensity

__all__ = ["XRDResult", "make_config", "simulate", "simulate_peaks"]


@dataclass
class XRDResult:
    """``two_theta`` (G,) grid in degrees, ``patterns`` (B, G), ``peaks`` (B, P) and the config."""

    two_theta: torch.Tensor
    patterns: torch.Tensor
    peaks: XRDPeaks
    config: XRDConfig


def make_config(config: XRDConfig | Mapping[str, Any] | None = None, **overrides: Any) -> XRDConfig:
    """Validate a config (model, mapping or None) plus keyword overrides; errors name the field."""
    if isinstance(config, XRDConfig) and not overrides:
        return config
    data = config.model_dump() if isinstance(config, XRDConfig) else dict(config or {})
    data.update(overrides)
    try:
        return XRDConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "representation 'xrd'")) from None


#: per-crystal limits of the simulation (a larger cell is refused with its reason, not run out of memory)
MAX_REFLECTIONS = 2_000_000
MAX_STRUCTURE_FACTOR_TERMS = 100_000_000


def _check(batch: CrystalBatch, g_max: float) -> None:
    def ids(index: list[int]) -> str:
        return ", ".join(repr(batch.ids[i]) for i in index[:5]) + (
            f" and {len(index) - 5} more" if len(index) > 5 else ""
        )

    empty = torch.nonzero(batch.num_atoms == 0).flatten().tolist()
    if empty:
        raise StructureError(f"xrd: crystal(s) {ids(empty)} have no atoms")
    bad = ~torch.isfinite(batch.lattices).flatten(1).all(dim=1)
    if batch.num_nodes:
        bad_atoms = ~torch.isfinite(batch.frac_coords).all(dim=1)
        per_crystal = torch.zeros(len(batch), dtype=torch.long, device=batch.device)
        bad = bad | (per_crystal.index_add_(0, batch.batch, bad_atoms.long()) > 0)
    if bool(bad.any()):
        raise StructureError(f"xrd: crystal(s) {ids(torch.nonzero(bad).flatten().tolist())} have NaN or inf values")
    flat = torch.nonzero(batch.volumes < 1e-6).flatten().tolist()
    if flat:
        raise StructureError(f"xrd: crystal(s) {ids(flat)} have a degenerate (zero-volume) cell")
    # reflections up to g_max grow with the cell volume (2/3 pi g_max^3 V in a half sphere): a
    # cell of 10^7 Å^3 would need ~10^8 structure factors; refuse it per crystal, clearly
    est = 2.0 / 3.0 * math.pi * g_max**3 * batch.volumes.detach().to(torch.float64)
    work = est * batch.num_atoms.to(torch.float64)
    huge = torch.nonzero((est > MAX_REFLECTIONS) | (work > MAX_STRUCTURE_FACTOR_TERMS)).flatten().tolist()
    if huge:
        k = huge[0]
        raise StructureError(
            f"xrd: crystal(s) {ids(huge)}: the cell is too large to simulate (volume {float(batch.volumes[k]):.3g} Å^3, "
            f"~{float(est[k]):.3g} reflections in the 2θ range; limits {MAX_REFLECTIONS:.0e} reflections and "
            f"{MAX_STRUCTURE_FACTOR_TERMS:.0e} reflection x atom terms per crystal)"
        )


def _chunks(batch: CrystalBatch, bounds: torch.Tensor, g_max: float, budget: int, size: int) -> list[torch.Tensor]:
    """Crystals grouped (sorted by size, at most ``size`` per group) so that padded work per chunk
    stays under ``budget``; sorting keeps the padding of reflections and atoms small."""
    box = ((2 * bounds + 1).prod(dim=1) // 2 + 1).cpu()
    est_k = (2.0 / 3.0 * math.pi * g_max**3 * batch.volumes.detach().to(torch.float64).cpu()).ceil().long() + 8
    natoms = batch.num_atoms.cpu()
    order = torch.argsort(box * 1 + est_k * natoms, stable=True).tolist()
    chunks: list[list[int]] = []
    cur: list[int] = []
    mb = mk = mn = 0
    for i in order:
        b_, k_, n_ = int(box[i]), int(est_k[i]), int(natoms[i])
        nb, nk, nn = max(mb, b_), max(mk, k_), max(mn, n_)
        if cur and ((len(cur) + 1) * max(nb * 4, nk * nn) > budget or len(cur) >= size):
            chunks.append(cur)
            cur, nb, nk, nn = [], b_, k_, n_
        cur.append(i)
        mb, mk, mn = nb, nk, nn
    if cur:
        chunks.append(cur)
    return [torch.tensor(c, dtype=torch.long, device=batch.device) for c in chunks]


def _peaks_chunk(
    sub: CrystalBatch, cfg: XRDConfig, bounds: torch.Tensor, draws: AugmentDraws | None, rows: torch.Tensor
) -> XRDPeaks:
    lam = cfg.wavelength_angstrom
    g_min, g_max = g_limits(cfg.two_theta_min, cfg.two_theta_max, lam)
    hkl, g2, valid = reflections_in_shell(sub.lattices, g_min, g_max, bounds)
    theta = torch.asin((lam * torch.sqrt(g2) / 2.0).clamp(max=1.0))  # (b, K) float64
    two_theta = torch.rad2deg(2.0 * theta)
    inten = structure_factor_intensity(sub, hkl, g2 / 4.0, cfg.debye_waller).to(torch.float64)
    inten = 2.0 * inten * lorentz_polarization(theta)
    if draws is not None and cfg.augment is not None and cfg.augment.preferred_orientation > 0:
        lat = sub.lattices.to(torch.float64)
        metric = torch.linalg.inv(lat @ lat.transpose(1, 2))
        r = draws.march_r[rows.cpu()].to(sub.device)
        axis = draws.axis[rows.cpu()].to(sub.device)
        inten = inten * march_dollase(hkl, metric, axis, r)
    inten = torch.where(valid, inten, torch.zeros_like(inten))
    return merge_reflections(two_theta, inten, g2, hkl, valid, cfg.merge_tolerance, cfg.min_intensity)


def _raw_peaks(batch: CrystalBatch, cfg: XRDConfig, draws: AugmentDraws | None) -> XRDPeaks:
    _, g_max = g_limits(cfg.two_theta_min, cfg.two_theta_max, cfg.wavelength_angstrom)
    _check(batch, g_max)
    bounds = index_bounds(batch.lattices, g_max)
    parts: list[XRDPeaks] = []
    order: list[torch.Tensor] = []
    for rows in _chunks(batch, bounds, g_max, cfg.chunk_elements, cfg.chunk_size):
        parts.append(_peaks_chunk(batch.select(rows), cfg, bounds[rows], draws, rows))
        order.append(rows)
    if not parts:
        z = torch.zeros((0, 0), dtype=torch.float64, device=batch.device)
        zl = z.long()
        return XRDPeaks(z, z, z, zl, zl[..., None].expand(0, 0, 3), z.bool())
    merged = XRDPeaks.concat(parts)
    inverse = torch.argsort(torch.cat(order))
    return merged.index(inverse)


def _normalise(values: torch.Tensor, scale: float) -> torch.Tensor:
    top = values.amax(dim=1, keepdim=True) if values.shape[1] else values.new_ones((values.shape[0], 1))
    return values * (scale / top.clamp_min(torch.finfo(values.dtype).tiny))


def _augment_peaks(peaks: XRDPeaks, cfg: XRDConfig, draws: AugmentDraws, gen: torch.Generator) -> XRDPeaks:
    assert cfg.augment is not None
    dev = peaks.two_theta.device
    tt, ok = perturb_positions(peaks.two_theta, draws.strain.to(dev), draws.shift.to(dev))
    inten = peaks.intensity
    if cfg.augment.intensity_jitter > 0:
        z = torch.randn(tuple(inten.shape), generator=gen, dtype=torch.float64).to(dev)
        inten = inten * torch.exp(cfg.augment.intensity_jitter * z)
    keep = peaks.mask & ok & (tt >= cfg.two_theta_min) & (tt <= cfg.two_theta_max)
    mask, tt, inten, d, mult, hkl = compact(keep, tt, inten, peaks.d_spacing, peaks.multiplicity, peaks.hkl)
    zero = torch.zeros_like(tt)
    return XRDPeaks(torch.where(mask, tt, zero), torch.where(mask, inten, zero), d, mult, hkl, mask)


def simulate_peaks(
    batch: CrystalBatch,
    config: XRDConfig | Mapping[str, Any] | None = None,
    *,
    seed: int | None = None,
    **overrides: Any,
) -> XRDPeaks:
    """Powder peaks (B, P) of ``batch`` (see :class:`XRDPeaks`), normalised per the config."""
    return simulate(batch, config, seed=seed, patterns=False, **overrides).peaks


def simulate(
    batch: CrystalBatch,
    config: XRDConfig | Mapping[str, Any] | None = None,
    *,
    seed: int | None = None,
    patterns: bool = True,
    **overrides: Any,
) -> XRDResult:
    """Simulate peaks and (with ``patterns``) broadened patterns for every crystal of ``batch``.

    ``config`` is an :class:`XRDConfig`, a mapping or None; keyword ``overrides`` replace
    its fields (``simulate(batch, wavelength="MoKa", fwhm=0.05)``).  ``seed`` overrides
    ``config.seed`` for the augmentation draws.  Returns :class:`XRDResult` with
    ``patterns`` (B, G) in the batch dtype (empty (B, 0) when ``patterns`` is False).
    """
    cfg = make_config(config, **overrides)
    dtype, device = batch.dtype, batch.device
    gen = torch.Generator().manual_seed(int(cfg.seed if seed is None else seed))
    draws = draw(cfg.augment, len(batch), gen) if cfg.augment is not None else None
    peaks = _raw_peaks(batch, cfg, draws)
    if draws is not None:
        peaks = _augment_peaks(peaks, cfg, draws, gen)
    if cfg.normalize == "max":
        peaks.intensity = _normalise(peaks.intensity, cfg.scale)
    xs = grid(cfg.two_theta_min, cfg.step, cfg.num_points, dtype=dtype, device=device)
    if not patterns:
        return XRDResult(xs, torch.zeros((len(batch), 0), dtype=dtype, device=device), peaks.to(dtype=dtype), cfg)
    fwhm: torch.Tensor | float = cfg.fwhm
    if draws is not None and draws.fwhm is not None:
        fwhm = draws.fwhm.to(device, dtype)
    tt = peaks.two_theta.to(dtype)
    width = peak_widths(tt, fwhm, cfg.wavelength_angstrom, cfg.crystallite_size, cfg.scherrer_constant)
    ys = broaden(
        tt,
        peaks.intensity.to(dtype),
        peaks.mask,
        width,
        cfg.two_theta_min,
        cfg.step,
        cfg.num_points,
        cfg.profile,
        cfg.eta,
        cfg.window,
    )
    if draws is not None and cfg.augment is not None:
        ys = grid_augment(ys, draws, cfg.augment, gen)
    if cfg.normalize == "max":
        ys = _normalise(ys, cfg.scale)
    return XRDResult(xs, ys.to(dtype), peaks.to(dtype=dtype), cfg)
