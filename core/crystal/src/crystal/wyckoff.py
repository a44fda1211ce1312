"""Space-group / Wyckoff representation of crystals, shared by symmetry-aware generators.

A :class:`WyckoffCrystal` describes an ordered crystal by

* its space group (international number 1–230) and the **Hall number** of the setting the
  coordinates refer to. The convention is spglib's standardized conventional cell
  (``std_lattice``/``std_positions`` of :func:`spglib.get_symmetry_dataset`): the ITA standard
  setting chosen by spglib's default Hall number for the group (unique axis *b* for
  monoclinic groups, hexagonal axes for rhombohedral groups, **origin choice 1** for the 24
  groups with two origins, e.g. Hall 525 for Fd-3m);
* the lattice parameters ``(a, b, c, alpha, beta, gamma)`` (Å, degrees) of that conventional
  cell;
* one :class:`WyckoffOrbit` per crystallographic orbit: element, Wyckoff letter, multiplicity
  in the conventional cell, the fractional coordinates ``(x, y, z)`` of **one representative**
  (the free parameters of the orbit; coordinates fixed by the site symmetry simply hold their
  fixed value) and the site-symmetry symbol.

The representative is the orbit member with the lexicographically smallest fractional
coordinates wrapped to ``[0, 1)`` (rounded to 1e-6), so the same crystal always gives the
same record; it is *not* necessarily the first coordinate triplet printed in ITA.

:func:`from_structure` analyses a pymatgen structure with spglib (tolerances from
:class:`WyckoffConfig`); :func:`to_structure` expands every representative with the
operations of the setting (:func:`spglib.get_symmetry_from_database`), removes copies that
coincide modulo lattice translations and checks that each orbit has its Wyckoff
multiplicity. :func:`from_batch` / :func:`to_batch` do the same for a
:class:`~crystal.batch.CrystalBatch`.

Equivariant updates (DiffCSP++-style): :func:`site_projector` gives the 3×3 fractional
projector ``P = (1/|G_s|) Σ_{g∈G_s} R_g`` onto the displacements that keep the site symmetry
``G_s`` of a representative, and :func:`symmetrize_field` averages a per-atom vector field over
the space group, ``F'_i = (1/|G|) Σ_g R_g⁻¹ F_{π_g(i)}`` where ``π_g(i)`` is the atom that
``g`` sends atom ``i`` to.

>>> from pymatgen.core import Lattice, Structure
>>> nacl = Structure.from_spacegroup(225, Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
>>> wc = from_structure(nacl)
>>> wc.space_group, [(o.element, o.letter, o.multiplicity) for o in wc.orbits]
(225, [('Na', 'a', 4), ('Cl', 'b', 4)])
>>> len(to_structure(wc))
8
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from crystal.config import StrictModel
from crystal.elements import atomic_number, symbol
from crystal.errors import ConfigError, StructureError

if TYPE_CHECKING:
    from pymatgen.core import Structure

    from crystal.batch import CrystalBatch

__all__ = [
    "WyckoffConfig",
    "WyckoffCrystal",
    "WyckoffOrbit",
    "default_hall_number",
    "expand_orbit",
    "from_batch",
    "from_structure",
    "site_projector",
    "site_symmetry_operations",
    "space_group_operations",
    "symmetrize_field",
    "symmetrize_position",
    "to_batch",
    "to_structure",
]


class WyckoffConfig(StrictModel):
    """Tolerances of the symmetry analysis (passed to spglib)."""

    symprec: float = Field(
        0.01, gt=0, description="distance tolerance (Å) for finding symmetry and merging equivalent sites"
    )
    angle_tolerance: float = Field(
        5.0, description="angle tolerance (degrees) for lattice symmetry; -1 lets spglib choose"
    )


@dataclass(frozen=True)
class WyckoffOrbit:
    """One crystallographic orbit: ``multiplicity`` atoms of ``element`` on Wyckoff position ``letter``.

    ``free_params`` are the fractional coordinates ``(x, y, z)`` (conventional standard cell)
    of one representative atom; ``site_symmetry`` is the oriented site-symmetry symbol
    (e.g. ``"m-3m"``, ``"1"``).
    """

    element: str
    letter: str
    multiplicity: int
    free_params: tuple[float, float, float]
    site_symmetry: str = ""


@dataclass(frozen=True)
class WyckoffCrystal:
    """A crystal as space group + lattice parameters + Wyckoff orbits (see the module docstring).

    ``lattice`` is ``(a, b, c, alpha, beta, gamma)`` in Å and degrees of the conventional
    standard cell of Hall setting ``hall_number``. Raises :class:`ConfigError` for a space
    group outside 1–230 or a Hall number that does not belong to it.
    """

    space_group: int
    hall_number: int
    lattice: tuple[float, float, float, float, float, float]
    orbits: tuple[WyckoffOrbit, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.space_group, (int, np.integer)) or not 1 <= int(self.space_group) <= 230:
            raise ConfigError(f"space group number {self.space_group!r} is outside 1-230")
        if not 1 <= int(self.hall_number) <= 530:
            raise ConfigError(f"Hall number {self.hall_number!r} is outside 1-530")
        number = _hall_space_group(int(self.hall_number))
        if number != self.space_group:
            raise ConfigError(
                f"Hall number {self.hall_number} is a setting of space group {number}, not {self.space_group}; "
                f"the default setting of {self.space_group} is Hall number {default_hall_number(self.space_group)}"
            )
        if len(self.lattice) != 6 or any(not math.isfinite(v) or v <= 0 for v in self.lattice):
            raise ConfigError(
                f"lattice must be 6 positive numbers (a, b, c in Å, alpha, beta, gamma in °), got {self.lattice}"
            )

    @property
    def num_atoms(self) -> int:
        """Atoms in the conventional cell (the sum of the multiplicities)."""
        return sum(o.multiplicity for o in self.orbits)

    @property
    def formula(self) -> str:
        """Composition of the conventional cell, e.g. ``"Na4Cl4"`` (elements in order of first orbit)."""
        counts: dict[str, int] = {}
        for o in self.orbits:
            counts[o.element] = counts.get(o.element, 0) + o.multiplicity
        return "".join(f"{el}{n}" for el, n in counts.items())

    def lattice_matrix(self) -> np.ndarray:
        """``(3, 3)`` lattice vectors as rows, Å, in pymatgen's orientation for these parameters."""
        from pymatgen.core import Lattice

        return np.asarray(Lattice.from_parameters(*self.lattice).matrix, dtype=np.float64)


# ---------------------------------------------------------------------- space-group data
@cache
def _hall_space_group(hall_number: int) -> int:
    import spglib

    t = spglib.get_spacegroup_type(hall_number)
    if t is None:
        raise ConfigError(f"Hall number {hall_number} is outside 1-530")
    return int(t.number)


@cache
def _default_halls() -> dict[int, int]:
    out: dict[int, int] = {}
    for hall in range(1, 531):
        out.setdefault(_hall_space_group(hall), hall)
    return out


def default_hall_number(space_group: int) -> int:
    """spglib's default Hall number (its standardized setting) of a space group 1–230.

    That is the first Hall number of the group in spglib's table: unique axis *b*, hexagonal
    axes for rhombohedral groups, origin choice 1.
    """
    if not 1 <= int(space_group) <= 230:
        raise ConfigError(f"space group number {space_group!r} is outside 1-230")
    return _default_halls()[int(space_group)]


@cache
def _ops(hall_number: int) -> tuple[np.ndarray, np.ndarray]:
    import spglib

    data = spglib.get_symmetry_from_database(int(hall_number))
    if data is None:
        raise ConfigError(f"Hall number {hall_number} is outside 1-530")
    rot = np.asarray(data["rotations"], dtype=np.int64)
    trans = np.asarray(data["translations"], dtype=np.float64)
    rot.setflags(write=False)
    trans.setflags(write=False)
    return rot, trans


def space_group_operations(hall_number: int) -> tuple[np.ndarray, np.ndarray]:
    """Operations ``x -> R x + t`` of a setting, centring translations included.

    Returns ``(rotations (n, 3, 3) int, translations (n, 3) float)`` acting on fractional
    column vectors of the conventional cell (read-only arrays).
    """
    return _ops(int(hall_number))


def _wrap(x: np.ndarray) -> np.ndarray:
    y = np.asarray(x, dtype=np.float64) % 1.0
    y[np.isclose(y, 1.0, atol=1e-10)] = 0.0
    return y


def _frac_dist(a: np.ndarray, b: np.ndarray, lattice: np.ndarray) -> np.ndarray:
    """Minimum-image Cartesian distances (Å) between fractional points ``a (..., 3)`` and ``b (..., 3)``."""
    d = a - b
    d = d - np.round(d)
    return np.asarray(np.linalg.norm(d @ lattice, axis=-1))


def _unique(points: np.ndarray, lattice: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Points that differ modulo lattice translations by more than ``tol`` Å (first of each cluster).

    Returns ``(unique points (m, 3), index of the cluster of every input point (n,))``.
    """
    reps: list[np.ndarray] = []
    label = np.empty(len(points), dtype=np.int64)
    for i, p in enumerate(points):
        if reps:
            dist = _frac_dist(np.asarray(reps), p[None, :], lattice)
            j = int(np.argmin(dist))
            if dist[j] < tol:
                label[i] = j
                continue
        label[i] = len(reps)
        reps.append(p)
    return np.asarray(reps).reshape(-1, 3), label


# ---------------------------------------------------------------------- analysis
def _resolve(config: WyckoffConfig | None, symprec: float | None, angle_tolerance: float | None) -> WyckoffConfig:
    cfg = config or WyckoffConfig()
    updates: dict[str, float] = {}
    if symprec is not None:
        updates["symprec"] = symprec
    if angle_tolerance is not None:
        updates["angle_tolerance"] = angle_tolerance
    return WyckoffConfig(**{**cfg.model_dump(), **updates}) if updates else cfg


def from_structure(
    structure: Structure,
    symprec: float | None = None,
    angle_tolerance: float | None = None,
    *,
    config: WyckoffConfig | None = None,
) -> WyckoffCrystal:
    """Analyse an ordered pymatgen structure into a :class:`WyckoffCrystal`.

    ``symprec`` (Å) and ``angle_tolerance`` (degrees) override ``config`` (defaults 0.01 Å,
    5°). The lattice and positions are spglib's idealized standardized conventional cell;
    orbits are listed in the order spglib lists the standardized atoms. Raises
    :class:`StructureError` on disordered structures or when spglib finds no symmetry.
    """
    import spglib

    cfg = _resolve(config, symprec, angle_tolerance)
    if not structure.is_ordered:
        raise StructureError("Wyckoff analysis needs an ordered structure (this one has partial occupancies)")
    numbers = [int(site.specie.Z) for site in structure]
    cell = (np.asarray(structure.lattice.matrix), np.asarray(structure.frac_coords), numbers)
    ds = spglib.get_symmetry_dataset(cell, symprec=cfg.symprec, angle_tolerance=cfg.angle_tolerance)
    if ds is None:
        raise StructureError(
            f"spglib found no symmetry for {structure.composition.reduced_formula} "
            f"(symprec={cfg.symprec} Å, angle_tolerance={cfg.angle_tolerance}°): {spglib.get_error_message()}"
        )
    std_lat = np.asarray(ds.std_lattice, dtype=np.float64)
    std_pos = _wrap(np.asarray(ds.std_positions, dtype=np.float64))
    std_types = np.asarray(ds.std_types, dtype=np.int64)
    # standardized atom j <-> an input atom i on the same primitive site
    prim_to_input: dict[int, int] = {}
    for i, p in enumerate(np.asarray(ds.mapping_to_primitive)):
        prim_to_input.setdefault(int(p), i)
    input_of_std = [prim_to_input[int(p)] for p in np.asarray(ds.std_mapping_to_primitive)]
    orbit_of_input = np.asarray(ds.crystallographic_orbits)
    groups: dict[int, list[int]] = {}
    for j, i in enumerate(input_of_std):
        groups.setdefault(int(orbit_of_input[i]), []).append(j)

    a, b, c = (float(np.linalg.norm(v)) for v in std_lat)
    alpha = math.degrees(math.acos(float(np.dot(std_lat[1], std_lat[2])) / (b * c)))
    beta = math.degrees(math.acos(float(np.dot(std_lat[0], std_lat[2])) / (a * c)))
    gamma = math.degrees(math.acos(float(np.dot(std_lat[0], std_lat[1])) / (a * b)))
    orbits = []
    for members in groups.values():
        pos = std_pos[members]
        key = np.round(pos, 6) % 1.0
        rep = members[int(np.lexsort(key.T[::-1])[0])]
        i = input_of_std[rep]
        # spglib's std_positions are not always exactly on their site: project onto it
        x = _wrap(symmetrize_position(int(ds.hall_number), std_pos[rep], std_lat, cfg.symprec))
        orbits.append(
            WyckoffOrbit(
                element=symbol(int(std_types[rep])),
                letter=str(ds.wyckoffs[i]),
                multiplicity=len(members),
                free_params=(float(x[0]), float(x[1]), float(x[2])),
                site_symmetry=str(ds.site_symmetry_symbols[i]).strip(),
            )
        )
    return WyckoffCrystal(
        space_group=int(ds.number),
        hall_number=int(ds.hall_number),
        lattice=(a, b, c, alpha, beta, gamma),
        orbits=tuple(orbits),
    )


def expand_orbit(
    hall_number: int, free_params: Sequence[float], lattice: np.ndarray | None = None, tol: float = 0.01
) -> np.ndarray:
    """All positions of the orbit of one representative, ``(m, 3)`` fractional in ``[0, 1)``.

    Images ``R x + t`` closer than ``tol`` Å (with ``lattice`` rows in Å; without it the
    tolerance is taken in fractional units) modulo lattice translations are merged; the
    first image (the identity) is the representative itself.
    """
    rot, trans = space_group_operations(hall_number)
    x = np.asarray(free_params, dtype=np.float64).reshape(3)
    images = _wrap(np.einsum("nij,j->ni", rot, x) + trans)
    lat = np.eye(3) if lattice is None else np.asarray(lattice, dtype=np.float64)
    unique, _ = _unique(images, lat, tol)
    return unique


def to_structure(wc: WyckoffCrystal, tol: float = 0.01) -> Structure:
    """The conventional cell of ``wc`` as a pymatgen ``Structure`` (lattice from the parameters).

    Every representative is expanded with the operations of ``wc.hall_number``; images
    closer than ``tol`` Å modulo lattice translations are one atom. Raises
    :class:`StructureError` when an orbit's expansion does not have its Wyckoff
    multiplicity (a representative off its Wyckoff position, or a wrong letter/multiplicity)
    or two orbits share a site.
    """
    from pymatgen.core import Lattice, Structure

    lat = wc.lattice_matrix()
    species: list[str] = []
    coords: list[np.ndarray] = []
    for k, orbit in enumerate(wc.orbits):
        try:
            atomic_number(orbit.element)
        except ConfigError as exc:
            raise StructureError(f"orbit {k} ({orbit.letter}): {exc}") from exc
        pts = expand_orbit(wc.hall_number, orbit.free_params, lat, tol)
        if len(pts) != orbit.multiplicity:
            raise StructureError(
                f"orbit {k} ({orbit.element} {orbit.multiplicity}{orbit.letter} at {orbit.free_params}) expands to "
                f"{len(pts)} sites in space group {wc.space_group} (Hall {wc.hall_number}), not its multiplicity "
                f"{orbit.multiplicity}: the representative is not on Wyckoff position {orbit.letter} "
                f"within {tol} Å"
            )
        species += [orbit.element] * len(pts)
        coords.append(pts)
    frac = np.concatenate(coords) if coords else np.zeros((0, 3))
    if len(frac) > 1:
        _, label = _unique(frac, lat, tol)
        if label.max() + 1 != len(frac):
            raise StructureError(f"two orbits of the {wc.formula} crystal put atoms on the same site (within {tol} Å)")
    return Structure(Lattice(lat), species, frac, coords_are_cartesian=False)


def from_batch(
    batch: CrystalBatch,
    symprec: float | None = None,
    angle_tolerance: float | None = None,
    *,
    config: WyckoffConfig | None = None,
) -> list[WyckoffCrystal]:
    """:func:`from_structure` on every crystal of a batch (same tolerances)."""
    cfg = _resolve(config, symprec, angle_tolerance)
    return [from_structure(s, config=cfg) for s in batch.to_structures()]


def to_batch(crystals: Sequence[WyckoffCrystal], ids: Sequence[str] | None = None, tol: float = 0.01) -> CrystalBatch:
    """The conventional cells of ``crystals`` as one :class:`~crystal.batch.CrystalBatch` (float64, CPU).

    Each crystal's ``info`` records ``space_group`` and ``hall_number``.
    """
    from crystal.batch import CrystalBatch

    structures = [to_structure(wc, tol) for wc in crystals]
    out = CrystalBatch.from_structures(structures, ids=ids)
    for wc, info in zip(crystals, out.info, strict=True):
        info["space_group"] = wc.space_group
        info["hall_number"] = wc.hall_number
    return out


# ---------------------------------------------------------------------- site symmetry
def site_symmetry_operations(
    hall_number: int, frac: Sequence[float], lattice: np.ndarray | None = None, tol: float = 0.01
) -> tuple[np.ndarray, np.ndarray]:
    """The site-symmetry group ``G_s`` of a point: operations with ``R x + t ≡ x`` (mod lattice, within ``tol``).

    ``tol`` is in Å when ``lattice`` (rows, Å) is given, in fractional units otherwise.
    Returns ``(rotations (k, 3, 3) int, translations (k, 3))``, the translations adjusted by
    a lattice vector so that ``R x + t = x`` up to rounding.
    """
    rot, trans = space_group_operations(hall_number)
    x = np.asarray(frac, dtype=np.float64).reshape(3)
    images = np.einsum("nij,j->ni", rot, x) + trans
    shift = np.round(images - x)
    lat = np.eye(3) if lattice is None else np.asarray(lattice, dtype=np.float64)
    keep = _frac_dist(images, x[None, :], lat) < tol
    return rot[keep], trans[keep] - shift[keep]


def symmetrize_position(
    hall_number: int, frac: Sequence[float], lattice: np.ndarray | None = None, tol: float = 0.01
) -> np.ndarray:
    """Move a point exactly onto its site: ``x' = (1/|G_s|) Σ_{g∈G_s} (R_g x + t_g)``, ``(3,)`` fractional.

    ``G_s`` are the operations that map ``x`` onto itself within ``tol`` (Å with ``lattice``
    rows in Å, fractional units otherwise; see :func:`site_symmetry_operations`). ``x'`` is
    the closest point of the Wyckoff position's affine subspace in the metric of the group
    average, and ``R_g x' + t_g = x'`` holds exactly for every ``g`` of ``G_s``.
    """
    rot, trans = site_symmetry_operations(hall_number, frac, lattice, tol)
    x = np.asarray(frac, dtype=np.float64).reshape(3)
    return np.asarray(np.mean(np.einsum("nij,j->ni", rot, x) + trans, axis=0))


def site_projector(
    hall_number: int, frac: Sequence[float], lattice: np.ndarray | None = None, tol: float = 0.01
) -> np.ndarray:
    """Projector ``P = (1/|G_s|) Σ_{g∈G_s} R_g`` (3×3, fractional) onto the site-symmetric displacements.

    A fractional displacement ``d`` keeps the point on its Wyckoff position iff ``R_g d = d``
    for every ``g`` of the site group; ``P`` maps any ``d`` onto that subspace
    (``P² = P``, ``R_g P = P``): ``I`` for a general position, ``0`` for an isolated point
    such as an inversion centre. Equivariant update of a representative: ``x + P d``.
    """
    rot, _ = site_symmetry_operations(hall_number, frac, lattice, tol)
    return np.asarray(rot.astype(np.float64).mean(axis=0))


def symmetrize_field(
    hall_number: int,
    frac_coords: np.ndarray,
    field: np.ndarray,
    lattice: np.ndarray | None = None,
    *,
    cartesian: bool = False,
    tol: float = 0.01,
) -> np.ndarray:
    """Average a per-atom vector field over the space group (the Reynolds operator).

    ``frac_coords`` ``(N, 3)`` are the atoms of a crystal invariant under the setting
    ``hall_number`` (e.g. ``to_structure(wc).frac_coords``), ``field`` ``(N, 3)`` one vector
    per atom: fractional components, or Cartesian (Å, eV/Å, …) with ``cartesian=True`` and
    ``lattice`` ``(3, 3)`` rows in Å. Returns ``F'_i = (1/|G|) Σ_g R_g⁻¹ F_{π_g(i)}``, where
    ``R_g x_i + t_g ≡ x_{π_g(i)}``: ``F'_{π_h(i)} = R_h F'_i`` for every ``h``, and a field that
    is already symmetric is returned unchanged. Raises :class:`StructureError` when an
    operation maps an atom onto no atom (within ``tol`` Å, or fractional units without
    ``lattice``).
    """
    x = np.asarray(frac_coords, dtype=np.float64).reshape(-1, 3)
    f = np.asarray(field, dtype=np.float64).reshape(x.shape)
    if cartesian:
        if lattice is None:
            raise ConfigError("symmetrize_field(cartesian=True) needs the lattice (3, 3) rows in Å")
        lat_inv = np.linalg.inv(np.asarray(lattice, dtype=np.float64))
        f = f @ lat_inv  # Cartesian row vectors -> fractional components
    lat = np.eye(3) if lattice is None else np.asarray(lattice, dtype=np.float64)
    rot, trans = space_group_operations(hall_number)
    out = np.zeros_like(f)
    for r, t in zip(rot, trans, strict=True):
        images = x @ r.T + t  # (N, 3): R x_i + t
        dist = _frac_dist(images[:, None, :], x[None, :, :], lat)  # (N, N)
        perm = np.argmin(dist, axis=1)
        if (dist[np.arange(len(x)), perm] >= tol).any():
            raise StructureError(
                f"the atoms are not invariant under space-group setting Hall {hall_number} (within {tol}): "
                "symmetrize_field needs the full conventional cell in that setting"
            )
        out += f[perm] @ np.linalg.inv(r).T  # R_g^-1 F_{π_g(i)} as row vectors
    out /= len(rot)
    if cartesian:
        out = out @ np.asarray(lattice, dtype=np.float64)
    return out
