"""Symmetry operations on a CrystalBatch that must not change physics.

Each returns a new batch describing the same infinite crystals:

* :func:`rotate` — rigid rotation of lattice (and Cartesian positions) by ``R`` (3, 3);
  fractional coordinates are unchanged.
* :func:`translate` — rigid translation by a Cartesian vector per crystal.
* :func:`permute` — reorder the atoms of every crystal.
* :func:`supercell` — repeat each crystal ``(n1, n2, n3)`` times (extensive quantities scale).
* :func:`unimodular_recell` — another choice of cell of the same lattice (integer matrix
  with determinant ±1), atoms wrapped into the new cell.
"""

from __future__ import annotations

import torch

from crystal.batch import CrystalBatch

__all__ = ["permute", "random_rotation", "rotate", "supercell", "translate", "unimodular_recell"]


def random_rotation(generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A uniformly random proper rotation matrix (3, 3) (QR of a Gaussian matrix)."""
    a = torch.randn((3, 3), generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r))[None, :]
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    rotation: torch.Tensor = q.to(dtype)
    return rotation


def rotate(batch: CrystalBatch, R: torch.Tensor) -> CrystalBatch:
    """Rotate every crystal: row vectors ``x → x Rᵀ`` (so column vectors ``x → R x``)."""
    R = R.to(dtype=batch.dtype, device=batch.device)
    return batch.with_positions(batch.frac_coords.clone(), batch.lattices @ R.T)


def translate(batch: CrystalBatch, shift: torch.Tensor) -> CrystalBatch:
    """Translate crystal ``b`` by the Cartesian vector ``shift[b]`` (or one (3,) vector for all)."""
    shift = shift.to(dtype=batch.dtype, device=batch.device)
    if shift.ndim == 1:
        shift = shift.expand(len(batch), 3)
    frac_shift = torch.linalg.solve(batch.lattices.transpose(1, 2), shift[..., None])[..., 0]  # (B, 3)
    return batch.with_positions(batch.frac_coords + frac_shift[batch.batch], batch.lattices.clone())


def permute(batch: CrystalBatch, generator: torch.Generator | None = None) -> tuple[CrystalBatch, torch.Tensor]:
    """Randomly reorder atoms within each crystal; returns ``(batch, perm)`` with
    ``new[k] = old[perm[k]]``."""
    keys = torch.rand(batch.num_nodes, generator=generator).to(batch.device)
    order = torch.argsort(batch.batch.double() * 2 + keys.double())
    new = CrystalBatch(
        atomic_numbers=batch.atomic_numbers[order],
        frac_coords=batch.frac_coords[order],
        lattices=batch.lattices.clone(),
        num_atoms=batch.num_atoms.clone(),
        pbc=batch.pbc.clone(),
        crystal_properties=dict(batch.crystal_properties),
        atom_properties={k: v[order] for k, v in batch.atom_properties.items()},
        ids=list(batch.ids),
        info=list(batch.info),
    )
    return new, order


def supercell(batch: CrystalBatch, reps: tuple[int, int, int] = (2, 2, 2)) -> CrystalBatch:
    """Repeat every crystal ``reps`` times along its lattice vectors (atoms stay grouped per crystal).

    ``crystal_properties`` (per-crystal inputs such as a temperature) are copied unchanged;
    extensive labels must be scaled by the caller.
    """
    n = torch.tensor(reps, device=batch.device)
    m = int(n.prod())
    cells = torch.cartesian_prod(*(torch.arange(int(k), device=batch.device) for k in reps)).to(batch.dtype)  # (m, 3)
    # new atom order: crystal by crystal, image by image, atom by atom
    ptr = batch.ptr
    atom_crystal = torch.repeat_interleave(torch.arange(len(batch), device=batch.device), batch.num_atoms * m)
    local = torch.arange(batch.num_nodes * m, device=batch.device) - torch.repeat_interleave(
        ptr[:-1] * m, batch.num_atoms * m
    )
    n_here = batch.num_atoms[atom_crystal]
    image = torch.div(local, n_here, rounding_mode="floor")
    src = ptr[:-1][atom_crystal] + local % n_here
    frac = (batch.frac_coords[src] + cells[image]) / n.to(batch.dtype)
    return CrystalBatch(
        atomic_numbers=batch.atomic_numbers[src],
        frac_coords=frac,
        lattices=batch.lattices * n.to(batch.dtype)[None, :, None],
        num_atoms=batch.num_atoms * m,
        pbc=batch.pbc.clone(),
        crystal_properties=dict(batch.crystal_properties),
        atom_properties={k: v[src] for k, v in batch.atom_properties.items()},
        ids=list(batch.ids),
        info=list(batch.info),
    )


def unimodular_recell(batch: CrystalBatch, M: torch.Tensor | None = None) -> CrystalBatch:
    """Same lattice, another basis: ``L' = M L`` with integer ``M``, ``det M = ±1``.

    Fractional coordinates become ``f' = f M⁻¹`` wrapped into [0, 1). The default ``M`` is a
    shear that makes the cell visibly skewed.
    """
    if M is None:
        M = torch.tensor([[1, 1, 0], [0, 1, 0], [0, 1, 1]])
    M = M.to(dtype=batch.dtype, device=batch.device)
    if abs(abs(float(torch.det(M))) - 1.0) > 1e-9 or not torch.equal(M, torch.round(M)):
        raise ValueError("M must be an integer matrix with determinant ±1")
    frac = batch.frac_coords @ torch.linalg.inv(M)
    frac = frac - torch.floor(frac)
    return batch.with_positions(frac, M @ batch.lattices)
