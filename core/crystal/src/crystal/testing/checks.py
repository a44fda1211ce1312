"""Assertions for plugin authors: invariance, equivariance and energy/force consistency.

All helpers take a callable or a Potential and a :class:`~crystal.CrystalBatch`; they raise
``AssertionError`` with the largest deviation in the message.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from crystal.batch import CrystalBatch
from crystal.components import Potential
from crystal.testing.transforms import rotate

__all__ = [
    "assert_equivariant_forces",
    "assert_forces_match_finite_differences",
    "assert_invariant",
    "assert_stress_matches_finite_differences",
]


def _close(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float, what: str) -> None:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if a.shape != b.shape:
        raise AssertionError(f"{what}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    if not torch.allclose(a, b, atol=atol, rtol=rtol):
        dev = (a - b).abs().max().item()
        raise AssertionError(f"{what}: max deviation {dev:.3e} exceeds atol={atol:g}, rtol={rtol:g}")


def assert_invariant(
    fn: Callable[[CrystalBatch], torch.Tensor],
    batch: CrystalBatch,
    transform: Callable[[CrystalBatch], CrystalBatch],
    *,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    scale: torch.Tensor | float = 1.0,
) -> None:
    """``fn(transform(batch)) == scale * fn(batch)`` for a per-crystal quantity ``fn``.

    Use ``scale`` for extensive quantities under a supercell (e.g. ``8.0`` for a 2×2×2).
    """
    _close(
        fn(transform(batch)),
        fn(batch) * scale,
        atol,
        rtol,
        f"invariance under {getattr(transform, '__name__', transform)}",
    )


def assert_equivariant_forces(
    potential: Potential,
    batch: CrystalBatch,
    R: torch.Tensor,
    *,
    atol: float = 1e-5,
    rtol: float = 1e-4,
) -> None:
    """Forces rotate with the crystal (``F(Rx) = R F(x)``) and stress as ``R σ Rᵀ``."""
    out = potential.compute(batch, forces=True, stress=True)
    out_r = potential.compute(rotate(batch, R), forces=True, stress=True)
    Rt = R.to(dtype=out.energy.dtype, device=out.energy.device)
    _close(out_r.energy, out.energy, atol, rtol, "energy under rotation")
    assert out.forces is not None and out_r.forces is not None
    _close(out_r.forces, out.forces.to(Rt.dtype) @ Rt.T, atol, rtol, "forces under rotation")
    if out.stress is not None and out_r.stress is not None:
        _close(out_r.stress, Rt @ out.stress.to(Rt.dtype) @ Rt.T, atol, rtol, "stress under rotation")


def assert_forces_match_finite_differences(
    potential: Potential, batch: CrystalBatch, *, delta: float = 1e-4, atol: float = 1e-4, max_atoms: int = 6
) -> None:
    """Forces equal ``−∂E/∂r`` by central differences (run in float64), on the first atoms."""
    batch = batch.to(dtype=torch.float64)
    forces = potential.compute(batch, forces=True, stress=False).forces
    assert forces is not None
    inv = torch.linalg.inv(batch.lattices)
    for atom in range(min(batch.num_nodes, max_atoms)):
        b = int(batch.batch[atom])
        for k in range(3):
            disp = torch.zeros(3, dtype=torch.float64, device=batch.device)
            disp[k] = delta
            energies = []
            for sign in (1.0, -1.0):
                frac = batch.frac_coords.clone()
                frac[atom] += sign * disp @ inv[b]
                energies.append(potential.energy(batch.with_positions(frac, batch.lattices))[b])
            fd = -(energies[0] - energies[1]) / (2 * delta)
            _close(forces[atom, k], fd, atol, 1e-3, f"force on atom {atom}, axis {k}")


def assert_stress_matches_finite_differences(
    potential: Potential, batch: CrystalBatch, *, delta: float = 1e-5, atol: float = 1e-5
) -> None:
    """Stress equals ``(1/V) ∂E/∂ε`` by central differences over symmetric strains (float64)."""
    batch = batch.to(dtype=torch.float64)
    stress = potential.compute(batch, forces=False, stress=True).stress
    assert stress is not None
    vol = batch.volumes
    for i in range(3):
        for j in range(i, 3):
            eps = torch.zeros((3, 3), dtype=torch.float64, device=batch.device)
            eps[i, j] = eps[j, i] = delta / 2 if i != j else delta
            energies = []
            for sign in (1.0, -1.0):
                deform = torch.eye(3, dtype=torch.float64, device=batch.device) + sign * eps
                energies.append(potential.energy(batch.with_positions(batch.frac_coords, batch.lattices @ deform)))
            fd = (energies[0] - energies[1]) / (2 * delta) / vol
            _close(stress[:, i, j], fd, atol, 1e-3, f"stress component ({i}, {j})")
