from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from crystal import CrystalBatch
from crystal.neighbors import radius_graph
from crystal.testing.transforms import permute, random_rotation, rotate, supercell, translate, unimodular_recell


def _pairs_pymatgen(s: Structure, cutoff: float) -> list[tuple[int, int, tuple[int, int, int], float]]:
    i, j, images, d = s.get_neighbor_list(cutoff)
    return sorted((int(a), int(b), tuple(int(x) for x in im), float(r)) for a, b, im, r in zip(i, j, images, d))


@pytest.mark.parametrize("cutoff", [3.0, 5.5])
def test_matches_pymatgen_neighbor_list(pmg_structures, cutoff):
    tiny = Structure(Lattice.from_parameters(2.1, 2.3, 2.6, 65, 80, 110), ["Cu"], [[0.2, 0.3, 0.4]])
    structures = [*pmg_structures[:6], tiny]
    batch = CrystalBatch.from_structures(structures)
    # pymatgen wraps coordinates into the cell; do the same so image offsets agree
    batch = batch.with_positions(batch.frac_coords - torch.floor(batch.frac_coords), batch.lattices)
    g = radius_graph(batch, cutoff, max_pairs_per_chunk=50_000)
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
        ref = _pairs_pymatgen(s, cutoff)
        assert [o[:3] for o in ours] == [r[:3] for r in ref], f"structure {k}"
        np.testing.assert_allclose([o[3] for o in ours], [r[3] for r in ref], atol=1e-8)


def test_vectors_are_consistent(pmg_structures):
    batch = CrystalBatch.from_structures(pmg_structures[:3])
    g = radius_graph(batch, 4.0)
    cart = batch.cart_coords
    lat = batch.lattices[batch.batch[g.edge_index[0]]]
    expected = cart[g.edge_index[1]] - cart[g.edge_index[0]] + torch.einsum("ek,ekl->el", g.shifts.to(cart.dtype), lat)
    torch.testing.assert_close(g.vectors, expected)


# ---------------------------------------------------------------------- invariances

CUTOFF = 4.5


def _per_crystal(batch: CrystalBatch, g) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per crystal: sorted edge distances and sorted per-atom neighbour counts."""
    deg = torch.bincount(g.edge_index[0], minlength=batch.num_nodes)
    crystal = batch.batch[g.edge_index[0]]
    out = []
    for b in range(len(batch)):
        lo, hi = int(batch.ptr[b]), int(batch.ptr[b + 1])
        out.append((np.sort(g.distances[crystal == b].detach().numpy()), np.sort(deg[lo:hi].numpy())))
    return out


def _assert_same(a, b, dtype, count_factor: int = 1) -> None:
    atol = 1e-9 if dtype == torch.float64 else 2e-4
    for (da, ca), (db, cb) in zip(a, b):
        np.testing.assert_allclose(np.repeat(da, count_factor), db, atol=atol)
        np.testing.assert_array_equal(np.sort(np.repeat(ca, count_factor)), cb)


@pytest.fixture(scope="module")
def inv_structures():
    import pymatgen.util

    folder = Path(pymatgen.util.__file__).parent / "structures"
    return [Structure.from_file(folder / f"{n}.json") for n in ["Si", "SrTiO3", "CsCl", "Li2O", "Graphite"]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("max_neighbors", [None, 12])
@pytest.mark.parametrize("transform", ["rotate", "translate", "permute", "recell", "supercell"])
def test_invariances(inv_structures, dtype, max_neighbors, transform):
    tiny = Structure(Lattice.from_parameters(2.1, 2.3, 2.6, 65, 80, 110), ["Cu"], [[0.2, 0.3, 0.4]])
    batch = CrystalBatch.from_structures([*inv_structures, tiny]).to(dtype=dtype)
    gen = torch.Generator().manual_seed(0)
    factor = 1
    if transform == "rotate":
        other = rotate(batch, random_rotation(gen))
    elif transform == "translate":
        other = translate(batch, torch.randn((len(batch), 3), generator=gen, dtype=torch.float64) * 3)
    elif transform == "permute":
        other, _ = permute(batch, gen)
    elif transform == "recell":
        other = unimodular_recell(batch)
    else:
        other, factor = supercell(batch, (2, 2, 2)), 8
    ref = _per_crystal(batch, radius_graph(batch, CUTOFF, max_neighbors=max_neighbors))
    new = _per_crystal(other, radius_graph(other, CUTOFF, max_neighbors=max_neighbors))
    if max_neighbors is not None and dtype == torch.float32:
        # ties cut by a shell boundary may resolve differently; distances still agree
        for (da, _), (db, _) in zip(ref, new):
            np.testing.assert_allclose(np.repeat(da, factor), db, atol=2e-4)
        return
    _assert_same(ref, new, dtype, factor)


def test_max_neighbors_matches_bruteforce(pmg_structures):
    structures = pmg_structures[:6]
    batch = CrystalBatch.from_structures(structures)
    g = radius_graph(batch, 8.0, max_neighbors=12, max_pairs_per_chunk=100_000)
    full = radius_graph(batch, 8.0)
    ptr = batch.ptr.tolist()
    for k, s in enumerate(structures):
        i, _, _, d = s.get_neighbor_list(8.0)
        for a in range(len(s)):
            ref = np.sort(d[i == a])[:12]
            ours = g.distances[g.edge_index[0] == ptr[k] + a].detach().numpy()
            np.testing.assert_allclose(ours, ref, atol=1e-8)  # already sorted by distance
    # the kept edges are a subset of the full graph, with the same vectors
    key = {(int(a), int(b), *map(int, n)) for a, b, n in zip(full.edge_index[0], full.edge_index[1], full.shifts)}
    assert all((int(a), int(b), *map(int, n)) in key for a, b, n in zip(g.edge_index[0], g.edge_index[1], g.shifts))


def test_max_neighbors_deterministic_ties():
    # simple cubic: 6 equidistant nearest neighbours, keep 4 -> lowest (index, shift) first
    s = Structure(Lattice.cubic(3.0), ["Po"], [[0.1, 0.2, 0.3]])
    batch = CrystalBatch.from_structures([s]).to(dtype=torch.float64)
    g = radius_graph(batch, 3.5, max_neighbors=4)
    assert g.edge_index.shape[1] == 4
    np.testing.assert_allclose(g.distances.numpy(), 3.0)
    assert [tuple(x) for x in g.shifts.tolist()] == [(-1, 0, 0), (0, -1, 0), (0, 0, -1), (0, 0, 1)]


def test_tiny_skewed_cell_smaller_than_cutoff():
    s = Structure(Lattice.from_parameters(1.5, 1.7, 9.0, 40, 100, 130), ["H"], [[0.0, 0.0, 0.0]])
    batch = CrystalBatch.from_structures([s])
    g = radius_graph(batch, 5.0)
    assert len(g.distances) == len(s.get_neighbor_list(5.0)[0]) > 0
    assert (g.edge_index == 0).all()


def test_gradcheck_vectors():
    lat0 = torch.tensor([[2.9, 0.1, 0.0], [0.3, 3.1, 0.2], [0.1, -0.2, 3.3]], dtype=torch.float64)
    frac0 = torch.tensor([[0.1, 0.2, 0.3], [0.6, 0.45, 0.8]], dtype=torch.float64)
    z = torch.tensor([6, 8])

    def fn(frac: torch.Tensor, lat: torch.Tensor) -> torch.Tensor:
        b = CrystalBatch(atomic_numbers=z, frac_coords=frac, lattices=lat[None], num_atoms=torch.tensor([2]))
        g = radius_graph(b, 4.0)
        return torch.cat([g.vectors.flatten(), g.distances])

    frac = frac0.clone().requires_grad_(True)
    lat = lat0.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (frac, lat))
    g = radius_graph(
        CrystalBatch(atomic_numbers=z, frac_coords=frac, lattices=lat[None], num_atoms=torch.tensor([2])),
        4.0,
        max_neighbors=3,
    )
    g.distances.sum().backward()
    assert frac.grad is not None and lat.grad is not None


def test_nearest_k_dense_path_matches_two_stable_sorts():
    """The top-k layout keeps exactly the first k of the (source, distance, enumeration) order."""
    from crystal.neighbors import nearest_k

    g = torch.Generator().manual_seed(0)
    counts = torch.randint(0, 30, (50,), generator=g)
    src = torch.repeat_interleave(torch.arange(50), counts)
    dist = torch.randint(0, 6, (src.numel(),), generator=g).double()  # many ties
    edge_index = torch.stack([src, torch.zeros_like(src)])
    order = torch.sort(dist, stable=True).indices
    order = order[torch.sort(src[order], stable=True).indices]
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(src.numel()) - first[src[order]]
    for k in (1, 5, 12, 40):
        expected = order[rank < k]
        assert torch.equal(nearest_k(edge_index, dist, k), expected), k


def test_knn_search_falls_back_to_the_full_cutoff_for_sparse_atoms():
    """The k-nearest path searches a density-based radius first; an atom short of k
    neighbours there (a lone atom beside a dense cluster) sends its crystal to the full
    search. The result must equal "all within the cutoff, then the k nearest"."""
    from pymatgen.core import Lattice, Structure

    from crystal.neighbors import nearest_k

    g = torch.Generator().manual_seed(3)
    pts = []
    while len(pts) < 40:  # a dense cluster in one corner of a 10 Å cell, atoms >= 1 Å apart
        p = torch.rand(3, generator=g) * 4.5
        if all(float((p - q).norm()) > 1.0 for q in pts):
            pts.append(p)
    frac = torch.stack(pts) / 10.0
    frac = torch.cat([frac, torch.tensor([[0.75, 0.75, 0.75]])])  # the lone atom
    sparse = Structure(Lattice.cubic(10.0), ["C"] * len(frac), frac.numpy())
    dense = Structure(Lattice.cubic(3.6), ["Cu"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    batch = CrystalBatch.from_structures([dense, sparse, dense])
    full = radius_graph(batch, 8.0)
    full_edges = set(zip(full.edge_index[0].tolist(), full.edge_index[1].tolist(), map(tuple, full.shifts.tolist())))
    for k in (4, 12):
        got = radius_graph(batch, 8.0, max_neighbors=k)
        # every kept edge (neighbour and image) is an edge of the full graph, kept once
        edges = list(zip(got.edge_index[0].tolist(), got.edge_index[1].tolist(), map(tuple, got.shifts.tolist())))
        assert set(edges) <= full_edges and len(set(edges)) == len(edges), k
        # all within the cutoff, then the k nearest: both ordered by (source, distance), so the
        # distances agree whichever of several equidistant neighbours was kept
        keep = nearest_k(full.edge_index, full.distances, k)
        assert torch.equal(got.edge_index[0], full.edge_index[0, keep]), k
        torch.testing.assert_close(got.distances, full.distances[keep])
        torch.testing.assert_close(got.vectors.norm(dim=-1), got.distances)
    lone = batch.ptr[1] + 40
    assert int((got.edge_index[0] == lone).sum()) == 12
