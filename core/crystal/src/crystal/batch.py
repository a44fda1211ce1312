"""The batched crystal type that every component consumes and produces.

A :class:`CrystalBatch` holds ``B`` periodic crystals with ``N`` atoms in total as flat,
device-resident tensors (the PyTorch Geometric layout):

=================  ===========  =====  ===============================================
field              shape        dtype  meaning
=================  ===========  =====  ===============================================
atomic_numbers     (N,)         long   Z of every atom
frac_coords        (N, 3)       float  fractional coordinates (not wrapped on purpose)
lattices           (B, 3, 3)    float  lattice vectors as **rows**, Å (pymatgen/ASE)
num_atoms          (B,)         long   atoms per crystal
batch              (N,)         long   index of the crystal each atom belongs to
pbc                (B, 3)       bool   periodicity per lattice direction
crystal_properties {str: (B,…)} any    per-crystal numeric properties (energy, labels)
atom_properties    {str: (N,…)} any    per-atom numeric properties (forces, magmom)
ids                list[str]    –      one identifier per crystal
info               list[dict]   –      per-crystal non-tensor metadata (kept on the CPU)
=================  ===========  =====  ===============================================

Cartesian positions are ``frac_coords @ lattices[batch]`` (Å). Conversions to and from
pymatgen ``Structure`` and ASE ``Atoms`` are lossless: lattice rows are kept exactly (no
re-orientation), numeric site properties travel as ``atom_properties`` and everything else
in ``info``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from crystal.errors import StructureError

if TYPE_CHECKING:
    from ase import Atoms
    from pymatgen.core import Structure

__all__ = ["CrystalBatch"]

_INFO_SITE_KEY = "site_properties"  # non-numeric pymatgen site properties
_INFO_STRUCT_PROPS = "structure_properties"  # pymatgen Structure.properties
_INFO_ASE_INFO = "ase_info"  # ase Atoms.info
_INFO_ASE_ARRAYS = "ase_arrays"  # non-numeric ase arrays


def _as_numeric_tensor(values: Any, dtype: torch.dtype) -> torch.Tensor | None:
    """Return a tensor when ``values`` is a homogeneous numeric array, else ``None``."""
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError):
        return None
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        return None
    if arr.dtype.kind == "f":
        return torch.as_tensor(arr, dtype=dtype)
    if arr.dtype.kind == "b":
        return torch.as_tensor(arr)
    return torch.as_tensor(arr.astype(np.int64))


@dataclass
class CrystalBatch:
    """``B`` periodic crystals as flat tensors; see the module docstring for shapes."""

    atomic_numbers: torch.Tensor
    frac_coords: torch.Tensor
    lattices: torch.Tensor
    num_atoms: torch.Tensor
    batch: torch.Tensor = field(default=None)  # type: ignore[assignment]
    pbc: torch.Tensor = field(default=None)  # type: ignore[assignment]
    crystal_properties: dict[str, torch.Tensor] = field(default_factory=dict)
    atom_properties: dict[str, torch.Tensor] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)
    info: list[dict[str, Any]] = field(default_factory=list)

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        self.num_atoms = torch.as_tensor(self.num_atoms, dtype=torch.long, device=self.lattices.device)
        b = int(self.lattices.shape[0])
        if self.lattices.shape != (b, 3, 3):
            raise StructureError(f"lattices must have shape (B, 3, 3), got {tuple(self.lattices.shape)}")
        if self.num_atoms.shape != (b,):
            raise StructureError(f"num_atoms must have shape ({b},), got {tuple(self.num_atoms.shape)}")
        n = int(self.atomic_numbers.shape[0])
        if self.frac_coords.shape != (n, 3):
            raise StructureError(f"frac_coords must have shape ({n}, 3), got {tuple(self.frac_coords.shape)}")
        if int(self.num_atoms.sum()) != n:
            raise StructureError(f"num_atoms sums to {int(self.num_atoms.sum())} but there are {n} atoms")
        if self.batch is None:
            self.batch = torch.repeat_interleave(torch.arange(b, device=self.lattices.device), self.num_atoms)
        if self.pbc is None:
            self.pbc = torch.ones((b, 3), dtype=torch.bool, device=self.lattices.device)
        if not self.ids:
            self.ids = [str(i) for i in range(b)]
        if len(self.ids) != b:
            raise StructureError(f"{len(self.ids)} ids given for {b} crystals")
        if not self.info:
            self.info = [{} for _ in range(b)]
        if len(self.info) != b:
            raise StructureError(f"{len(self.info)} info dicts given for {b} crystals")

    # ------------------------------------------------------------------ basic views
    def __len__(self) -> int:
        return int(self.lattices.shape[0])

    @property
    def num_crystals(self) -> int:
        """``B``, the number of crystals."""
        return len(self)

    @property
    def num_nodes(self) -> int:
        """``N``, the total number of atoms."""
        return int(self.atomic_numbers.shape[0])

    @property
    def device(self) -> torch.device:
        return self.lattices.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of coordinates and lattices."""
        return self.lattices.dtype

    @property
    def ptr(self) -> torch.Tensor:
        """(B + 1,) offsets of each crystal's first atom (CSR pointer)."""
        return torch.cat([self.num_atoms.new_zeros(1), torch.cumsum(self.num_atoms, 0)])

    @property
    def cart_coords(self) -> torch.Tensor:
        """(N, 3) Cartesian positions in Å: ``frac_coords @ lattices[batch]``."""
        return torch.einsum("ni,nij->nj", self.frac_coords, self.lattices[self.batch])

    @property
    def volumes(self) -> torch.Tensor:
        """(B,) cell volumes in Å³ (absolute value of the lattice determinant)."""
        volumes: torch.Tensor = torch.linalg.det(self.lattices).abs()
        return volumes

    # ------------------------------------------------------------------ tensor ops
    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> CrystalBatch:
        """Copy to ``device`` and/or cast floating tensors to ``dtype`` (integers untouched)."""

        def move(t: torch.Tensor) -> torch.Tensor:
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        return replace(
            self,
            atomic_numbers=move(self.atomic_numbers),
            frac_coords=move(self.frac_coords),
            lattices=move(self.lattices),
            num_atoms=move(self.num_atoms),
            batch=move(self.batch),
            pbc=move(self.pbc),
            crystal_properties={k: move(v) for k, v in self.crystal_properties.items()},
            atom_properties={k: move(v) for k, v in self.atom_properties.items()},
            ids=list(self.ids),
            info=[dict(d) for d in self.info],
        )

    def with_positions(self, frac_coords: torch.Tensor, lattices: torch.Tensor) -> CrystalBatch:
        """Same crystals with new fractional coordinates and lattices (e.g. after relaxation)."""
        return replace(self, frac_coords=frac_coords, lattices=lattices)

    def select(self, index: torch.Tensor | Sequence[int]) -> CrystalBatch:
        """A new batch with the crystals ``index`` (a (K,) long index or (B,) bool mask), in order."""
        idx = torch.as_tensor(index, device=self.device)
        if idx.dtype == torch.bool:
            idx = torch.nonzero(idx, as_tuple=False).flatten()
        idx = idx.long()
        atom_mask_idx = self._atom_index(idx)
        idx_list = idx.tolist()
        return CrystalBatch(
            atomic_numbers=self.atomic_numbers[atom_mask_idx],
            frac_coords=self.frac_coords[atom_mask_idx],
            lattices=self.lattices[idx],
            num_atoms=self.num_atoms[idx],
            pbc=self.pbc[idx],
            crystal_properties={k: v[idx] for k, v in self.crystal_properties.items()},
            atom_properties={k: v[atom_mask_idx] for k, v in self.atom_properties.items()},
            ids=[self.ids[i] for i in idx_list],
            info=[self.info[i] for i in idx_list],
        )

    def _atom_index(self, crystal_index: torch.Tensor) -> torch.Tensor:
        """(M,) indices of the atoms of ``crystal_index``, in crystal order (vectorised)."""
        counts = self.num_atoms[crystal_index]
        starts = self.ptr[:-1][crystal_index]
        offsets = torch.repeat_interleave(starts - torch.cumsum(counts, 0) + counts, counts)
        return torch.arange(int(counts.sum()), device=self.device) + offsets

    @staticmethod
    def concat(batches: Sequence[CrystalBatch]) -> CrystalBatch:
        """Concatenate batches (all on the same device and dtype)."""
        if not batches:
            raise StructureError("cannot concatenate an empty list of batches")
        keys_c = [k for k in batches[0].crystal_properties if all(k in b.crystal_properties for b in batches)]
        keys_a = [k for k in batches[0].atom_properties if all(k in b.atom_properties for b in batches)]
        return CrystalBatch(
            atomic_numbers=torch.cat([b.atomic_numbers for b in batches]),
            frac_coords=torch.cat([b.frac_coords for b in batches]),
            lattices=torch.cat([b.lattices for b in batches]),
            num_atoms=torch.cat([b.num_atoms for b in batches]),
            pbc=torch.cat([b.pbc for b in batches]),
            crystal_properties={k: torch.cat([b.crystal_properties[k] for b in batches]) for k in keys_c},
            atom_properties={k: torch.cat([b.atom_properties[k] for b in batches]) for k in keys_a},
            ids=[i for b in batches for i in b.ids],
            info=[d for b in batches for d in b.info],
        )

    def split(self, size: int) -> Iterator[CrystalBatch]:
        """Yield consecutive sub-batches of at most ``size`` crystals."""
        for start in range(0, len(self), size):
            yield self.select(torch.arange(start, min(start + size, len(self)), device=self.device))

    def validate(self, min_distance: float = 0.5) -> list[str | None]:
        """Physical sanity check per crystal; returns a reason string or ``None`` for each.

        Flags NaN/inf coordinates or lattices, degenerate cells (volume < 1e-6 Å³), empty
        crystals and pairs of atoms (including periodic images in the 27 neighbouring
        cells) closer than ``min_distance`` Å. Vectorised over the batch.
        """
        reasons: list[str | None] = [None] * len(self)
        finite_atoms = torch.isfinite(self.frac_coords).all(dim=1)
        n_bad = torch.zeros(len(self), dtype=torch.long, device=self.device)
        bad_coord = n_bad.index_add_(0, self.batch, (~finite_atoms).long()) > 0
        bad_lat = ~torch.isfinite(self.lattices).flatten(1).all(dim=1)
        vol = torch.where(bad_lat, torch.zeros_like(self.volumes), self.volumes)
        for i in range(len(self)):
            if int(self.num_atoms[i]) == 0:
                reasons[i] = "structure has no atoms"
            elif bool(bad_coord[i]):
                reasons[i] = "coordinates contain NaN or inf"
            elif bool(bad_lat[i]):
                reasons[i] = "lattice contains NaN or inf"
            elif float(vol[i]) < 1e-6:
                reasons[i] = f"degenerate lattice (volume {float(vol[i]):.3g} Å^3)"
        ok = torch.tensor([r is None for r in reasons], device=self.device)
        if ok.any():
            dmin = self.min_distances(ok)
            for i, d in zip(torch.nonzero(ok).flatten().tolist(), dmin.tolist(), strict=True):
                if d < min_distance:
                    reasons[i] = f"atoms closer than {min_distance} Å (minimum distance {d:.3f} Å)"
        return reasons

    def min_distances(self, mask: torch.Tensor | None = None, *, max_pairs: int = 100_000) -> torch.Tensor:
        """(K,) shortest interatomic distance per crystal (periodic images included), Å.

        Time and memory grow linearly with the number of atoms. Small crystals (at most 64
        atoms) are done together, in groups of at most ``max_pairs`` atom pairs, with the
        minimum-image search over the 27 neighbouring cells of the reduced fractional
        difference, which is exact for the nearest pair whenever that pair is shorter than the
        cell's smallest face-to-face width (and crystals with one atom report the shortest
        lattice translation). Larger crystals use a cell list
        (:func:`crystal._cell_list.cell_list_pairs`) with a cutoff that starts at 3 Å and
        doubles until a pair is found.
        """
        from crystal._cell_list import cell_list_pairs

        sub = self if mask is None else self.select(mask)
        out = torch.full((len(sub),), math.inf, dtype=sub.dtype, device=sub.device)
        counts = sub.num_atoms.tolist()
        small = [k for k, n in enumerate(counts) if 0 < n <= 64]
        group: list[int] = []
        pairs = 0
        for k in [*small, -1]:
            if k >= 0 and (not group or pairs + counts[k] ** 2 <= max_pairs):
                group.append(k)
                pairs += counts[k] ** 2
                continue
            if group:
                index = torch.tensor(group, device=sub.device)
                out[index] = sub.select(index)._min_distances_images()
            group, pairs = [k], (counts[k] ** 2 if k >= 0 else 0)
        ptr = sub.ptr.tolist()
        for k, n in enumerate(counts):
            if n <= 64:
                continue
            frac, lattice = sub.frac_coords[ptr[k] : ptr[k + 1]], sub.lattices[k]
            cutoff = 3.0
            while True:
                _i, _j, d = cell_list_pairs(frac, lattice, cutoff)
                if d.numel():
                    out[k] = d.min().to(sub.dtype)
                    break
                cutoff *= 2.0  # the shortest lattice translation is an upper bound: this ends
        return out

    def _min_distances_images(self) -> torch.Tensor:
        """:meth:`min_distances` for small crystals: every pair, 27 images (O(N²) per crystal)."""
        sub = self
        # all intra-crystal atom pairs (including i == j for the self-image distance)
        counts = sub.num_atoms
        pair_counts = counts * counts
        crystal_of_pair = torch.repeat_interleave(torch.arange(len(sub), device=sub.device), pair_counts)
        local = torch.arange(int(pair_counts.sum()), device=sub.device) - torch.repeat_interleave(
            torch.cumsum(pair_counts, 0) - pair_counts, pair_counts
        )
        n_of_pair = counts[crystal_of_pair]
        start = sub.ptr[:-1][crystal_of_pair]
        i = start + torch.div(local, n_of_pair, rounding_mode="floor")
        j = start + local % n_of_pair
        diff = sub.frac_coords[j] - sub.frac_coords[i]
        diff = diff - torch.round(diff)
        shifts = torch.tensor(
            [[a, b, c] for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)],
            dtype=sub.dtype,
            device=sub.device,
        )
        images = diff[:, None, :] + shifts[None, :, :]  # (P, 27, 3)
        cart = torch.einsum("pki,pij->pkj", images, sub.lattices[crystal_of_pair])
        dist = cart.norm(dim=-1)
        same = (i == j)[:, None] & (shifts.abs().sum(dim=1) == 0)[None, :]
        dist = dist.masked_fill(same, math.inf)
        per_pair = dist.min(dim=1).values
        out = torch.full((len(sub),), math.inf, dtype=sub.dtype, device=sub.device)
        return out.scatter_reduce(0, crystal_of_pair, per_pair, "amin", include_self=True)

    # ------------------------------------------------------------------ pymatgen
    @classmethod
    def from_structures(
        cls,
        structures: Iterable[Structure],
        ids: Sequence[str] | None = None,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> CrystalBatch:
        """Build a batch from pymatgen structures (ordered sites only).

        Numeric site properties become ``atom_properties``; others and
        ``Structure.properties`` are kept in ``info`` so that :meth:`to_structures` is
        lossless. Raises :class:`StructureError` on disordered sites.
        """
        structures = list(structures)
        zs, fracs, lats, nums, infos = [], [], [], [], []
        site_props: dict[str, list[torch.Tensor]] = {}
        numeric_keys: set[str] | None = None
        for k, s in enumerate(structures):
            if not s.is_ordered:
                raise StructureError(
                    f"structure {ids[k] if ids else k} has partially occupied sites; "
                    "crystal works on ordered structures (order it first, e.g. OrderDisorderedStructureTransformation)"
                )
            z = [getattr(site.specie, "Z", 0) for site in s]
            if any(not 0 < zi <= 118 for zi in z):
                bad = sorted({str(site.specie) for site, zi in zip(s, z, strict=True) if not 0 < zi <= 118})
                raise StructureError(
                    f"structure {ids[k] if ids else k} has unknown element symbol(s) {', '.join(map(repr, bad))}"
                )
            zs.append(torch.as_tensor(z, dtype=torch.long))
            fracs.append(torch.tensor(np.asarray(s.frac_coords, dtype=np.float64).reshape(-1, 3), dtype=dtype))
            lats.append(torch.tensor(np.asarray(s.lattice.matrix, dtype=np.float64), dtype=dtype))
            nums.append(len(s))
            info: dict[str, Any] = {}
            if s.properties:
                info[_INFO_STRUCT_PROPS] = dict(s.properties)
            non_numeric = {}
            numeric_here = set()
            for key, values in s.site_properties.items():
                t = _as_numeric_tensor(values, dtype)
                if t is None:
                    non_numeric[key] = list(values)
                else:
                    site_props.setdefault(key, []).append(t)
                    numeric_here.add(key)
            numeric_keys = numeric_here if numeric_keys is None else numeric_keys & numeric_here
            if non_numeric:
                info[_INFO_SITE_KEY] = non_numeric
            infos.append(info)
        # a numeric site property missing from some structures is kept per structure in info
        atom_props = {}
        for key, tensors in site_props.items():
            if numeric_keys is not None and key in numeric_keys and len(tensors) == len(structures):
                try:
                    atom_props[key] = torch.cat(tensors)
                    continue
                except RuntimeError:  # shapes differ between structures
                    pass
            for s, info in zip(structures, infos, strict=True):
                if key in s.site_properties:
                    info.setdefault(_INFO_SITE_KEY, {})[key] = list(s.site_properties[key])
        if not structures:
            return cls.empty(dtype=dtype, device=device)
        out = cls(
            atomic_numbers=torch.cat(zs),
            frac_coords=torch.cat(fracs),
            lattices=torch.stack(lats),
            num_atoms=torch.as_tensor(nums, dtype=torch.long),
            atom_properties=atom_props,
            ids=list(ids) if ids is not None else [],
            info=infos,
        )
        return out.to(device) if device is not None else out

    def to_structures(self) -> list[Structure]:
        """Back to pymatgen structures, exactly (lattice rows, coordinates, properties)."""
        from pymatgen.core import Lattice, Structure

        cpu = self.to("cpu")
        ptr = cpu.ptr.tolist()
        out = []
        lats = cpu.lattices.double().numpy()
        fracs = cpu.frac_coords.double().numpy()
        zs = cpu.atomic_numbers.tolist()
        for b in range(len(cpu)):
            lo, hi = ptr[b], ptr[b + 1]
            site_properties: dict[str, list[Any]] = {k: v[lo:hi].tolist() for k, v in cpu.atom_properties.items()}
            site_properties.update(cpu.info[b].get(_INFO_SITE_KEY, {}))
            s = Structure(
                Lattice(lats[b]),
                zs[lo:hi],
                fracs[lo:hi],
                coords_are_cartesian=False,
                site_properties=site_properties or None,
                properties=dict(cpu.info[b].get(_INFO_STRUCT_PROPS, {})),
            )
            out.append(s)
        return out

    # ------------------------------------------------------------------ ASE
    @classmethod
    def from_atoms(
        cls,
        atoms_list: Iterable[Atoms],
        ids: Sequence[str] | None = None,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> CrystalBatch:
        """Build a batch from ASE ``Atoms`` (cell rows kept as they are).

        Numeric per-atom arrays other than ``numbers``/``positions`` (e.g. ``momenta``,
        ``initial_magmoms``, ``forces`` from extxyz) become ``atom_properties``;
        ``Atoms.info`` goes to ``info``. Results of an attached calculator are not copied.
        """
        atoms_list = list(atoms_list)
        if not atoms_list:
            return cls.empty(dtype=dtype, device=device)
        zs, fracs, lats, nums, pbcs, infos = [], [], [], [], [], []
        arrays: dict[str, list[torch.Tensor]] = {}
        for k, atoms in enumerate(atoms_list):
            cell = np.asarray(atoms.cell[:], dtype=np.float64)
            if abs(np.linalg.det(cell)) < 1e-12:
                raise StructureError(
                    f"structure {ids[k] if ids else k} has no 3-D cell (det = 0); crystal needs periodic crystals"
                )
            zs.append(torch.as_tensor(atoms.numbers, dtype=torch.long))
            frac = np.linalg.solve(cell.T, np.asarray(atoms.positions, dtype=np.float64).T).T
            fracs.append(torch.as_tensor(frac, dtype=dtype))
            lats.append(torch.as_tensor(cell, dtype=dtype))
            nums.append(len(atoms))
            pbcs.append(torch.as_tensor(np.asarray(atoms.pbc, dtype=bool)))
            info: dict[str, Any] = {}
            if atoms.info:
                info[_INFO_ASE_INFO] = dict(atoms.info)
            for key, value in atoms.arrays.items():
                if key in ("numbers", "positions"):
                    continue
                t = _as_numeric_tensor(value, dtype)
                if t is None:
                    info.setdefault(_INFO_ASE_ARRAYS, {})[key] = value.copy()
                else:
                    arrays.setdefault(key, []).append(t)
            infos.append(info)
        atom_props = {}
        for key, tensors in arrays.items():
            if len(tensors) == len(atoms_list):
                try:
                    atom_props[key] = torch.cat(tensors)
                    continue
                except RuntimeError:
                    pass
            for atoms, info in zip(atoms_list, infos, strict=True):
                if key in atoms.arrays:
                    info.setdefault(_INFO_ASE_ARRAYS, {})[key] = atoms.arrays[key].copy()
        out = cls(
            atomic_numbers=torch.cat(zs),
            frac_coords=torch.cat(fracs),
            lattices=torch.stack(lats),
            num_atoms=torch.as_tensor(nums, dtype=torch.long),
            pbc=torch.stack(pbcs),
            atom_properties=atom_props,
            ids=list(ids) if ids is not None else [],
            info=infos,
        )
        return out.to(device) if device is not None else out

    def to_atoms(self) -> list[Atoms]:
        """Back to ASE ``Atoms`` with the same cell rows, positions, pbc, arrays and info."""
        from ase import Atoms

        cpu = self.to("cpu")
        ptr = cpu.ptr.tolist()
        lats = cpu.lattices.double().numpy()
        cart = cpu.cart_coords.double().numpy()
        zs = cpu.atomic_numbers.numpy()
        out = []
        for b in range(len(cpu)):
            lo, hi = ptr[b], ptr[b + 1]
            atoms = Atoms(
                numbers=zs[lo:hi],
                positions=cart[lo:hi],
                cell=lats[b],
                pbc=cpu.pbc[b].numpy(),
                info=dict(cpu.info[b].get(_INFO_ASE_INFO, {})),
            )
            for key, value in cpu.atom_properties.items():
                arr = value[lo:hi].numpy()
                if key in atoms.arrays:
                    atoms.arrays[key] = arr.astype(atoms.arrays[key].dtype)
                else:
                    atoms.new_array(key, arr)
            for key, value in cpu.info[b].get(_INFO_ASE_ARRAYS, {}).items():
                if key in atoms.arrays:
                    atoms.arrays[key] = value
                else:
                    atoms.new_array(key, value)
            out.append(atoms)
        return out

    @classmethod
    def empty(cls, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> CrystalBatch:
        """A batch with no crystals."""
        return cls(
            atomic_numbers=torch.zeros(0, dtype=torch.long, device=device),
            frac_coords=torch.zeros((0, 3), dtype=dtype, device=device),
            lattices=torch.zeros((0, 3, 3), dtype=dtype, device=device),
            num_atoms=torch.zeros(0, dtype=torch.long, device=device),
        )

    def formulas(self) -> list[str]:
        """Reduced-order (Hill-like, sorted by electronegativity as pymatgen does) formulas."""
        return [s.composition.formula.replace(" ", "") for s in self.to_structures()]
