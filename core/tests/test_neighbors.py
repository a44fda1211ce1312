from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from crystal import CrystalBatch
from crystal.neighbors import radius_graph


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
