"""Every ``radius_graph`` backend gives the same graph, and vesin's agrees with pymatgen."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from crystal import CrystalBatch, neighbors
from crystal import _neighbors_vesin as vesin_backend
from crystal.neighbors import radius_graph

needs_vesin = pytest.mark.skipif(not vesin_backend.available(), reason="vesin-torch is not importable")


def _random_batch(seed: int, dtype: torch.dtype) -> CrystalBatch:
    """Crystals of 1-9 atoms: 1-atom cells, tiny skewed cells (smaller than the cutoff),
    ordinary cells, and coordinates outside [0, 1) (shifts refer to the unwrapped input)."""
    g = torch.Generator().manual_seed(seed)
    lattices, fracs, counts = [], [], []
    for k in range(14):
        nat = [1, 1, 2, 3, 5, 9][k % 6]
        a = [1.7, 2.5, 3.5, 6.0][k % 4]
        skew = 0.6 if k % 3 == 0 else 0.15
        lat = torch.eye(3, dtype=torch.float64) * a + skew * a * (
            torch.rand(3, 3, generator=g, dtype=torch.float64) - 0.5
        )
        frac = torch.rand(nat, 3, generator=g, dtype=torch.float64)
        if k % 5 == 0:  # unwrapped coordinates, both sides
            frac = frac + torch.randint(-2, 3, (nat, 3), generator=g).to(torch.float64)
        lattices.append(lat)
        fracs.append(frac)
        counts.append(nat)
    frac = torch.cat(fracs)
    return CrystalBatch(
        atomic_numbers=torch.full((frac.shape[0],), 6),
        frac_coords=frac.to(dtype),
        lattices=torch.stack(lattices).to(dtype),
        num_atoms=torch.tensor(counts),
    )


def _assert_same(a, b) -> None:
    assert torch.equal(a.edge_index, b.edge_index)
    assert torch.equal(a.shifts, b.shifts)
    assert torch.equal(a.vectors, b.vectors)
    assert torch.equal(a.distances, b.distances)


@needs_vesin
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("seed", [0, 1])
def test_backends_give_identical_graphs(seed, dtype):
    batch = _random_batch(seed, dtype)
    for cutoff in (2.9, 6.0):
        pairs = radius_graph(batch, cutoff, backend="pairs")
        assert pairs.edge_index.shape[1] > 0
        _assert_same(pairs, radius_graph(batch, cutoff, backend="vesin"))
        _assert_same(pairs, radius_graph(batch, cutoff, backend="auto"))
        for k in (1, 7):
            _assert_same(
                radius_graph(batch, cutoff, max_neighbors=k, backend="pairs"),
                radius_graph(batch, cutoff, max_neighbors=k, backend="vesin"),
            )


@needs_vesin
def test_vesin_graph_is_in_canonical_order_with_unwrapped_shifts():
    batch = _random_batch(3, torch.float64)
    g = radius_graph(batch, 5.0, backend="vesin")
    i, j = g.edge_index
    rows = torch.cat([i[:, None], j[:, None], g.shifts], dim=1).tolist()
    assert rows == sorted(rows)
    assert len({tuple(r) for r in rows}) == len(rows)
    # shifts refer to the unwrapped input: r_j + n L - r_i, from cartesian coordinates
    cart = batch.cart_coords
    expected = cart[j] - cart[i] + torch.einsum("ek,ekl->el", g.shifts.double(), batch.lattices[batch.batch[i]])
    assert torch.allclose(g.vectors, expected, rtol=1e-9, atol=1e-9)  # (torch.testing imports slowly)
    assert bool((g.distances < 5.0).all())
    assert not bool(((i == j) & (g.shifts == 0).all(dim=1)).any())


@needs_vesin
@pytest.mark.parametrize("cutoff", [3.0, 6.5])
def test_vesin_matches_pymatgen_neighbor_list(pmg_structures, cutoff):
    tiny = Structure(Lattice.from_parameters(2.1, 2.3, 2.6, 65, 80, 110), ["Cu"], [[0.2, 0.3, 0.4]])
    flat = Structure(
        Lattice.from_parameters(7.5, 7.9, 1.9, 90, 100, 60), ["Si", "O"], [[0.1, 0.2, 0.3], [0.6, 0.5, 0.9]]
    )
    structures = [*pmg_structures[:5], tiny, flat]
    batch = CrystalBatch.from_structures(structures)
    batch = batch.with_positions(batch.frac_coords - torch.floor(batch.frac_coords), batch.lattices)
    g = radius_graph(batch, cutoff, backend="vesin")
    ptr = batch.ptr.tolist()
    for k, s in enumerate(structures):
        s = s.copy()
        s.translate_sites(range(len(s)), [0, 0, 0], to_unit_cell=True)
        lo, hi = ptr[k], ptr[k + 1]
        mask = (g.edge_index[0] >= lo) & (g.edge_index[0] < hi)
        ours = sorted(
            (int(a) - lo, int(b) - lo, tuple(int(x) for x in im), float(r))
            for a, b, im, r in zip(g.edge_index[0][mask], g.edge_index[1][mask], g.shifts[mask], g.distances[mask])
        )
        ci, cj, images, d = s.get_neighbor_list(cutoff)
        ref = sorted((int(a), int(b), tuple(int(x) for x in im), float(r)) for a, b, im, r in zip(ci, cj, images, d))
        assert len(ours) == len(ref), f"structure {k}"
        assert [o[:3] for o in ours] == [r[:3] for r in ref], f"structure {k}"
        np.testing.assert_allclose([o[3] for o in ours], [r[3] for r in ref], atol=1e-8)


@needs_vesin
def test_vesin_vectors_are_differentiable():
    batch = _random_batch(4, torch.float64)
    frac = batch.frac_coords.clone().requires_grad_(True)
    lat = batch.lattices.clone().requires_grad_(True)
    moved = batch.with_positions(frac, lat)
    grads = []
    for backend in ("pairs", "vesin"):
        g = radius_graph(moved, 4.0, backend=backend)
        grads.append(torch.autograd.grad(g.distances.pow(2).sum(), (frac, lat)))
    for a, b in zip(grads[0], grads[1]):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-10)
    # against finite differences of the lattice (the edge set does not change for a tiny step)
    step = torch.zeros_like(batch.lattices)
    step[2, 0, 1] = 1e-6
    f = lambda L: radius_graph(batch.with_positions(batch.frac_coords, L), 4.0, backend="vesin").distances.pow(2).sum()  # noqa: E731
    fd = (f(batch.lattices + step) - f(batch.lattices - step)) / 2e-6
    assert abs(float(grads[1][1][2, 0, 1]) - float(fd)) < 1e-5 * abs(float(fd)) + 1e-6


@needs_vesin
def test_crystals_without_neighbours_and_single_atoms():
    batch = CrystalBatch(
        atomic_numbers=torch.tensor([6, 6, 6, 8]),
        frac_coords=torch.tensor(
            [[0.1, 0.1, 0.1], [0.5, 0.5, 0.5], [0.0, 0.0, 0.0], [0.5, 0.5, 0.5]], dtype=torch.float64
        ),
        lattices=torch.stack(
            [
                torch.eye(3, dtype=torch.float64) * 20,
                torch.eye(3, dtype=torch.float64) * 2.0,
                torch.eye(3, dtype=torch.float64) * 30,
            ]
        ),
        num_atoms=torch.tensor([2, 1, 1]),
    )
    g_pairs = radius_graph(batch, 2.5, backend="pairs")
    _assert_same(g_pairs, radius_graph(batch, 2.5, backend="vesin"))
    assert g_pairs.edge_index.shape[1] == 6  # only the 1-atom 2 Å cube: its own six images
    assert radius_graph(batch, 0.5, backend="vesin").edge_index.shape[1] == 0


def test_canonical_order_key_paths_agree():
    g = torch.Generator().manual_seed(5)
    batch = _random_batch(5, torch.float64)
    counts = torch.randint(0, 30, (len(batch),), generator=g)
    crystal = torch.repeat_interleave(torch.arange(len(batch)), counts)
    first, size = batch.ptr[crystal], batch.num_atoms[crystal]
    i = first + (torch.rand(crystal.shape[0], generator=g) * size).long()
    j = first + (torch.rand(crystal.shape[0], generator=g) * size).long()
    n = torch.randint(-3, 4, (crystal.shape[0], 3), generator=g, dtype=torch.int32)
    rows = list(zip(i.tolist(), j.tolist(), n.tolist()))
    expected = sorted(range(len(rows)), key=lambda e: (rows[e][0], rows[e][1], rows[e][2], e))
    orders = [
        neighbors._canonical_order(batch, i, j, n, counts),
        neighbors._canonical_order(batch, i, j, n, counts, int32_keys_below=0),
        neighbors._canonical_order(batch, i, j, n, counts, int32_keys_below=0, int64_keys_below=0),
    ]
    for order in orders:  # duplicates may come in any order; compare the sorted rows
        assert [rows[e] for e in order.tolist()] == [rows[e] for e in expected]


def test_backend_choice(monkeypatch):
    small = _random_batch(6, torch.float64)  # ~3.5 atoms per crystal
    big = CrystalBatch(
        atomic_numbers=torch.full((24,), 6),
        frac_coords=torch.rand(24, 3, dtype=torch.float64),
        lattices=torch.eye(3, dtype=torch.float64)[None] * 6.0,
        num_atoms=torch.tensor([24]),
    )
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        radius_graph(small, 3.0, backend="fast")  # type: ignore[arg-type]
    assert neighbors._resolve_backend(small, None, "auto") == "pairs"
    assert neighbors._resolve_backend(big, 12, "auto") == "pairs"
    assert neighbors._resolve_backend(small, None, "vesin") == "vesin"
    expected = "vesin" if vesin_backend.available() else "pairs"
    assert neighbors._resolve_backend(big, None, "auto") == expected
    monkeypatch.setattr(vesin_backend, "available", lambda: False)
    assert neighbors._resolve_backend(big, None, "auto") == "pairs"
    with pytest.raises(ImportError, match="pip install vesin-torch"):
        radius_graph(big, 3.0, backend="vesin")
