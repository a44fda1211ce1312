"""Assertions for plugin authors: invariance, equivariance and energy/force consistency.

All helpers take a callable or a Potential and a :class:`~crystal.CrystalBatch`; they raise
``AssertionError`` with the largest deviation in the message.

For a potential, :func:`check_potential_symmetries` runs every symmetry check in one call
(rotation, translation, permutation, supercell extensivity, float32/float64 requests)::

    from crystal.testing import check_potential_symmetries

    def test_symmetries(pot, batch):
        # float32 model: tolerances from measured round-off
        check_potential_symmetries(pot, batch, atol=1e-4, rtol=0, stress_atol=1e-6)

Each check is also available alone (:func:`assert_equivariant_forces`,
:func:`assert_translation_invariant`, :func:`assert_permutation_invariant`,
:func:`assert_supercell_extensive`, :func:`assert_dtype_follows_input`). Tolerances: ``atol``
and ``rtol`` apply to energies (eV); ``forces_atol`` (eV/Å) and ``stress_atol`` (eV/Å³)
default to ``atol``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from crystal.batch import CrystalBatch
from crystal.components import Potential, PotentialOutput
from crystal.testing.transforms import permute, random_rotation, rotate, supercell, translate

__all__ = [
    "assert_close",
    "assert_dtype_follows_input",
    "assert_equivariant_forces",
    "assert_forces_match_finite_differences",
    "assert_invariant",
    "assert_outputs_close",
    "assert_permutation_invariant",
    "assert_stress_matches_finite_differences",
    "assert_supercell_extensive",
    "assert_translation_invariant",
    "check_potential_symmetries",
]


def assert_close(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float, what: str) -> None:
    """``a`` and ``b`` have the same shape and agree within ``atol + rtol * |b|`` (in float64).

    Raises ``AssertionError`` starting with ``what`` and giving the largest deviation.
    """
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
    assert_close(
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
    forces_atol: float | None = None,
    stress_atol: float | None = None,
) -> None:
    """Energy is invariant, forces rotate with the crystal (``F(Rx) = R F(x)``) and stress as ``R σ Rᵀ``."""
    out = potential.compute(batch, forces=True, stress=True)
    out_r = potential.compute(rotate(batch, R), forces=True, stress=True)
    Rt = R.to(dtype=out.energy.dtype, device=out.energy.device)
    f_atol, s_atol = _or(forces_atol, atol), _or(stress_atol, atol)
    assert_close(out_r.energy, out.energy, atol, rtol, "energy under rotation")
    assert out.forces is not None and out_r.forces is not None
    assert_close(out_r.forces, out.forces.to(Rt.dtype) @ Rt.T, f_atol, rtol, "forces under rotation")
    if out.stress is not None and out_r.stress is not None:
        assert_close(out_r.stress, Rt @ out.stress.to(Rt.dtype) @ Rt.T, s_atol, rtol, "stress under rotation")


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
            assert_close(forces[atom, k], fd, atol, 1e-3, f"force on atom {atom}, axis {k}")


def assert_stress_matches_finite_differences(
    potential: Potential,
    batch: CrystalBatch,
    *,
    delta: float = 1e-5,
    atol: float = 1e-5,
    rtol: float = 1e-3,
) -> None:
    """Stress equals ``σ = (1/V) ∂E/∂ε`` by central differences over symmetric strains (float64).

    Every independent component ``(i, j)`` of a symmetric strain ``ε`` (``ε_ij = ε_ji = δ/2``
    off the diagonal, ``δ`` on it) is applied to the cell and, through the fractional
    coordinates, to the positions (``L' = L (I ± ε)``); the energies of the ``6 · 2 · B``
    strained crystals are evaluated in one batch and ``(E₊ − E₋) / (2 δ V)`` is compared with
    the potential's stress, component by component, within ``atol + rtol · |σ_fd|`` (eV/Å³).

    The error message states crystal's convention (eV/Å³, ASE sign, total energy over the
    volume) and, when the potential's stress is a multiple of the finite differences, names the
    likely mistake (flipped sign, divided by the atom count, GPa, the virial ``-V σ``, ...).
    Use a strained, non-cubic cell (as :func:`crystal.testing.contracts.check_potential` does):
    at an equilibrium the stress is near zero and a wrong sign or scale goes unnoticed.
    """
    batch = batch.to(dtype=torch.float64)
    if len(batch) == 0:
        return
    stress = potential.compute(batch, forces=False, stress=True).stress
    assert stress is not None, f"potential {potential.name!r} returned no stress when asked for it"
    device, B = batch.device, len(batch)
    eye = torch.eye(3, dtype=torch.float64, device=device)
    comps = [(i, j) for i in range(3) for j in range(i, 3)]
    strained = []
    for i, j in comps:
        eps = torch.zeros((3, 3), dtype=torch.float64, device=device)
        eps[i, j] = eps[j, i] = delta / 2 if i != j else delta
        for sign in (1.0, -1.0):
            strained.append(batch.with_positions(batch.frac_coords, batch.lattices @ (eye + sign * eps)))
    energies = potential.energy(CrystalBatch.concat(strained)).detach().double().reshape(len(comps), 2, B)
    vol = batch.volumes.detach().double()
    fd = torch.zeros((B, 3, 3), dtype=torch.float64, device=device)
    for k, (i, j) in enumerate(comps):
        fd[:, i, j] = fd[:, j, i] = (energies[k, 0] - energies[k, 1]) / (2 * delta) / vol
    got = stress.detach().double().to(device)
    bad = (got - fd).abs() > atol + rtol * fd.abs()
    if not bool(bad.any()):
        return
    b, i, j = (int(x) for x in bad.nonzero()[0])
    dev = float((got - fd).abs().max())
    hint = _stress_hint(got, fd, batch.num_atoms.to(torch.float64), vol, atol)
    raise AssertionError(
        f"stress of potential {potential.name!r} does not match finite differences of its energy under strain: "
        f"max deviation {dev:.3e} eV/Å³ exceeds atol={atol:g} + rtol={rtol:g}·|σ_fd|; e.g. crystal "
        f"{batch.ids[b]!r} ({int(batch.num_atoms[b])} atoms, V = {float(vol[b]):.4g} Å³), component ({i}, {j}): "
        f"stress {float(got[b, i, j]):.6g}, (1/V) ∂E/∂ε {float(fd[b, i, j]):.6g} eV/Å³.{hint} {STRESS_CONVENTION}"
    )


#: crystal's stress convention, as the stress checks state it
STRESS_CONVENTION = (
    "crystal's convention (crystal.PotentialOutput.stress): σ = (1/V) ∂E/∂ε in eV/Å³, the derivative of the total "
    "energy E (eV) with respect to a symmetric strain ε of cell and positions, divided by the cell volume V (Å³), "
    "ASE sign (positive = tensile: the cell wants to shrink); not GPa, not per atom, not the virial −V σ."
)

_GPA = 160.21766208  # GPa per eV/Å³


def _stress_hint(got: torch.Tensor, fd: torch.Tensor, num_atoms: torch.Tensor, vol: torch.Tensor, atol: float) -> str:
    """A likely mistake when ``got`` is, crystal by crystal, a known multiple of ``fd``; else ''."""
    ratios = []
    for b in range(len(fd)):
        norm2 = float((fd[b] * fd[b]).sum())
        if norm2**0.5 <= 10 * atol:
            continue  # too little stress to tell a scale
        k = float((got[b] * fd[b]).sum()) / norm2
        if float((got[b] - k * fd[b]).norm()) > 0.05 * abs(k) * norm2**0.5:
            return ""  # not a multiple: no single explanation
        ratios.append((b, k))
    if not ratios:
        return ""
    suspects: list[tuple[str, Callable[[int], float]]] = [
        ("its sign is flipped (compressive and tensile swapped)", lambda b: -1.0),
        ("it is divided by the number of atoms (a per-atom stress)", lambda b: 1.0 / float(num_atoms[b])),
        ("it is multiplied by the number of atoms", lambda b: float(num_atoms[b])),
        ("it is not divided by the volume (∂E/∂ε, not (1/V) ∂E/∂ε)", lambda b: float(vol[b])),
        ("it is the virial −V σ, not the stress", lambda b: -float(vol[b])),
        ("it is divided by the volume twice", lambda b: 1.0 / float(vol[b])),
        ("it is in GPa, not eV/Å³ (divide by 160.2)", lambda b: _GPA),
        ("it is in kbar, not eV/Å³ (divide by 1602)", lambda b: 10 * _GPA),
        ("it is in GPa with the sign flipped", lambda b: -_GPA),
    ]
    for text, factor in suspects:
        if all(abs(k - factor(b)) <= 0.05 * abs(factor(b)) for b, k in ratios):
            return f" The stress looks like the finite-difference stress × {ratios[0][1]:.4g}: {text}."
    return ""


# --------------------------------------------------------------------------- potentials
def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def assert_outputs_close(
    actual: PotentialOutput,
    expected: PotentialOutput,
    *,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    forces_atol: float | None = None,
    stress_atol: float | None = None,
    what: str = "outputs",
) -> None:
    """Energies, and forces and stress where both outputs have them, agree field by field.

    Use it to compare two evaluations of the same crystals: batched vs one by one, two
    precisions, a reloaded checkpoint. ``what`` prefixes the error message.
    """
    assert_close(actual.energy, expected.energy, atol, rtol, f"{what}: energy")
    if actual.forces is not None and expected.forces is not None:
        assert_close(actual.forces, expected.forces, _or(forces_atol, atol), rtol, f"{what}: forces")
    if actual.stress is not None and expected.stress is not None:
        assert_close(actual.stress, expected.stress, _or(stress_atol, atol), rtol, f"{what}: stress")


def assert_translation_invariant(
    potential: Potential,
    batch: CrystalBatch,
    shift: torch.Tensor | None = None,
    *,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    forces_atol: float | None = None,
    stress_atol: float | None = None,
) -> None:
    """Moving every atom by the Cartesian ``shift`` (Å; default ``(0.37, -1.21, 2.53)``) leaves
    energy, forces and stress unchanged."""
    if shift is None:
        shift = torch.tensor([0.37, -1.21, 2.53], dtype=torch.float64)
    out = potential.compute(batch, forces=True, stress=True)
    moved = potential.compute(translate(batch, shift), forces=True, stress=True)
    assert_outputs_close(
        moved, out, atol=atol, rtol=rtol, forces_atol=forces_atol, stress_atol=stress_atol, what="under translation"
    )


def assert_permutation_invariant(
    potential: Potential,
    batch: CrystalBatch,
    *,
    seed: int = 0,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    forces_atol: float | None = None,
    stress_atol: float | None = None,
) -> None:
    """Reordering the atoms of every crystal (seeded) leaves energy and stress unchanged and
    reorders the forces with the atoms."""
    out = potential.compute(batch, forces=True, stress=True)
    permuted, order = permute(batch, torch.Generator().manual_seed(seed))
    p_out = potential.compute(permuted, forces=True, stress=True)
    if out.forces is not None:
        out = PotentialOutput(out.energy, out.forces[order.to(out.forces.device)], out.stress)
    assert_outputs_close(
        p_out, out, atol=atol, rtol=rtol, forces_atol=forces_atol, stress_atol=stress_atol, what="under permutation"
    )


def assert_supercell_extensive(
    potential: Potential,
    batch: CrystalBatch,
    reps: tuple[int, int, int] = (2, 2, 2),
    *,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    forces_atol: float | None = None,
    stress_atol: float | None = None,
) -> None:
    """A ``reps`` supercell has ``n1·n2·n3`` times the energy (extensive), the same stress
    (intensive), and every periodic image of an atom feels that atom's force.

    ``atol`` is the energy tolerance of the whole supercell; raise it with the number of atoms
    for a float32 model.
    """
    m = reps[0] * reps[1] * reps[2]
    out = potential.compute(batch, forces=True, stress=True)
    big = potential.compute(supercell(batch, reps), forces=True, stress=True)
    where = f"under a {reps[0]}x{reps[1]}x{reps[2]} supercell"
    assert_close(big.energy, m * out.energy, atol, rtol, f"energy {where} (extensive)")
    if big.stress is not None and out.stress is not None:
        assert_close(big.stress, out.stress, _or(stress_atol, atol), rtol, f"stress {where} (intensive)")
    if big.forces is not None and out.forces is not None:
        # supercell() orders atoms crystal by crystal, image by image, atom by atom
        expected = (
            torch.cat(
                [
                    out.forces[lo:hi].repeat(m, 1)
                    for lo, hi in zip(batch.ptr[:-1].tolist(), batch.ptr[1:].tolist(), strict=True)
                ]
            )
            if len(batch)
            else out.forces
        )
        assert_close(big.forces, expected, _or(forces_atol, atol), rtol, f"forces {where} (same on every image)")


def assert_dtype_follows_input(
    potential: Potential,
    batch: CrystalBatch,
    *,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    forces_atol: float | None = None,
    stress_atol: float | None = None,
) -> None:
    """Outputs come back in the batch's dtype with the documented shapes, for float32 and
    float64 batches alike, and the two agree within the tolerances (set them from the model's
    own precision). Fields that were not requested are ``None``; an empty batch gives empty
    outputs.
    """
    B, N = len(batch), batch.num_nodes
    for dtype in (torch.float32, torch.float64):
        only_e = potential.compute(batch.to(dtype=dtype), forces=False, stress=False)
        assert only_e.forces is None and only_e.stress is None, f"{dtype}: forces/stress returned but not requested"
        assert only_e.energy.dtype == dtype, f"energy is {only_e.energy.dtype} for a {dtype} batch"
        assert only_e.energy.shape == (B,), f"energy shape {tuple(only_e.energy.shape)} != ({B},)"
    out32 = potential.compute(batch.to(dtype=torch.float32), forces=True, stress=True)
    out64 = potential.compute(batch.to(dtype=torch.float64), forces=True, stress=True)
    for out, dtype in ((out32, torch.float32), (out64, torch.float64)):
        assert out.forces is not None and out.forces.shape == (N, 3), f"{dtype}: forces must be (N, 3) = ({N}, 3)"
        assert out.stress is not None and out.stress.shape == (B, 3, 3), f"{dtype}: stress must be (B, 3, 3)"
        assert out.forces.dtype == dtype and out.stress.dtype == dtype, f"forces/stress not {dtype} for a {dtype} batch"
    assert_outputs_close(
        out32, out64, atol=atol, rtol=rtol, forces_atol=forces_atol, stress_atol=stress_atol, what="float32 vs float64"
    )
    empty = potential.compute(CrystalBatch.empty(device=batch.device), forces=True, stress=True)
    assert empty.energy.shape == (0,), f"empty batch: energy shape {tuple(empty.energy.shape)} != (0,)"
    assert empty.forces is not None and empty.forces.shape == (0, 3), "empty batch: forces must be (0, 3)"


def check_potential_symmetries(
    potential: Potential,
    batch: CrystalBatch,
    *,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    forces_atol: float | None = None,
    stress_atol: float | None = None,
    supercell_reps: tuple[int, int, int] = (2, 2, 2),
    supercell_atol: float | None = None,
    supercell_stress_atol: float | None = None,
    dtype_atol: float | None = None,
    seed: int = 0,
) -> None:
    """Every symmetry a potential must respect, in one call.

    * rotation (:func:`assert_equivariant_forces`, a seeded random rotation)
    * translation (:func:`assert_translation_invariant`)
    * permutation of atoms (:func:`assert_permutation_invariant`)
    * supercell extensivity (:func:`assert_supercell_extensive`, ``supercell_reps``; energy
      tolerance ``supercell_atol``, default ``atol`` times the number of images, and stress
      tolerance ``supercell_stress_atol``, default ``stress_atol``)
    * float32 and float64 requests (:func:`assert_dtype_follows_input`): the two agree within
      ``dtype_atol`` (energy, forces and stress alike, plus ``rtol``) when it is given, else
      within the tolerances above; ``dtype_atol=float("inf")`` checks only dtypes and shapes.

    Use float64 and tight tolerances for a float64 model; for a float32 model, set them from
    measured round-off (e.g. ``atol=1e-4, rtol=0, stress_atol=1e-6``).
    """
    tol: dict[str, Any] = dict(atol=atol, rtol=rtol, forces_atol=forces_atol, stress_atol=stress_atol)
    R = random_rotation(torch.Generator().manual_seed(seed), dtype=batch.dtype)
    assert_equivariant_forces(potential, batch, R, **tol)
    assert_translation_invariant(potential, batch, **tol)
    assert_permutation_invariant(potential, batch, seed=seed, **tol)
    m = supercell_reps[0] * supercell_reps[1] * supercell_reps[2]
    assert_supercell_extensive(
        potential,
        batch,
        supercell_reps,
        atol=_or(supercell_atol, m * atol),
        rtol=rtol,
        forces_atol=_or(forces_atol, atol),
        stress_atol=_or(supercell_stress_atol, _or(stress_atol, atol)),
    )
    if dtype_atol is None:
        assert_dtype_follows_input(potential, batch, **tol)
    else:
        assert_dtype_follows_input(potential, batch, atol=dtype_atol, rtol=rtol)
