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

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from ase.data import atomic_masses
from ase.units import fs as ASE_FS
from ase.units import kB as ASE_KB
from pydantic import Field, ValidationError, model_validator

from crystal.batch import CrystalBatch
from crystal.config import StrictModel, field_hint
from crystal.errors import ConfigError, StructureError

if TYPE_CHECKING:
    from crystal.components import Potential

__all__ = ["MDConfig", "MDResult", "MDState", "maxwell_boltzmann_velocities", "run_md"]

DEFAULT_FRICTION = 0.01  # 1/fs, used for nvt-langevin when no friction is given


class MDConfig(StrictModel):
    """What to integrate, for how long and at which temperature."""

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

    @model_validator(mode="after")
    def _check_friction(self) -> MDConfig:
        if self.ensemble == "nve" and self.friction is not None:
            raise ValueError("friction is only used by ensemble 'nvt-langevin', not 'nve'")
        return self


@dataclass
class MDState:
    """What the callback sees every ``log_every`` steps (views: copy what you keep).

    ``step`` steps done; ``batch`` current crystals; ``velocities`` (N, 3) Å/fs;
    ``potential_energy``, ``kinetic_energy`` (B,) eV; ``temperature`` (B,) K.
    """

    step: int
    batch: CrystalBatch
    velocities: torch.Tensor
    potential_energy: torch.Tensor
    kinetic_energy: torch.Tensor
    temperature: torch.Tensor


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
    """

    batch: CrystalBatch
    velocities: torch.Tensor
    forces: torch.Tensor
    steps: torch.Tensor
    total_energy: torch.Tensor
    potential_energy: torch.Tensor
    kinetic_energy: torch.Tensor
    temperature: torch.Tensor


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
                else e["msg"]
            )
            for e in exc.errors()
        )
        raise ConfigError(f"md: {problems}") from None


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
    an :class:`MDState`. The batch is moved to the potential's device once; work stays
    there. Bad options raise :class:`ConfigError`; NaN coordinates or non-finite
    energies/forces raise :class:`StructureError`.
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

    dt = cfg.timestep * ASE_FS  # ASE time units
    if velocities is not None:
        if tuple(velocities.shape) != (N, 3):
            raise ConfigError(f"md: velocities must have shape ({N}, 3), got {tuple(velocities.shape)}")
        v = velocities.to(device=device, dtype=dtype) / ASE_FS
    else:
        t0 = cfg.temperature if cfg.init_temperature is None else cfg.init_temperature
        v = _mb_velocities(work, masses, t0, seeds) if t0 > 0 else torch.zeros((N, 3), dtype=dtype, device=device)

    lat = work.lattices
    lat_inv = torch.linalg.inv(lat)[work.batch]  # (N, 3, 3)
    pbc = work.pbc[work.batch]  # (N, 3)
    x = work.cart_coords.clone()
    inv_m = (1.0 / masses)[:, None]
    n_atoms = work.num_atoms.to(dtype)
    local = _local_index(work)
    langevin = cfg.ensemble == "nvt-langevin"
    if langevin:
        gamma = (cfg.friction if cfg.friction is not None else DEFAULT_FRICTION) / ASE_FS
        c1 = math.exp(-gamma * dt)
        c2 = math.sqrt(max(0.0, 1.0 - c1 * c1))
        sigma = torch.sqrt(ASE_KB * cfg.temperature * inv_m)  # (N, 1), Å/(ASE time)

    def frac_of(pos: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ni,nij->nj", pos, lat_inv)

    def evaluate(pos: torch.Tensor) -> tuple[CrystalBatch, torch.Tensor, torch.Tensor]:
        current = work.with_positions(frac_of(pos), lat)
        out = potential.compute(current, forces=True, stress=False)
        if out.forces is None:
            raise StructureError(f"potential {potential.name!r} returned no forces")
        return current, out.energy.to(dtype), out.forces.to(dtype)

    def kinetic(vel: torch.Tensor) -> torch.Tensor:
        return _segment_sum(0.5 * masses * (vel * vel).sum(1), work.batch, B)

    def check(energy: torch.Tensor, forces: torch.Tensor, step: int) -> None:
        if not torch.isfinite(energy).all() or not torch.isfinite(forces).all():
            bad = torch.nonzero(~torch.isfinite(energy)).flatten().tolist()
            ids = [work.ids[i] for i in bad]
            raise StructureError(
                f"md: potential {potential.name!r} returned non-finite energy/forces at step {step}"
                f" for {ids or 'some crystals'}"
            )

    current, energy, forces = evaluate(x)
    check(energy, forces, 0)
    log_e: list[torch.Tensor] = []
    log_k: list[torch.Tensor] = []
    log_steps: list[int] = []
    for step in range(1, cfg.steps + 1):
        v = v + (0.5 * dt) * forces * inv_m
        if langevin:
            x = x + (0.5 * dt) * v
            xi = _normals(seeds, work, local, step, dtype)
            v = c1 * v + c2 * sigma * xi
            x = x + (0.5 * dt) * v
        else:
            x = x + dt * v
        if cfg.wrap:
            frac = frac_of(x)
            frac = torch.where(pbc, frac - torch.floor(frac), frac)
            x = torch.einsum("ni,nij->nj", frac, lat[work.batch])
        current, energy, forces = evaluate(x)
        v = v + (0.5 * dt) * forces * inv_m
        if step % cfg.log_every == 0:
            check(energy, forces, step)
            ke = kinetic(v)
            log_e.append(energy)
            log_k.append(ke)
            log_steps.append(step)
            if callback is not None:
                temp = 2.0 * ke / (3.0 * n_atoms * ASE_KB)
                callback(MDState(step, current, v * ASE_FS, energy, ke, temp))
    check(energy, forces, cfg.steps)

    pe_t = torch.stack(log_e) if log_e else torch.zeros((0, B), dtype=dtype, device=device)
    ke_t = torch.stack(log_k) if log_k else torch.zeros((0, B), dtype=dtype, device=device)
    final = work.with_positions(frac_of(x), lat)
    final.crystal_properties = {**final.crystal_properties, "energy": energy.clone()}
    final.atom_properties = {**final.atom_properties, "forces": forces.clone()}
    return MDResult(
        batch=final,
        velocities=v * ASE_FS,
        forces=forces,
        steps=torch.tensor(log_steps, dtype=torch.long, device=device),
        total_energy=pe_t + ke_t,
        potential_energy=pe_t,
        kinetic_energy=ke_t,
        temperature=2.0 * ke_t / (3.0 * n_atoms * ASE_KB),
    )
