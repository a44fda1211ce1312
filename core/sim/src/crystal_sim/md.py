"""Batched molecular dynamics at fixed cell: many independent crystals advanced at once.

Integrators (positions are kept in Cartesian Å and mapped to fractional coordinates each
step; one ``Potential.compute(batch, forces=True, stress=False)`` call per step for the
whole batch; no per-crystal Python loop inside a step):

* ``"nve"``: velocity Verlet (the same update as ASE's ``VelocityVerlet``)::

      v ← v + ½Δt F/m;  x ← x + Δt v;  F ← F(x);  v ← v + ½Δt F/m

* ``"nvt-langevin"``: Langevin dynamics with the BAOAB splitting (Leimkuhler & Matthews,
  Appl. Math. Res. Express 2013, 34)::

      B: v ← v + ½Δt F/m
      A: x ← x + ½Δt v
      O: v ← c₁ v + c₂ √(k_B T/m) ξ,   c₁ = exp(−γΔt),  c₂ = √(1 − c₁²)
      A: x ← x + ½Δt v
      F ← F(x);  B: v ← v + ½Δt F/m

  (BAOAB, not ASE's ``Langevin`` scheme: results are statistically, not step-by-step,
  comparable with ASE.)

Units follow ASE (:mod:`ase.units`): energies eV, lengths Å, masses amu (per-atom from
:data:`ase.data.atomic_masses`), internal time ``ase.units.fs`` per fs and ``k_B =
ase.units.kB``. The user-facing time step is in fs, the friction in 1/fs, velocities in
Å/fs. Temperatures are ``2 E_kin / (3 N k_B)`` per crystal (3N degrees of freedom, as ASE's
``Atoms.get_temperature`` without constraints).

Random numbers come from a counter-based generator (a splitmix64 hash of the crystal's
seed, the step, the atom's index *within its crystal* and the component), computed with
integer tensor ops on the device. A crystal's noise therefore depends only on its own seed:
crystal ``b`` of a batch run with ``seed=s`` gives exactly the trajectory it gives when run
alone with ``seed=s + b`` (or pass one seed per crystal as a list).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from ase.data import atomic_masses
from ase.units import fs as ASE_FS
from ase.units import kB as ASE_KB
from pydantic import Field, ValidationError, model_validator

from crystal.batch import CrystalBatch
from crystal.config import field_hint
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

__all__ = ["MDConfig", "MDResult", "MDState", "maxwell_boltzmann_velocities", "run_md"]

DEFAULT_FRICTION = 0.01  # 1/fs, used for nvt-langevin when no friction is given

log = logging.getLogger("crystal_sim.md")


class MDConfig(BatchLimits):
    """What to integrate, for how long, at which temperature, and how many crystals at once."""

    ensemble: Literal["nve", "nvt-langevin"] = Field("nve", description="velocity Verlet or BAOAB Langevin")
    timestep: float = Field(1.0, gt=0, description="time step, fs")
    steps: int = Field(100, ge=0, description="number of MD steps")
    temperature: float = Field(300.0, ge=0, description="K; Langevin bath temperature and default initial temperature")
    friction: float | None = Field(
        None, gt=0, description=f"Langevin friction γ, 1/fs (nvt-langevin only; default {DEFAULT_FRICTION})"
    )
    seed: int | list[int] = Field(
        0, description="random seed; crystal b uses seed + b, or give one seed per crystal as a list"
    )
    init_temperature: float | None = Field(
        None,
        ge=0,
        description="K; Maxwell-Boltzmann initial velocities with zero total momentum per crystal "
        "(0: start at rest; default: `temperature`); ignored when velocities are passed",
    )
    log_every: int = Field(1, ge=1, description="record energies/temperature (and call the callback) every N steps")
    wrap: bool = Field(False, description="wrap positions into the cell along periodic directions every step")
    max_energy_change_per_atom: float | None = Field(
        5.0,
        gt=0,
        description="stop with an error naming the crystals whose total energy (potential + kinetic) per atom "
        "moves more than this from its start, eV/atom, checked every log_every steps (an exploding integration: "
        "too long a timestep, forces inconsistent with the energy, a hole of the potential); None: no bound",
    )

    @model_validator(mode="after")
    def _check_friction(self) -> MDConfig:
        if self.ensemble == "nve" and self.friction is not None:
            raise ValueError("friction is only used by ensemble 'nvt-langevin', not 'nve'")
        return self


@dataclass
class MDState:
    """What the callback sees every ``log_every`` steps for the crystals integrated together
    (views: copy what you keep).

    ``step`` steps done; ``batch`` current crystals; ``velocities`` (N, 3) Å/fs;
    ``potential_energy``, ``kinetic_energy`` (B,) eV; ``temperature`` (B,) K; ``index`` (B,)
    positions of these crystals in the batch given to :func:`run_md` (``None``: all of them).
    """

    step: int
    batch: CrystalBatch
    velocities: torch.Tensor
    potential_energy: torch.Tensor
    kinetic_energy: torch.Tensor
    temperature: torch.Tensor
    index: torch.Tensor | None = None


@dataclass
class MDResult:
    """Outcome of :func:`run_md` for ``B`` crystals (same order as the input).

    ``batch``            final crystals, ``crystal_properties["energy"]`` (eV) and
                         ``atom_properties["forces"]`` (eV/Å) set
    ``velocities``       (N, 3) final velocities, Å/fs
    ``forces``           (N, 3) final forces, eV/Å
    ``steps``            (T,) step numbers of the logged rows (``log_every, 2 log_every, ...``),
                         ``T = steps // log_every``
    ``total_energy``     (T, B) potential + kinetic, eV
    ``potential_energy`` (T, B) eV
    ``kinetic_energy``   (T, B) eV
    ``temperature``      (T, B) K
    ``initial_potential_energy`` (B,) potential energy of the starting structures, eV
    """

    batch: CrystalBatch
    velocities: torch.Tensor
    forces: torch.Tensor
    steps: torch.Tensor
    total_energy: torch.Tensor
    potential_energy: torch.Tensor
    kinetic_energy: torch.Tensor
    temperature: torch.Tensor
    initial_potential_energy: torch.Tensor


# ---------------------------------------------------------------------- random numbers
_MASK64 = (1 << 64) - 1


def _i64(c: int) -> int:
    """An unsigned 64-bit constant as the signed value torch int64 holds."""
    c &= _MASK64
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN = _i64(0x9E3779B97F4A7C15)
_M1 = _i64(0xBF58476D1CE4E5B9)
_M2 = _i64(0x94D049BB133111EB)


def _srl(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 tensors."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64 finaliser (wrapping int64 arithmetic)."""
    x = (x ^ _srl(x, 30)) * _M1
    x = (x ^ _srl(x, 27)) * _M2
    return x ^ _srl(x, 31)


def _normals(
    seeds: torch.Tensor, batch: CrystalBatch, local: torch.Tensor, counter: int, dtype: torch.dtype
) -> torch.Tensor:
    """(N, 3) standard normals that depend only on (crystal seed, counter, atom index in crystal, component)."""
    key = _mix(_mix(seeds + _GOLDEN) + _i64(counter * _GOLDEN))  # (B,)
    comp = torch.arange(3, device=local.device)
    h = _mix(key[batch.batch][:, None] + (local[:, None] * 3 + comp) * _GOLDEN)  # (N, 3)
    h2 = _mix(h + _GOLDEN)
    scale = 2.0**-53
    u1 = _srl(h, 11).to(torch.float64) * scale  # [0, 1)
    u2 = _srl(h2, 11).to(torch.float64) * scale
    z = torch.sqrt(-2.0 * torch.log1p(-u1)) * torch.cos(2.0 * math.pi * u2)  # Box-Muller
    return z.to(dtype)


def _crystal_seeds(seed: int | Sequence[int], num: int, device: torch.device) -> torch.Tensor:
    if isinstance(seed, int):
        values = [seed + b for b in range(num)]
    else:
        values = list(seed)
        if len(values) != num:
            raise ConfigError(f"md: {len(values)} seeds given for {num} crystals")
    return torch.tensor([_i64(v) for v in values], dtype=torch.long, device=device)


def _segment_sum(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    out = torch.zeros((size, *values.shape[1:]), dtype=values.dtype, device=values.device)
    return out.index_add_(0, index, values)


def _masses(batch: CrystalBatch) -> torch.Tensor:
    """(N,) atomic masses, amu."""
    table = torch.as_tensor(atomic_masses, dtype=batch.dtype, device=batch.device)
    return table[batch.atomic_numbers]


def _local_index(batch: CrystalBatch) -> torch.Tensor:
    return torch.arange(batch.num_nodes, device=batch.device) - batch.ptr[:-1][batch.batch]


def _mb_velocities(batch: CrystalBatch, masses: torch.Tensor, temperature: float, seeds: torch.Tensor) -> torch.Tensor:
    """Maxwell-Boltzmann velocities in ASE units, zero total momentum per crystal."""
    B = len(batch)
    xi = _normals(seeds, batch, _local_index(batch), -1, batch.dtype)
    v = xi * torch.sqrt(ASE_KB * temperature / masses)[:, None]
    p_tot = _segment_sum(masses[:, None] * v, batch.batch, B)
    m_tot = _segment_sum(masses, batch.batch, B)
    return v - (p_tot / m_tot[:, None])[batch.batch]


def maxwell_boltzmann_velocities(
    batch: CrystalBatch, temperature: float, seed: int | Sequence[int] = 0
) -> torch.Tensor:
    """(N, 3) Maxwell-Boltzmann velocities at ``temperature`` K in Å/fs, zero total momentum
    per crystal; exactly the initial velocities :func:`run_md` draws for the same seed."""
    if temperature < 0:
        raise ConfigError(f"md: temperature must be >= 0, got {temperature}")
    seeds = _crystal_seeds(seed, len(batch), batch.device)
    velocities: torch.Tensor = _mb_velocities(batch, _masses(batch), temperature, seeds) * ASE_FS
    return velocities


def _validate(config: MDConfig | None, overrides: dict[str, object]) -> MDConfig:
    try:
        return MDConfig.model_validate({**(config or MDConfig()).model_dump(), **overrides})
    except ValidationError as exc:
        problems = "; ".join(
            (f"{'.'.join(map(str, e['loc']))}: " if e["loc"] else "")
            + (
                "unknown parameter" + field_hint(MDConfig, tuple(e["loc"]))
                if e["type"] == "extra_forbidden"
                else e["msg"].removeprefix("Value error, ")
            )
            for e in exc.errors()
        )
        raise ConfigError(f"md: {problems}") from None


def _pieces(metrics: list[float], limit: float | None) -> list[tuple[int, int]]:
    """Consecutive ranges ``[start, end)`` of crystals whose metric sums stay within ``limit``
    (a crystal above it alone)."""
    if limit is None:
        return [(0, len(metrics))]
    out: list[tuple[int, int]] = []
    start, total = 0, 0.0
    for k, m in enumerate(metrics):
        if k > start and total + m > limit:
            out.append((start, k))
            start, total = k, 0.0
        total += m
    out.append((start, len(metrics)))
    return out


def run_md(
    potential: Potential,
    batch: CrystalBatch,
    config: MDConfig | None = None,
    *,
    velocities: torch.Tensor | None = None,
    callback: Callable[[MDState], None] | None = None,
    **overrides: object,
) -> MDResult:
    """Integrate every crystal of ``batch`` with ``potential`` at fixed cell.

    ``config`` (or keyword overrides such as ``ensemble="nvt-langevin", temperature=300,
    steps=1000``) follows :class:`MDConfig`. ``velocities`` ((N, 3), Å/fs) replace the
    Maxwell-Boltzmann start. ``callback(state)`` is called every ``log_every`` steps with
    an :class:`MDState` of the crystals integrated together. The batch is moved to the
    potential's device once; work stays there. Bad options raise :class:`ConfigError`; NaN
    coordinates or non-finite energies/forces raise :class:`StructureError`.

    The crystals wait in a queue and are integrated in groups that fit the capacity
    (``max_batch_size`` crystals, ``max_batch_metric`` units of the potential's memory metric,
    by default from its memory model, :mod:`crystal_sim.memory`); each crystal gets its full
    trajectory, which depends neither on the grouping nor on the batch (counter-based noise).
    An out-of-memory error in an evaluation halves the capacity and evaluates the group in
    parts, the state unchanged; alone, a crystal that runs out of memory raises.
    """
    cfg = _validate(config, overrides)
    device = potential.device
    work = batch.to(device)
    dtype = work.dtype
    if not torch.isfinite(work.frac_coords).all() or not torch.isfinite(work.lattices).all():
        raise StructureError("md: coordinates or lattices contain NaN/inf; validate the batch first")
    B, N = len(work), work.num_nodes
    seeds = _crystal_seeds(cfg.seed, B, device)
    masses = _masses(work)
    if (masses <= 0).any():
        raise StructureError("md: atoms without a known mass (atomic number 0?)")

    if velocities is not None:
        if tuple(velocities.shape) != (N, 3):
            raise ConfigError(f"md: velocities must have shape ({N}, 3), got {tuple(velocities.shape)}")
        v_all = velocities.to(device=device, dtype=dtype) / ASE_FS
    else:
        t0 = cfg.temperature if cfg.init_temperature is None else cfg.init_temperature
        v_all = _mb_velocities(work, masses, t0, seeds) if t0 > 0 else torch.zeros((N, 3), dtype=dtype, device=device)

    T = cfg.steps // cfg.log_every
    x_out = torch.zeros((N, 3), dtype=dtype, device=device)
    v_out = torch.zeros((N, 3), dtype=dtype, device=device)
    f_out = torch.zeros((N, 3), dtype=dtype, device=device)
    e_out = torch.zeros(B, dtype=dtype, device=device)
    e0_out = torch.zeros(B, dtype=dtype, device=device)
    pe_log = torch.zeros((T, B), dtype=dtype, device=device)
    ke_log = torch.zeros((T, B), dtype=dtype, device=device)

    metric_name, cutoff = memory_metric_of(potential)
    metrics: list[float] = metric_values(metric_name, work.num_atoms, work.volumes, cutoff).tolist()
    limit = [batch_capacity(potential, dtype, cfg, sum(metrics))]  # a cell: lowered by out-of-memory errors

    def evaluate(current: CrystalBatch, index: list[int], step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Energies and forces of ``current`` (the crystals ``index``), in parts when memory demands."""
        group_metrics = [metrics[b] for b in index]
        while True:
            energies: list[torch.Tensor] = []
            forces: list[torch.Tensor] = []
            try:
                for start, end in _pieces(group_metrics, limit[0]):
                    part = current if (start, end) == (0, len(index)) else current.select(list(range(start, end)))
                    out = potential.compute(part, forces=True, stress=False)
                    if out.forces is None:
                        raise StructureError(f"potential {potential.name!r} returned no forces")
                    energies.append(out.energy.to(dtype))
                    forces.append(out.forces.to(dtype))
                break
            except Exception as exc:
                if not is_out_of_memory(exc) or end - start == 1:
                    raise
            del energies, forces
            free_memory()  # outside the handler: the traceback no longer holds the failed tensors
            total = sum(group_metrics[start:end])
            limit[0] = halved = total / 2
            if cfg.max_batch_metric == "auto":
                note_out_of_memory(potential, dtype, halved)
            log.warning(
                "md with %s: out of memory at step %d on %d crystals (%s %.4g); capacity now %.4g",
                potential.name,
                step,
                end - start,
                metric_name,
                total,
                limit[0],
            )
        return torch.cat(energies), torch.cat(forces)

    waiting: deque[int] = deque(range(B))
    while waiting:
        group = [waiting.popleft()]
        total = metrics[group[0]]
        while waiting and (cfg.max_batch_size is None or len(group) < cfg.max_batch_size):
            m = metrics[waiting[0]]
            if limit[0] is not None and total + m > limit[0]:
                break
            group.append(waiting.popleft())
            total += m
        _integrate(
            potential,
            work,
            group,
            cfg,
            v_all,
            seeds,
            masses,
            evaluate,
            callback,
            (x_out, v_out, f_out, e_out, e0_out, pe_log, ke_log),
        )

    log_steps = [cfg.log_every * (k + 1) for k in range(T)]
    n_atoms = work.num_atoms.to(dtype)
    final = work.with_positions(
        torch.einsum("ni,nij->nj", x_out, torch.linalg.inv(work.lattices)[work.batch]), work.lattices
    )
    final.crystal_properties = {**final.crystal_properties, "energy": e_out.clone()}
    final.atom_properties = {**final.atom_properties, "forces": f_out.clone()}
    return MDResult(
        batch=final,
        velocities=v_out * ASE_FS,
        forces=f_out,
        steps=torch.tensor(log_steps, dtype=torch.long, device=device),
        total_energy=pe_log + ke_log,
        potential_energy=pe_log,
        kinetic_energy=ke_log,
        temperature=2.0 * ke_log / (3.0 * n_atoms * ASE_KB),
        initial_potential_energy=e0_out,
    )


def _integrate(
    potential: Potential,
    work: CrystalBatch,
    index: list[int],
    cfg: MDConfig,
    v_all: torch.Tensor,
    seeds_all: torch.Tensor,
    masses_all: torch.Tensor,
    evaluate: Callable[[CrystalBatch, list[int], int], tuple[torch.Tensor, torch.Tensor]],
    callback: Callable[[MDState], None] | None,
    outputs: tuple[torch.Tensor, ...],
) -> None:
    """Integrate the crystals ``index`` of ``work`` together for ``cfg.steps`` steps and write
    their final state and logs into ``outputs`` (x, v, forces, energy, initial energy, pe/ke logs)."""
    x_out, v_out, f_out, e_out, e0_out, pe_log, ke_log = outputs
    device, dtype = work.device, work.dtype
    idx = torch.tensor(index, dtype=torch.long, device=device)
    whole = len(index) == len(work)
    g = work if whole else work.select(idx)
    chosen = torch.zeros(len(work), dtype=torch.bool, device=device)
    chosen[idx] = True  # index is ascending (the queue is in input order): atoms in the order of g
    atoms = torch.nonzero(chosen[work.batch]).flatten()
    B = len(g)
    seeds = seeds_all[idx]
    masses = masses_all[atoms]
    v = v_all[atoms]
    dt = cfg.timestep * ASE_FS  # ASE time units

    lat = g.lattices
    lat_inv = torch.linalg.inv(lat)[g.batch]  # (N, 3, 3)
    pbc = g.pbc[g.batch]  # (N, 3)
    x = g.cart_coords.clone()
    inv_m = (1.0 / masses)[:, None]
    n_atoms = g.num_atoms.to(dtype)
    local = _local_index(g)
    langevin = cfg.ensemble == "nvt-langevin"
    if langevin:
        gamma = (cfg.friction if cfg.friction is not None else DEFAULT_FRICTION) / ASE_FS
        c1 = math.exp(-gamma * dt)
        c2 = math.sqrt(max(0.0, 1.0 - c1 * c1))
        sigma = torch.sqrt(ASE_KB * cfg.temperature * inv_m)  # (N, 1), Å/(ASE time)

    def frac_of(pos: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ni,nij->nj", pos, lat_inv)

    def kinetic(vel: torch.Tensor) -> torch.Tensor:
        return _segment_sum(0.5 * masses * (vel * vel).sum(1), g.batch, B)

    def check(energy: torch.Tensor, forces: torch.Tensor, step: int, ke: torch.Tensor | None = None) -> None:
        if not torch.isfinite(energy).all() or not torch.isfinite(forces).all():
            bad = torch.nonzero(~torch.isfinite(energy)).flatten().tolist()
            ids = [g.ids[i] for i in bad]
            raise StructureError(
                f"md: potential {potential.name!r} returned non-finite energy/forces at step {step}"
                f" for {ids or 'some crystals'}"
            )
        limit = cfg.max_energy_change_per_atom
        if limit is None or step == 0:
            return
        total = (energy + (kinetic(v) if ke is None else ke)) / n_atoms
        change = total - start_total
        off = change.abs() > limit
        if bool(off.any()):
            bad = torch.nonzero(off).flatten().tolist()
            k = bad[0]
            raise StructureError(
                f"md: the total energy of {[g.ids[i] for i in bad]} left the sane range at step {step}: "
                f"{float(start_total[k]):.4g} -> {float(total[k]):.4g} eV/atom "
                f"(max_energy_change_per_atom={limit:g}); an exploding integration: too long a timestep, "
                f"or forces of potential {potential.name!r} inconsistent with its energy"
            )

    current = g.with_positions(frac_of(x), lat)
    energy, forces = evaluate(current, index, 0)
    check(energy, forces, 0)
    start_total = (energy + kinetic(v)) / n_atoms
    e0_out[idx] = energy
    for step in range(1, cfg.steps + 1):
        v = v + (0.5 * dt) * forces * inv_m
        if langevin:
            x = x + (0.5 * dt) * v
            xi = _normals(seeds, g, local, step, dtype)
            v = c1 * v + c2 * sigma * xi
            x = x + (0.5 * dt) * v
        else:
            x = x + dt * v
        if cfg.wrap:
            frac = frac_of(x)
            frac = torch.where(pbc, frac - torch.floor(frac), frac)
            x = torch.einsum("ni,nij->nj", frac, lat[g.batch])
        current = g.with_positions(frac_of(x), lat)
        energy, forces = evaluate(current, index, step)
        v = v + (0.5 * dt) * forces * inv_m
        if step % cfg.log_every == 0:
            ke = kinetic(v)
            check(energy, forces, step, ke)
            row = step // cfg.log_every - 1
            pe_log[row, idx] = energy
            ke_log[row, idx] = ke
            if callback is not None:
                temp = 2.0 * ke / (3.0 * n_atoms * ASE_KB)
                callback(MDState(step, current, v * ASE_FS, energy, ke, temp, idx))
    check(energy, forces, cfg.steps)
    x_out[atoms] = x
    v_out[atoms] = v
    f_out[atoms] = forces
    e_out[idx] = energy
