"""SLICES-style invertible strings for crystals (Xiao et al., Nat. Commun. 14, 7027 (2023)).

A crystal is written as its *labelled quotient graph*: the element symbols of the atoms of
the primitive cell, then one token group ``i j abc`` per bond, giving the two atom indices
and the periodic image of atom ``j`` seen from atom ``i`` (each of ``a``, ``b``, ``c`` is
``-``, ``o`` or ``+`` for -1, 0, +1; larger offsets are written ``2,-1,0``)::

    >>> encode(srtio3)        # doctest: +SKIP
    'O O O Ti Sr 0 3 ooo 0 3 oo+ 0 4 --o ... 2 4 ooo'

The string is *canonical*: the graph alone (not the geometry it came from) fixes the atom
order, the atoms' periodic images and the lattice basis the offsets refer to, so equal
graphs give equal strings. Permuting atoms, translating, rotating or taking a supercell
(reduced to its primitive cell first) give the same string. See ``docs/slices.md``.

:func:`decode` rebuilds a structure from the graph alone: the barycentric (equilibrium)
placement of the periodic net, a lattice fitted to target bond lengths from covalent radii,
then a relaxation of positions and lattice under harmonic bond springs, ideal-angle springs
in covalent frameworks and a soft repulsion between non-bonded pairs (torch, L-BFGS). Unlike the paper we do not finish with GULP or
M3GNet, so bond lengths are those of the radii model.

Importing this module does not import torch or pymatgen.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from crystal.config import StrictModel
from crystal.errors import StructureError

if TYPE_CHECKING:
    import numpy as np
    from pymatgen.core import Structure

__all__ = ["SlicesConfig", "SlicesError", "canonical", "decode", "encode", "parse"]

Edge = tuple[int, int, tuple[int, int, int]]
_SIGN = {-1: "-", 0: "o", 1: "+"}
_UNSIGN = {"-": -1, "o": 0, "+": 1}


class SlicesError(StructureError):
    """A malformed SLICES string, or a structure whose bond graph cannot be written as one."""


class SlicesConfig(StrictModel):
    """How crystals are turned into SLICES strings and back."""

    bonding: Literal["crystalnn", "cutoff"] = Field(
        default="cutoff",
        description="bond criterion: 'cutoff' (default; faster and round-trips better) or 'crystalnn' (pymatgen CrystalNN, as in the paper); 'cutoff' bonds are pairs at a "
        "distance below cutoff_scale × the sum of covalent radii, and no metal-metal bonds in compounds that "
        "contain non-metals",
    )
    cutoff_scale: float = Field(
        default=1.2,
        gt=0,
        description="for bonding='cutoff': atoms closer than this factor (dimensionless) × the sum of "
        "their covalent radii (Å) are bonded",
    )
    primitive_tolerance: float = Field(
        default=0.25,
        ge=0,
        description="site tolerance (Å) of pymatgen's get_primitive_structure, applied before encoding; "
        "0 keeps the given cell",
    )
    max_cutoff_scale: float = Field(
        default=2.5,
        gt=0,
        description="when the bonds found do not form one connected 3-periodic net, cutoff bonds "
        "(dimensionless factor × the sum of covalent radii, Å) are added with the factor raised in steps of 0.1 "
        "up to this value; below cutoff_scale disables the fallback",
    )
    max_tie_permutations: int = Field(
        default=720,
        ge=1,
        description="largest number of orderings (dimensionless) tried among atoms the barycentric "
        "placement cannot tell apart; beyond it the string is deterministic but not guaranteed canonical",
    )
    steps: int = Field(default=300, ge=0, description="L-BFGS iterations (dimensionless) of the decoding relaxation")
    bond_scale: float = Field(
        default=1.0,
        gt=0,
        description="target bond length = this factor (dimensionless) × the sum of covalent radii (Å)",
    )
    repulsion_scale: float = Field(
        default=1.3,
        gt=0,
        description="non-bonded pairs closer than this factor (dimensionless) × their target bond length (Å) "
        "are pushed apart",
    )
    repulsion_weight: float = Field(
        default=1.0,
        ge=0,
        description="weight (dimensionless, relative to the bond springs; energy in Å²) of the repulsion",
    )
    angle_weight: float = Field(
        default=1.0,
        ge=0,
        description="weight (dimensionless, relative to the bond springs; energy in Å²) of springs between "
        "the neighbours of a non-metal atom with 2-4 bonds, all to non-metals, at the distance of the ideal "
        "angle (180°, 120°, 109.47°)",
    )
    jitter: float = Field(
        default=0.01,
        ge=0,
        description="standard deviation (Å) of the seeded random displacement applied before relaxing, "
        "to leave unstable symmetric points",
    )


# ----------------------------------------------------------------------------- strings


def _offset_token(o: tuple[int, int, int]) -> str:
    if all(-1 <= k <= 1 for k in o):
        return "".join(_SIGN[k] for k in o)
    return ",".join(str(k) for k in o)


def _parse_offset(tok: str, pos: int) -> tuple[int, int, int]:
    if len(tok) == 3 and all(c in _UNSIGN for c in tok):
        return (_UNSIGN[tok[0]], _UNSIGN[tok[1]], _UNSIGN[tok[2]])
    parts = tok.split(",")
    if len(parts) == 3:
        try:
            a, b, c = (int(p) for p in parts)
        except ValueError:
            pass
        else:
            return (a, b, c)
    raise SlicesError(
        f"SLICES token {pos} ({tok!r}): expected an image offset of three characters from '-', 'o', '+' "
        "(e.g. 'o+-') or three comma-separated integers (e.g. '2,-1,0')"
    )


def _normalize(i: int, j: int, o: tuple[int, int, int]) -> Edge:
    """The undirected edge written from its lower index (self-loops: first non-zero offset > 0)."""
    if i > j or (i == j and next((k for k in o if k), 0) < 0):
        return (j, i, (-o[0], -o[1], -o[2]))
    return (i, j, o)


def _format(species: list[str], edges: list[Edge]) -> str:
    body = [f"{i} {j} {_offset_token(o)}" for i, j, o in edges]
    return " ".join(species + body)


def parse(string: str) -> tuple[list[str], list[Edge]]:
    """Split a SLICES string into element symbols and edges ``(i, j, (a, b, c))``.

    Raises :class:`SlicesError` naming the (0-based) token position on malformed input:
    no atoms, an unknown element, an index out of range, a bad offset, a dangling group,
    or an edge from an atom to its own image at offset ``ooo``.
    """
    from crystal.elements import SYMBOLS

    known = set(SYMBOLS)
    tokens = string.split()
    species: list[str] = []
    k = 0
    while k < len(tokens) and not tokens[k].lstrip("-").isdigit():
        tok = tokens[k]
        if tok not in known:
            raise SlicesError(f"SLICES token {k} ({tok!r}): not an element symbol (e.g. 'Sr', 'O') nor an atom index")
        species.append(tok)
        k += 1
    if not species:
        raise SlicesError(
            f"SLICES string {string[:40]!r}: starts with no element symbols (expected e.g. 'Na Cl 0 1 ooo')"
        )
    n = len(species)
    rest = tokens[k:]
    if len(rest) % 3:
        start = k + len(rest) - len(rest) % 3
        raise SlicesError(
            f"SLICES token {start} ({tokens[start]!r}): incomplete edge; edges are groups of three tokens 'i j abc'"
        )
    edges: list[Edge] = []
    seen: set[Edge] = set()
    for g in range(0, len(rest), 3):
        idx = []
        for pos in (k + g, k + g + 1):
            tok = tokens[pos]
            if not tok.isdigit() or int(tok) >= n:
                raise SlicesError(f"SLICES token {pos} ({tok!r}): expected an atom index 0..{n - 1}")
            idx.append(int(tok))
        o = _parse_offset(tokens[k + g + 2], k + g + 2)
        if idx[0] == idx[1] and o == (0, 0, 0):
            raise SlicesError(f"SLICES token {k + g} : edge '{idx[0]} {idx[1]} ooo' bonds an atom to itself")
        e = _normalize(idx[0], idx[1], o)
        if e not in seen:
            seen.add(e)
            edges.append(e)
    return species, edges


# ----------------------------------------------------------------------------- graphs


def _radius(symbol: str) -> float:
    from pymatgen.analysis.molecule_structure_comparator import CovalentRadius

    r = CovalentRadius.radius.get(symbol)
    if r is None:
        from pymatgen.core import Element

        r = float(Element(symbol).atomic_radius or 1.5)
    return float(r)


def _is_net(n: int, edges: list[Edge]) -> bool:
    """Whether ``edges`` form one connected net periodic in three dimensions."""
    import numpy as np

    try:
        x = _barycentric(n, edges)
    except SlicesError:
        return False
    d = _edge_vectors(x, edges)
    g = d.T @ d
    return len(d) > 0 and int(np.linalg.matrix_rank(g, tol=1e-8 * max(1.0, float(np.abs(g).max())))) == 3


def _cutoff_bonds(structure: Structure, scale: float) -> set[Edge]:
    """Pairs closer than ``scale`` × the sum of covalent radii; no metal-metal bonds when non-metals are present."""
    radii = [_radius(s.specie.symbol) for s in structure]
    metal = [bool(s.specie.is_metal) for s in structure]
    ionic = any(metal) and not all(metal)
    ci, pj, images, dist = structure.get_neighbor_list(2 * max(radii) * scale)
    return {
        _normalize(int(i), int(j), (int(img[0]), int(img[1]), int(img[2])))
        for i, j, img, d in zip(ci, pj, images, dist, strict=True)
        if 1e-8 < d < scale * (radii[i] + radii[j]) and not (ionic and metal[i] and metal[j])
    }


def _bonds(structure: Structure, cfg: SlicesConfig) -> list[Edge]:
    edges = _primary_bonds(structure, cfg)
    scale = cfg.cutoff_scale
    while not _is_net(len(structure), sorted(edges)) and scale + 0.1 <= cfg.max_cutoff_scale + 1e-9:
        scale += 0.1
        edges |= _cutoff_bonds(structure, scale)
    return sorted(edges)


def _primary_bonds(structure: Structure, cfg: SlicesConfig) -> set[Edge]:
    import numpy as np

    frac = structure.frac_coords
    edges: set[Edge] = set()
    if cfg.bonding == "crystalnn":
        import warnings

        from pymatgen.analysis.local_env import CrystalNN

        nn = CrystalNN()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i in range(len(structure)):
                for info in nn.get_nn_info(structure, i):
                    j = int(info["site_index"])
                    o = np.rint(info["site"].frac_coords - frac[j]).astype(int)
                    edges.add(_normalize(i, j, (int(o[0]), int(o[1]), int(o[2]))))
    else:
        edges = _cutoff_bonds(structure, cfg.cutoff_scale)
    return edges


def _barycentric(n: int, edges: list[Edge]) -> np.ndarray:
    """Fractional positions ``(n, 3)`` with atom 0 at the origin and every atom at the barycentre of its neighbours."""
    import numpy as np

    lap = np.zeros((n, n))
    rhs = np.zeros((n, 3))
    for i, j, o in edges:
        if i == j:
            continue
        lap[i, i] += 1
        lap[j, j] += 1
        lap[i, j] -= 1
        lap[j, i] -= 1
        rhs[i] += o
        rhs[j] -= o
    x = np.zeros((n, 3))
    if n > 1:
        sub = lap[1:, 1:]
        if np.linalg.matrix_rank(sub) < n - 1:
            raise SlicesError("bond graph is not connected: SLICES needs one connected periodic net")
        x[1:] = np.linalg.solve(sub, rhs[1:])
    return x


def _edge_vectors(x: np.ndarray, edges: list[Edge]) -> np.ndarray:
    import numpy as np

    return np.array([x[j] + np.array(o) - x[i] for i, j, o in edges], dtype=float).reshape(-1, 3)


@functools.cache
def _unimodular() -> np.ndarray:
    """The 3×3 matrices ``(K, 3, 3)`` with entries in {-1, 0, 1} and determinant ±1."""
    import numpy as np

    vals = np.array(list(itertools.product((-1, 0, 1), repeat=9)), dtype=float).reshape(-1, 3, 3)
    keep: np.ndarray = vals[np.abs(np.abs(np.linalg.det(vals)) - 1) < 1e-6]
    return keep


def _automorphisms(q: np.ndarray) -> list[np.ndarray]:
    """Unimodular matrices ``U`` with entries in {-1, 0, 1} and ``U q Uᵀ = q`` (q scaled to unit determinant)."""
    import numpy as np

    vals = _unimodular()
    g = np.einsum("kab,bc,kdc->kad", vals, q, vals)
    ok = np.all(np.abs(g - q) < 1e-5 * np.abs(q).max(), axis=(1, 2))
    return [u.astype(int) for u in vals[ok]]


def _canonical_parts(species: list[str], edges: list[Edge], max_perm: int) -> tuple[list[str], list[Edge], np.ndarray]:
    """Canonical (species, edges) of a quotient graph, and the metric ``(3, 3)`` of its basis (unit determinant)."""
    import numpy as np
    from pymatgen.core import Lattice

    from crystal.elements import atomic_number

    n = len(species)
    x = _barycentric(n, edges)
    d = _edge_vectors(x, edges)
    g = d.T @ d
    if len(d) == 0 or np.linalg.matrix_rank(g, tol=1e-8 * max(1.0, float(np.abs(g).max()))) < 3:
        raise SlicesError("bond graph is not periodic in three dimensions (layers or chains are not bonded together)")
    q = np.linalg.inv(g)
    q = q / np.linalg.det(q) ** (1 / 3)
    a = np.linalg.cholesky(q)
    red = Lattice(a).get_niggli_reduced_lattice(tol=1e-5)
    m = np.rint(red.matrix @ np.linalg.inv(a)).astype(int)
    if abs(round(np.linalg.det(m))) != 1:
        raise SlicesError("internal error: Niggli reduction of the barycentric metric is not unimodular")
    q = m @ q @ m.T
    minv = np.rint(np.linalg.inv(m)).astype(int)
    z = [atomic_number(s) for s in species]
    counts = {e: species.count(e) for e in set(species)}
    root_el = min(counts, key=lambda e: (counts[e], atomic_number(e)))
    roots = [i for i in range(n) if species[i] == root_el]
    best: tuple[str, list[str], list[Edge]] | None = None
    for u in _automorphisms(q):
        t = minv @ np.rint(np.linalg.inv(u)).astype(int)  # row vectors: x' = x t
        xt = x @ t
        ot = [tuple(int(v) for v in np.array(o) @ t) for _, _, o in edges]
        for r in roots:
            p = np.round(xt - xt[r], 6)
            s = np.floor(p).astype(int)
            f = np.round(p - s, 5) % 1.0
            keys = [(z[i], *(float(v) for v in f[i])) for i in range(n)]
            base = sorted(range(n), key=lambda i: keys[i])
            groups = [list(g_) for _, g_ in itertools.groupby(base, key=lambda i: keys[i])]
            total = math.prod(math.factorial(len(g_)) for g_ in groups)
            orders: Any
            if total <= max_perm:
                orders = itertools.product(*(itertools.permutations(g_) for g_ in groups))
            else:
                orders = [tuple(tuple(g_) for g_ in groups)]
            for combo in orders:
                order = [i for g_ in combo for i in g_]
                new = {old: k for k, old in enumerate(order)}
                new_edges = sorted(
                    _normalize(
                        new[i],
                        new[j],
                        (
                            o[0] + int(s[j, 0] - s[i, 0]),
                            o[1] + int(s[j, 1] - s[i, 1]),
                            o[2] + int(s[j, 2] - s[i, 2]),
                        ),
                    )
                    for (i, j, _), o in zip(edges, ot, strict=True)
                )
                sp = [species[i] for i in order]
                text = _format(sp, new_edges)
                if best is None or text < best[0]:
                    best = (text, sp, new_edges)
    assert best is not None
    return best[1], best[2], q


def canonical(string: str, *, config: SlicesConfig | None = None) -> str:
    """The canonical form of a SLICES string (the same graph with canonical labels, images and basis)."""
    cfg = config or SlicesConfig()
    species, edges = parse(string)
    sp, ed, _ = _canonical_parts(species, edges, cfg.max_tie_permutations)
    return _format(sp, ed)


def encode(
    structure: Structure, *, bonding: Literal["crystalnn", "cutoff"] | None = None, config: SlicesConfig | None = None
) -> str:
    """The canonical SLICES string of an ordered ``structure`` (pymatgen).

    ``bonding`` overrides ``config.bonding``. Raises :class:`SlicesError` for disordered
    structures and bond graphs that are not one connected 3-periodic net.
    """
    cfg = config or SlicesConfig()
    if bonding is not None:
        cfg = cfg.model_copy(update={"bonding": bonding})
    if not structure.is_ordered:
        raise SlicesError(f"{structure.composition.reduced_formula}: SLICES needs an ordered structure")
    s = structure.copy()
    if cfg.primitive_tolerance > 0:
        s = s.get_primitive_structure(tolerance=cfg.primitive_tolerance)
    species = [site.specie.symbol for site in s]
    edges = _bonds(s, cfg)
    if not edges:
        raise SlicesError(f"{s.composition.reduced_formula}: no bonds found with bonding={cfg.bonding!r}")
    sp, ed, _ = _canonical_parts(species, edges, cfg.max_tie_permutations)
    return _format(sp, ed)


# ----------------------------------------------------------------------------- decoding


def decode(string: str, *, seed: int = 0, steps: int | None = None, config: SlicesConfig | None = None) -> Structure:
    """A structure (pymatgen) whose bond graph is the one written in ``string``.

    The barycentric placement fixes the fractional positions; the lattice metric is the
    least-squares fit of the edge lengths to the target bond lengths (Å); then positions
    and lattice are relaxed for ``steps`` L-BFGS iterations under harmonic bond springs,
    ideal-angle springs (``angle_weight``) and a soft repulsion between non-bonded pairs
    closer than ``repulsion_scale`` × target. Raises :class:`SlicesError` for malformed
    strings and graphs that are not one connected 3-periodic net.
    """
    import numpy as np
    import torch
    from pymatgen.core import Element, Lattice, Structure

    cfg = config or SlicesConfig()
    n_steps = cfg.steps if steps is None else steps
    species, edges = parse(string)
    n = len(species)
    x = _barycentric(n, edges)
    d = _edge_vectors(x, edges)
    radii = np.array([_radius(s) for s in species])
    b = np.array([cfg.bond_scale * (radii[i] + radii[j]) for i, j, _ in edges])
    g0 = d.T @ d
    if len(d) == 0 or np.linalg.matrix_rank(g0, tol=1e-8 * max(1.0, float(np.abs(g0).max()))) < 3:
        raise SlicesError("bond graph is not periodic in three dimensions (layers or chains are not bonded together)")
    q = np.linalg.inv(g0)
    q *= np.mean(b**2) / np.mean(np.einsum("ea,ab,eb->e", d, q, d))
    # least-squares metric: dᵀ G d = b² is linear in the 6 entries of G
    rows = np.stack(
        [d[:, 0] ** 2, d[:, 1] ** 2, d[:, 2] ** 2, 2 * d[:, 0] * d[:, 1], 2 * d[:, 0] * d[:, 2], 2 * d[:, 1] * d[:, 2]],
        axis=1,
    )
    metric = q
    if np.linalg.matrix_rank(rows) == 6:
        sol = np.linalg.lstsq(rows, b**2, rcond=None)[0]
        gm = np.array([[sol[0], sol[3], sol[4]], [sol[3], sol[1], sol[5]], [sol[4], sol[5], sol[2]]])
        if np.all(np.linalg.eigvalsh(gm) > 1e-3 * np.trace(q)):
            metric = gm
    lat0 = np.linalg.cholesky(metric)  # rows = lattice vectors (lower triangular)

    dt = torch.float64
    gen = torch.Generator().manual_seed(seed)
    tril = torch.tril_indices(3, 3)
    lat_p = torch.tensor(lat0, dtype=dt)[tril[0], tril[1]].clone().requires_grad_(True)
    x0 = torch.tensor(x, dtype=dt)
    scale = float(np.linalg.det(lat0)) ** (1 / 3)
    x0 = x0 + cfg.jitter / scale * torch.randn(x0.shape, generator=gen, dtype=dt)
    pos = x0.clone().requires_grad_(True)
    ei = torch.tensor([e[0] for e in edges])
    ej = torch.tensor([e[1] for e in edges])
    eo = torch.tensor([e[2] for e in edges], dtype=dt)
    bt = torch.tensor(b, dtype=dt)
    # non-bonded pairs: every (i, j, image) within 2 cells except bonds and an atom itself
    bonded = {(i, j, o) for i, j, o in edges} | {(j, i, (-o[0], -o[1], -o[2])) for i, j, o in edges}
    # angle springs: neighbour pairs of atoms with 2-4 bonds, at the ideal-angle distance
    nbrs: dict[int, list[tuple[int, tuple[int, int, int], float]]] = {k: [] for k in range(n)}
    for (i, j, o), bl in zip(edges, b, strict=True):
        nbrs[i].append((j, o, float(bl)))
        nbrs[j].append((i, (-o[0], -o[1], -o[2]), float(bl)))
    cos_ideal = {2: -1.0, 3: -0.5, 4: -1.0 / 3.0}
    ai, aj, ao, at = [], [], [], []
    metal = [bool(Element(s).is_metal) for s in species]
    for c, lst in nbrs.items():
        if len(lst) not in cos_ideal or metal[c] or any(metal[a] for a, _, _ in lst):
            continue
        for (a, oa, ba), (bb_, ob, bb) in itertools.combinations(lst, 2):
            ai.append(a)
            aj.append(bb_)
            ao.append(tuple(ob[k] - oa[k] for k in range(3)))
            at.append(math.sqrt(ba * ba + bb * bb - 2 * ba * bb * cos_ideal[len(lst)]))
    ai_t, aj_t = torch.tensor(ai, dtype=torch.long), torch.tensor(aj, dtype=torch.long)
    ao_t = torch.tensor(ao, dtype=dt).reshape(-1, 3)
    at_t = torch.tensor(at, dtype=dt)
    pi, pj, po = [], [], []
    for img in itertools.product(range(-2, 3), repeat=3):
        for i in range(n):
            for j in range(n):
                if (i == j and img == (0, 0, 0)) or (i, j, img) in bonded:
                    continue
                pi.append(i)
                pj.append(j)
                po.append(img)
    ri = torch.tensor(radii, dtype=dt)
    pi_t, pj_t = torch.tensor(pi), torch.tensor(pj)
    po_t = torch.tensor(po, dtype=dt)
    rmin = cfg.repulsion_scale * cfg.bond_scale * (ri[pi_t] + ri[pj_t])

    def lattice() -> torch.Tensor:
        m = torch.zeros(3, 3, dtype=dt)
        return m.index_put((tril[0], tril[1]), lat_p)

    def energy() -> torch.Tensor:
        lat = lattice()
        vec = (pos[ej] + eo - pos[ei]) @ lat
        e_bond = ((vec.norm(dim=1) - bt) ** 2).sum()
        pv = (pos[pj_t] + po_t - pos[pi_t]) @ lat
        e_rep = (torch.relu(rmin - pv.norm(dim=1)) ** 2).sum() * 0.5
        total: torch.Tensor = e_bond + cfg.repulsion_weight * e_rep
        if cfg.angle_weight > 0 and len(ai):
            av = (pos[aj_t] + ao_t - pos[ai_t]) @ lat
            total = total + cfg.angle_weight * ((av.norm(dim=1) - at_t) ** 2).sum()
        return total

    if n_steps > 0:
        opt = torch.optim.LBFGS(
            [pos, lat_p], max_iter=n_steps, line_search_fn="strong_wolfe", tolerance_grad=1e-7, tolerance_change=1e-10
        )

        def closure() -> torch.Tensor:
            opt.zero_grad()
            e = energy()
            e.backward()  # type: ignore[no-untyped-call]
            return e

        opt.step(closure)  # type: ignore[no-untyped-call]
    with torch.no_grad():
        lat = lattice().numpy()
        frac = pos.detach().numpy() % 1.0
    if np.linalg.det(lat) <= 0 or not np.all(np.isfinite(lat)):
        raise SlicesError("decoding collapsed the lattice; try more steps or another seed")
    return Structure(Lattice(lat), species, frac)
