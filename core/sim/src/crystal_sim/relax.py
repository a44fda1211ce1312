"""Batched structure relaxation: FIRE with a Fréchet (exp-log) cell filter, on the device.

Many crystals are relaxed at once with any :class:`~crystal.components.Potential`; each
crystal has its own FIRE state (time step, mixing, velocity) and its own convergence.

Crystals wait in a queue and are evaluated together up to a capacity (crystals and/or units of
the potential's memory metric, by default from its calibrated memory model,
:mod:`crystal_sim.memory`). With ``inflight=True`` (the default) a crystal that converges (or
runs out of steps) leaves the active set and the next waiting one takes its place (in-flight
batching); with ``inflight=False`` the queue is taken in batches that shrink as their crystals
converge. An out-of-memory error halves the capacity and repeats the evaluation, the crystals
put back waiting keep their state. As every crystal's state is its own, a crystal's trajectory
does not depend on the others, on the capacity or on the mode: relaxed alone, in a shrinking
batch or in flight it gives the same result (to floating-point reduction order).

The algorithm reproduces ASE's ``FIRE`` driving ``FrechetCellFilter`` crystal by crystal.
Degrees of freedom of crystal *b* with deformation gradient ``F`` (``cell = cell₀ Fᵀ``):

* atoms in the undeformed frame ``u = r F⁻ᵀ`` (so fractional coordinates are ``u cell₀⁻¹``),
* the scaled matrix logarithm ``X = c log F`` with ``c = exp_cell_factor`` (default: the
  number of atoms of that crystal).

Generalised forces: ``f_u = f F`` on atoms and ``f_X = (1/c) Σ_kl G_kl ∂(exp X/c)_kl/∂(X/c)``
on the cell, where ``G = -∂E/∂F = W F⁻ᵀ`` with the virial ``W = -V (σ + p I)``. The Fréchet
derivative of the matrix exponential is taken by autograd through
:func:`torch.linalg.matrix_exp` (exactly the vector–Jacobian product ASE computes with
``scipy.linalg.expm_frechet``). A crystal is converged when every row of its generalised
force (atoms and the three cell rows) is shorter than ``fmax``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from pydantic import Field, ValidationError

from crystal.batch import CrystalBatch
from crystal.config import StrictModel, field_hint
from crystal.errors import ConfigError, StructureError
from crystal_sim.memory import (
    BatchLimits,
    batch_capacity,
    free_memory,
    is_out_of_memory,
    memory_metric_of,
    metric_values,
    note_out_of_memory,
)

if TYPE_CHECKING:
    from crystal.components import Potential

__all__ = ["FireConfig", "RelaxConfig", "RelaxResult", "relax"]

log = logging.getLogger("crystal_sim.relax")


class FireConfig(StrictModel):
    """FIRE parameters (ASE's defaults; Bitzek et al., PRL 97, 170201 (2006))."""

    dt: float = Field(0.1, gt=0, description="initial time step (ASE units)")
    dt_max: float = Field(1.0, gt=0, description="largest time step")
    max_step: float = Field(0.2, gt=0, description="largest displacement per step over all DOF of a crystal, Å")
    n_min: int = Field(5, ge=0, description="steps downhill before dt may grow")
    f_inc: float = Field(1.1, gt=1, description="dt growth factor")
    f_dec: float = Field(0.5, gt=0, lt=1, description="dt shrink factor after an uphill step")
    alpha_start: float = Field(0.1, gt=0, lt=1, description="initial velocity mixing")
    f_alpha: float = Field(0.99, gt=0, le=1, description="mixing decay factor")


class RelaxConfig(BatchLimits):
    """What to relax, when to stop, and how many crystals one evaluation holds."""

    fmax: float = Field(0.1, gt=0, description="convergence threshold on every generalised force row, eV/Å")
    max_steps: int = Field(500, ge=0, description="FIRE steps per crystal at most")
    relax_cell: bool = Field(True, description="relax the lattice too (Fréchet cell filter)")
    scalar_pressure: float = Field(0.0, description="external pressure, eV/Å³ (enthalpy relaxation)")
    exp_cell_factor: float | None = Field(
        None, gt=0, description="scale of the cell DOF; default: number of atoms of each crystal"
    )
    trajectory_every: int = Field(0, ge=0, description="record a frame every N steps (0: no trajectory)")
    max_volume_factor: float | None = Field(
        4.0,
        gt=1,
        description="stop a crystal (failed) whose cell volume grows beyond this factor times its starting volume "
        "or shrinks below its starting volume divided by it (a runaway cell, e.g. a wrong stress sign); "
        "None: no bound",
    )
    max_energy_rise_per_atom: float | None = Field(
        2.0,
        gt=0,
        description="stop a crystal (failed) whose energy per atom (enthalpy E + pV under scalar_pressure) rises "
        "more than this above its starting value, eV/atom (a relaxation goes downhill); None: no bound",
    )
    max_energy_drop_per_atom: float | None = Field(
        100.0,
        gt=0,
        description="stop a crystal (failed) whose energy per atom (enthalpy under scalar_pressure) falls more "
        "than this below its starting value, eV/atom (a hole of the potential); None: no bound",
    )
    fire: FireConfig = Field(default_factory=FireConfig)
    inflight: bool = Field(
        True,
        description="in-flight batching: when a crystal finishes, a waiting one takes its place; False: the "
        "crystals are taken in batches of the capacity that shrink as they converge (the same per-crystal results)",
    )


@dataclass
class RelaxResult:
    """Outcome of :func:`relax` for ``B`` crystals (same order as the input).

    ``batch``      relaxed crystals, with ``crystal_properties["energy"]`` (eV) and
                   ``atom_properties["forces"]`` (eV/Å) set
    ``energy``     (B,) final energies, eV
    ``forces``     (N, 3) final forces, eV/Å
    ``stress``     (B, 3, 3) final stress, eV/Å³ (``None`` when the cell was fixed)
    ``converged``  (B,) bool
    ``steps``      (B,) FIRE steps taken
    ``failures``   (B,) the reason each crystal was stopped as failed (its volume or energy left
                   the sane range of :class:`RelaxConfig`, non-finite energy/forces, or too many
                   neighbours: :class:`~crystal.neighbors.NeighborLimitError`), ``None`` for the
                   others; a failed crystal keeps the state it was stopped in, is not converged
                   and has a NaN energy (callers that ignore ``failures`` cannot take it as valid)
    ``trajectory`` frames ``(step, batch)`` of the whole batch every ``trajectory_every`` steps,
                   each frame's batch carrying ``energy`` in ``crystal_properties``
    """

    batch: CrystalBatch
    energy: torch.Tensor
    forces: torch.Tensor
    stress: torch.Tensor | None
    converged: torch.Tensor
    steps: torch.Tensor
    trajectory: list[tuple[int, CrystalBatch]] = field(default_factory=list)
    failures: list[str | None] = field(default_factory=list)

    @property
    def failed(self) -> torch.Tensor:
        """(B,) bool: the crystals stopped as failed (see ``failures``)."""
        return torch.tensor([f is not None for f in self.failures], dtype=torch.bool, device=self.energy.device)


def _expm(A: torch.Tensor) -> torch.Tensor:
    """(K, 3, 3) matrix exponentials, each independent of the other matrices of the batch.

    ``torch.linalg.matrix_exp`` takes another code path for a single matrix than for a batch
    (results differ by up to ~1e-11); a lone matrix is padded with a zero one so that a crystal
    relaxed alone follows exactly the path it follows in any batch."""
    if A.shape[0] != 1:
        return torch.linalg.matrix_exp(A)
    return torch.linalg.matrix_exp(torch.cat([A, torch.zeros_like(A)]))[:1]


def _segment_sum(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    out = torch.zeros(size, dtype=values.dtype, device=values.device)
    return out.index_add_(0, index, values)


def relax(
    potential: Potential,
    batch: CrystalBatch,
    config: RelaxConfig | None = None,
    *,
    callback: Callable[[int, int, int], None] | None = None,
    **overrides: object,
) -> RelaxResult:
    """Relax every crystal of ``batch`` with ``potential`` (positions and, by default, cell).

    ``config`` (or keyword overrides such as ``fmax=0.05, max_steps=300``) follows
    :class:`RelaxConfig`. ``callback(evaluation, n_running, n_converged)`` is called after
    each potential evaluation (progress bars; ``n_running`` counts the crystals not finished,
    active or waiting). The batch is moved to the potential's device once; work stays there.
    Structures with NaN coordinates raise :class:`StructureError`; an out-of-memory error
    raised by the potential on a single crystal is raised again (on more, the capacity is
    halved and the evaluation repeated).

    A crystal that goes wrong is stopped alone, with its reason in ``RelaxResult.failures``,
    while the others go on: its volume leaves ``[V₀ / max_volume_factor, V₀ · max_volume_factor]``,
    its energy (enthalpy) per atom rises more than ``max_energy_rise_per_atom`` above its
    starting value or falls more than ``max_energy_drop_per_atom`` below it, the potential
    returns non-finite energy or forces for it, or its cell is so dense that the neighbour
    search refuses it (:class:`~crystal.neighbors.NeighborLimitError`).
    """
    try:
        cfg = RelaxConfig.model_validate({**(config or RelaxConfig()).model_dump(), **overrides})
    except ValidationError as exc:
        problems = "; ".join(
            (f"{'.'.join(map(str, e['loc']))}: " if e["loc"] else "")
            + (
                "unknown parameter" + field_hint(RelaxConfig, tuple(e["loc"]))
                if e["type"] == "extra_forbidden"
                else e["msg"].removeprefix("Value error, ")
            )
            for e in exc.errors()
        )
        raise ConfigError(f"relax: {problems}") from None
    fire = cfg.fire
    device = potential.device
    work = batch.to(device)
    dtype = work.dtype
    if not torch.isfinite(work.frac_coords).all() or not torch.isfinite(work.lattices).all():
        raise StructureError("relax: coordinates or lattices contain NaN/inf; validate the batch first")
    B, N = len(work), work.num_nodes
    if B == 0:
        empty = torch.zeros(0, dtype=dtype, device=device)
        return RelaxResult(
            work,
            empty,
            torch.zeros((0, 3), dtype=dtype, device=device),
            None,
            torch.zeros(0, dtype=torch.bool, device=device),
            torch.zeros(0, dtype=torch.long, device=device),
        )
    from crystal.neighbors import NeighborLimitError

    cell0 = work.lattices.clone()
    cell0_inv = torch.linalg.inv(cell0)
    u = work.cart_coords.clone()  # undeformed-frame positions (F = I at start)
    X = torch.zeros((B, 3, 3), dtype=dtype, device=device)  # c * log F
    c = (
        torch.full((B,), cfg.exp_cell_factor, dtype=dtype, device=device)
        if cfg.exp_cell_factor is not None
        else work.num_atoms.to(dtype)
    )
    v_u = torch.zeros_like(u)
    v_X = torch.zeros_like(X)
    dt = torch.full((B,), fire.dt, dtype=dtype, device=device)
    alpha = torch.full((B,), fire.alpha_start, dtype=dtype, device=device)
    n_pos = torch.zeros(B, dtype=torch.long, device=device)
    first = torch.ones(B, dtype=torch.bool, device=device)

    converged = torch.zeros(B, dtype=torch.bool, device=device)
    failures: list[str | None] = [None] * B
    h0 = torch.zeros(B, dtype=dtype, device=device)  # starting energy (enthalpy) per atom
    seen = torch.zeros(B, dtype=torch.bool, device=device)
    steps = torch.zeros(B, dtype=torch.long, device=device)
    energy = torch.zeros(B, dtype=dtype, device=device)
    forces = torch.zeros((N, 3), dtype=dtype, device=device)
    stress = torch.zeros((B, 3, 3), dtype=dtype, device=device) if cfg.relax_cell else None
    eye = torch.eye(3, dtype=dtype, device=device)
    frames: dict[int, _Frame] = {}
    atom_ids = torch.arange(N, device=device)

    # ---- the queue: which crystals one evaluation holds
    metric_name, cutoff = memory_metric_of(potential)
    volume0 = torch.linalg.det(cell0).abs()
    total = float(metric_values(metric_name, work.num_atoms, volume0, cutoff).sum())
    limit = batch_capacity(potential, dtype, cfg, total)

    def metric_of(crystals: list[int]) -> list[float]:
        """Memory metric of ``crystals`` at their current cell (det F = exp(tr X / c))."""
        t = torch.tensor(crystals, dtype=torch.long, device=device)
        vol = volume0[t] * torch.exp(X[t].diagonal(dim1=1, dim2=2).sum(1) / c[t]) if cfg.relax_cell else volume0[t]
        values: list[float] = metric_values(metric_name, work.num_atoms[t], vol, cutoff).tolist()
        return values

    waiting: deque[int] = deque(range(B))
    active: list[int] = []  # kept sorted: the sub-batch is in input order

    def fill() -> None:
        total = sum(metric_of(active)) if limit is not None and active else 0.0
        added = False
        while waiting and (cfg.max_batch_size is None or len(active) < cfg.max_batch_size):
            if limit is not None:
                (m,) = metric_of([waiting[0]])
                if active and total + m > limit:
                    break
                total += m
            active.append(waiting.popleft())
            added = True
        if added:
            active.sort()

    evaluation = 0
    while True:
        if cfg.inflight or not active:
            fill()
        if not active:
            break
        while True:  # one evaluation; out of memory: halve, put crystals back, repeat
            idx = torch.tensor(active, dtype=torch.long, device=device)
            in_set = torch.zeros(B, dtype=torch.bool, device=device)
            in_set[idx] = True
            a_atoms = atom_ids[in_set[work.batch]]
            sub = work.select(idx)
            F = _expm(X[idx] / c[idx, None, None]) if cfg.relax_cell else eye.expand(len(idx), 3, 3)
            lat = cell0[idx] @ F.transpose(1, 2)
            frac = torch.einsum("ni,nij->nj", u[a_atoms], cell0_inv[idx][sub.batch])
            sub = sub.with_positions(frac, lat)
            try:
                out = potential.compute(sub, forces=True, stress=cfg.relax_cell)
                break
            except NeighborLimitError as exc:  # the crystals it names fail; the others are evaluated again
                named = set(exc.ids)
                hit = [b for b, ident in zip(active, sub.ids, strict=True) if ident in named]
                if not hit:
                    raise
                for b in hit:
                    failures[b] = f"stopped at FIRE step {int(steps[b])}: {exc}"
                active = [b for b in active if b not in hit]
                if not active:
                    break
                continue
            except Exception as exc:
                if not is_out_of_memory(exc) or len(active) == 1:
                    raise
            free_memory()  # outside the handler: the traceback no longer holds the failed tensors
            total = sum(metric_of(active))
            limit = total / 2
            if cfg.max_batch_metric == "auto":
                note_out_of_memory(potential, dtype, limit)
            before = len(active)
            while len(active) > 1 and sum(metric_of(active)) > limit:
                waiting.appendleft(active.pop())
            log.warning(
                "relax with %s: out of memory on %d crystals (%s %.4g); retrying with %d, capacity now %.4g",
                potential.name,
                before,
                metric_name,
                total,
                len(active),
                limit,
            )
        if not active:  # every crystal of this evaluation failed in the neighbour search
            continue
        evaluation += 1
        if out.forces is None or (cfg.relax_cell and out.stress is None):
            raise StructureError(f"potential {potential.name!r} returned no forces/stress")
        e_sub = out.energy.to(dtype)
        f_sub = out.forces.to(dtype)
        bad_f = torch.zeros(len(idx), dtype=torch.long, device=device).index_add_(
            0, sub.batch, (~torch.isfinite(f_sub)).any(dim=1).long()
        )
        non_finite = ~torch.isfinite(e_sub) | (bad_f > 0)
        e_sub = torch.where(torch.isfinite(e_sub), e_sub, torch.zeros_like(e_sub))
        f_sub = torch.where(torch.isfinite(f_sub), f_sub, torch.zeros_like(f_sub))
        energy[idx] = e_sub
        forces[a_atoms] = f_sub
        Fb = F[sub.batch]
        g_u = torch.einsum("ni,nij->nj", f_sub, Fb)  # generalised atom forces, f F
        row_norm_atoms = g_u.norm(dim=1)
        fmax_b = torch.zeros(len(idx), dtype=dtype, device=device).scatter_reduce_(
            0, sub.batch, row_norm_atoms, "amax", include_self=True
        )
        if cfg.relax_cell:
            s_sub = out.stress.to(dtype)  # type: ignore[union-attr]
            assert stress is not None
            stress[idx] = s_sub
            vol = torch.linalg.det(lat).abs()
            virial = -vol[:, None, None] * (s_sub + cfg.scalar_pressure * eye)
            G = virial @ torch.linalg.inv(F.transpose(1, 2))
            Xa = (X[idx] / c[idx, None, None]).detach().requires_grad_(True)
            with torch.enable_grad():
                (g_log,) = torch.autograd.grad((_expm(Xa) * G).sum(), Xa)
            g_X = g_log / c[idx, None, None]
            fmax_b = torch.maximum(fmax_b, g_X.norm(dim=2).amax(dim=1))
        else:
            g_X = torch.zeros((len(idx), 3, 3), dtype=dtype, device=device)

        vol_now = torch.linalg.det(lat).abs()
        failed_now = _sanity(
            cfg, sub, idx, e_sub, non_finite, vol_now, volume0[idx], h0, seen, steps, failures, potential.name
        )
        done_now = (fmax_b < cfg.fmax) & ~failed_now
        out_of_steps = steps[idx] >= cfg.max_steps
        converged[idx] = done_now
        if cfg.trajectory_every:
            _record(frames, steps[idx], idx, cfg.trajectory_every, work, u, X, energy)
        finished = done_now | out_of_steps | failed_now
        if callback is not None:
            callback(evaluation - 1, int((~finished).sum()) + len(waiting), int(converged.sum()))

        # ---- FIRE update of the crystals still running (vectorised per crystal)
        keep = ~finished
        if keep.any():
            k_idx = idx[keep]
            k_atom_mask = keep[sub.batch]
            k_atoms = a_atoms[k_atom_mask]
            local_batch = torch.cumsum(keep.long(), 0)[sub.batch[k_atom_mask]] - 1
            K = len(k_idx)
            fu, fX = g_u[k_atom_mask], g_X[keep]
            vu, vX = v_u[k_atoms], v_X[k_idx]
            vf = _segment_sum((fu * vu).sum(1), local_batch, K) + (fX * vX).sum((1, 2))
            ff = _segment_sum((fu * fu).sum(1), local_batch, K) + (fX * fX).sum((1, 2))
            vv = _segment_sum((vu * vu).sum(1), local_batch, K) + (vX * vX).sum((1, 2))
            a_k, dt_k, n_k, first_k = alpha[k_idx], dt[k_idx], n_pos[k_idx], first[k_idx]
            downhill = (vf > 0) & ~first_k
            uphill = ~(vf > 0) & ~first_k
            mix = torch.where(downhill, a_k, torch.zeros_like(a_k))
            scale = torch.where(
                downhill, a_k * torch.sqrt(vv) / torch.sqrt(ff).clamp_min(1e-300), torch.zeros_like(a_k)
            )
            keep_v = torch.where(uphill, torch.zeros_like(a_k), 1.0 - mix)
            vu = keep_v[local_batch, None] * vu + scale[local_batch, None] * fu
            vX = keep_v[:, None, None] * vX + scale[:, None, None] * fX
            grow = downhill & (n_k > fire.n_min)
            dt_k = torch.where(grow, torch.clamp(dt_k * fire.f_inc, max=fire.dt_max), dt_k)
            a_k = torch.where(grow, a_k * fire.f_alpha, a_k)
            n_k = torch.where(downhill, n_k + 1, n_k)
            dt_k = torch.where(uphill, dt_k * fire.f_dec, dt_k)
            a_k = torch.where(uphill, torch.full_like(a_k, fire.alpha_start), a_k)
            n_k = torch.where(uphill, torch.zeros_like(n_k), n_k)
            vu = vu + dt_k[local_batch, None] * fu
            vX = vX + dt_k[:, None, None] * fX
            dru, drX = dt_k[local_batch, None] * vu, dt_k[:, None, None] * vX
            norm = torch.sqrt(_segment_sum((dru * dru).sum(1), local_batch, K) + (drX * drX).sum((1, 2)))
            shrink = torch.where(norm > fire.max_step, fire.max_step / norm.clamp_min(1e-300), torch.ones_like(norm))
            u[k_atoms] = u[k_atoms] + shrink[local_batch, None] * dru
            if cfg.relax_cell:
                X[k_idx] = X[k_idx] + shrink[:, None, None] * drX
            v_u[k_atoms], v_X[k_idx] = vu, vX
            alpha[k_idx], dt[k_idx], n_pos[k_idx] = a_k, dt_k, n_k
            first[k_idx] = False
            steps[k_idx] += 1
        active = [b for b, done in zip(active, finished.tolist(), strict=True) if not done]

    if any(f is not None for f in failures):  # no energy to trust for a stopped crystal
        energy[torch.tensor([f is not None for f in failures], dtype=torch.bool, device=device)] = float("nan")
    lat_final = _lattices(cell0, X, c) if cfg.relax_cell else cell0
    frac_final = torch.einsum("ni,nij->nj", u, cell0_inv[work.batch])
    final = work.with_positions(frac_final, lat_final)
    final.crystal_properties = {**final.crystal_properties, "energy": energy.clone()}
    final.atom_properties = {**final.atom_properties, "forces": forces.clone()}
    trajectory: list[tuple[int, CrystalBatch]] = []
    if cfg.trajectory_every:
        last = int(steps.max())
        frames.setdefault(last, _Frame.empty(work))
        for k in sorted(frames):
            frame = frames[k]
            todo = ~frame.filled  # crystals that stopped before step k: their final state
            frame.fill(todo, work, u, X, energy)
            trajectory.append((k, _snapshot(work, frame.u, frame.X, cell0, cell0_inv, c, frame.energy, cfg.relax_cell)))
    return RelaxResult(final, energy, forces, stress, converged, steps, trajectory, failures)


def _sanity(
    cfg: RelaxConfig,
    sub: CrystalBatch,
    idx: torch.Tensor,
    e_sub: torch.Tensor,
    non_finite: torch.Tensor,
    vol: torch.Tensor,
    vol0: torch.Tensor,
    h0: torch.Tensor,
    seen: torch.Tensor,
    steps: torch.Tensor,
    failures: list[str | None],
    name: str,
) -> torch.Tensor:
    """(K,) bool: the evaluated crystals ``idx`` (volumes ``vol``, starting volumes ``vol0``,
    Å³) that leave the sane range of ``cfg``; their reasons go to ``failures``. The first
    evaluation of a crystal sets its reference energy (enthalpy) per atom ``h0``."""
    n = sub.num_atoms.to(e_sub.dtype)
    h = (e_sub + cfg.scalar_pressure * vol) / n
    new = ~seen[idx]
    h0[idx[new]] = h[new]
    seen[idx] = True
    change = h - h0[idx]
    ratio = vol / vol0
    what = "enthalpy" if cfg.scalar_pressure else "energy"
    failed = non_finite.clone()
    if cfg.max_volume_factor is not None:
        failed |= ~((ratio >= 1 / cfg.max_volume_factor) & (ratio <= cfg.max_volume_factor))
    if cfg.max_energy_rise_per_atom is not None:
        failed |= change > cfg.max_energy_rise_per_atom
    if cfg.max_energy_drop_per_atom is not None:
        failed |= -change > cfg.max_energy_drop_per_atom
    if not bool(failed.any()):  # one synchronisation per evaluation; the reasons only for the failed
        return failed
    for k in failed.nonzero(as_tuple=True)[0].tolist():
        b, step = int(idx[k]), int(steps[idx[k]])
        reason = None
        if bool(non_finite[k]):
            reason = f"potential {name!r} returned a non-finite energy or forces"
        elif cfg.max_volume_factor is not None and not (
            1 / cfg.max_volume_factor <= float(ratio[k]) <= cfg.max_volume_factor
        ):
            reason = (
                f"the cell volume left the sane range: {float(vol0[k]):.4g} -> {float(vol[k]):.4g} Å^3 "
                f"(x{float(ratio[k]):.3g}, max_volume_factor={cfg.max_volume_factor:g}); a runaway cell, e.g. a "
                f"stress of potential {name!r} with the wrong sign or unit"
            )
        elif cfg.max_energy_rise_per_atom is not None and float(change[k]) > cfg.max_energy_rise_per_atom:
            reason = (
                f"the {what} rose by {float(change[k]):.4g} eV/atom above its start "
                f"(max_energy_rise_per_atom={cfg.max_energy_rise_per_atom:g}); a relaxation goes downhill: forces or "
                f"stress of potential {name!r} inconsistent with its energy (e.g. a wrong stress sign)"
            )
        elif cfg.max_energy_drop_per_atom is not None and -float(change[k]) > cfg.max_energy_drop_per_atom:
            reason = (
                f"the {what} fell by {-float(change[k]):.4g} eV/atom below its start "
                f"(max_energy_drop_per_atom={cfg.max_energy_drop_per_atom:g}); an unphysical hole of potential "
                f"{name!r} (e.g. atoms collapsing onto each other)"
            )
        failures[b] = f"relaxation stopped at FIRE step {step}: {reason}"
    return failed


def _lattices(cell0: torch.Tensor, X: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) lattices ``cell₀ Fᵀ`` with ``F = exp(X / c)``."""
    lattices: torch.Tensor = cell0 @ _expm(X / c[:, None, None]).transpose(1, 2)
    return lattices


@dataclass
class _Frame:
    """One trajectory frame being assembled: each crystal's state at its own step ``k``
    (or its final state when it stopped before ``k``)."""

    u: torch.Tensor
    X: torch.Tensor
    energy: torch.Tensor
    filled: torch.Tensor

    @classmethod
    def empty(cls, work: CrystalBatch) -> _Frame:
        B, N, dtype, device = len(work), work.num_nodes, work.dtype, work.device
        return cls(
            torch.zeros((N, 3), dtype=dtype, device=device),
            torch.zeros((B, 3, 3), dtype=dtype, device=device),
            torch.zeros(B, dtype=dtype, device=device),
            torch.zeros(B, dtype=torch.bool, device=device),
        )

    def fill(
        self, crystals: torch.Tensor, work: CrystalBatch, u: torch.Tensor, X: torch.Tensor, energy: torch.Tensor
    ) -> None:
        """Copy the current state of ``crystals`` ((B,) bool mask)."""
        atoms = crystals[work.batch]
        self.u[atoms] = u[atoms]
        self.X[crystals] = X[crystals]
        self.energy[crystals] = energy[crystals]
        self.filled |= crystals


def _record(
    frames: dict[int, _Frame],
    own_steps: torch.Tensor,
    idx: torch.Tensor,
    every: int,
    work: CrystalBatch,
    u: torch.Tensor,
    X: torch.Tensor,
    energy: torch.Tensor,
) -> None:
    """Store the state of the evaluated crystals ``idx`` whose own step is a multiple of ``every``."""
    due = own_steps % every == 0
    if not due.any():
        return
    for k in torch.unique(own_steps[due]).tolist():
        mask = torch.zeros(len(work), dtype=torch.bool, device=work.device)
        mask[idx[due & (own_steps == k)]] = True
        frames.setdefault(int(k), _Frame.empty(work)).fill(mask, work, u, X, energy)


def _snapshot(
    work: CrystalBatch,
    u: torch.Tensor,
    X: torch.Tensor,
    cell0: torch.Tensor,
    cell0_inv: torch.Tensor,
    c: torch.Tensor,
    energy: torch.Tensor,
    relax_cell: bool,
) -> CrystalBatch:
    lat = cell0 @ _expm(X / c[:, None, None]).transpose(1, 2) if relax_cell else cell0
    frac = torch.einsum("ni,nij->nj", u, cell0_inv[work.batch])
    snap = work.with_positions(frac.clone(), lat.clone())
    snap.crystal_properties = {"energy": energy.clone()}
    snap.atom_properties = {}
    return snap
