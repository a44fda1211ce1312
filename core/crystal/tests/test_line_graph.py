from __future__ import annotations

import numpy as np
import pytest
import torch

from crystal import CrystalBatch
from crystal.line_graph import line_graph
from crystal.neighbors import radius_graph
from crystal.testing.transforms import permute, random_rotation, rotate, translate

CUTOFF = 4.0


def _bruteforce(edge_index: torch.Tensor, vectors: torch.Tensor) -> list[tuple[int, int, float]]:
    src, dst = edge_index.tolist()
    v = vectors.detach().numpy()
    out = []
    for e1 in range(len(src)):
        for e2 in range(len(src)):
            if dst[e1] == src[e2]:
                a, b = -v[e1], v[e2]
                out.append((e1, e2, float(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))))
    return sorted(out)


@pytest.fixture
def graph(pmg_structures):
    batch = CrystalBatch.from_structures([pmg_structures[0], pmg_structures[3]])  # Si, CsCl
    return batch, radius_graph(batch, CUTOFF)


def test_matches_bruteforce(graph):
    batch, g = graph
    lg, cos = line_graph(g.edge_index, g.vectors, batch.num_nodes)
    ours = sorted(zip(lg[0].tolist(), lg[1].tolist(), cos.tolist()))
    ref = _bruteforce(g.edge_index, g.vectors)
    assert [o[:2] for o in ours] == [r[:2] for r in ref]
    np.testing.assert_allclose([o[2] for o in ours], [r[2] for r in ref], atol=1e-12)
    indeg = torch.bincount(g.edge_index[1], minlength=batch.num_nodes)
    outdeg = torch.bincount(g.edge_index[0], minlength=batch.num_nodes)
    assert lg.shape[1] == int((indeg * outdeg).sum())
    # pairs never cross crystals
    crystal = batch.batch[g.edge_index[0]]
    assert torch.equal(crystal[lg[0]], crystal[lg[1]])
    # Si: tetrahedral angle among the 4 nearest neighbours, 180° for the backtracking pair
    assert np.isclose(cos.numpy(), -1 / 3, atol=1e-6).any() and np.isclose(cos.numpy(), 1.0).any()


def test_cutoff_restricts_bonds(graph):
    batch, g = graph
    lg, cos = line_graph(g.edge_index, g.vectors, batch.num_nodes, cutoff=3.0)
    short = g.distances < 3.0
    assert short[lg[0]].all() and short[lg[1]].all()
    sub = g.edge_index[:, short]
    indeg = torch.bincount(sub[1], minlength=batch.num_nodes)
    outdeg = torch.bincount(sub[0], minlength=batch.num_nodes)
    assert lg.shape[1] == int((indeg * outdeg).sum()) == len(cos)


def test_empty():
    lg, cos = line_graph(torch.zeros((2, 0), dtype=torch.long), torch.zeros((0, 3)))
    assert lg.shape == (2, 0) and cos.shape == (0,)


def test_gradient_flows(graph):
    _, g = graph
    v = g.vectors.detach().requires_grad_(True)
    _, cos = line_graph(g.edge_index, v)
    cos.sum().backward()
    assert v.grad is not None and torch.isfinite(v.grad).all()


@pytest.mark.parametrize("transform", ["rotate", "translate", "permute"])
def test_cosine_multiset_invariant(pmg_structures, transform):
    batch = CrystalBatch.from_structures(pmg_structures[:4])
    gen = torch.Generator().manual_seed(1)
    if transform == "rotate":
        other = rotate(batch, random_rotation(gen))
    elif transform == "translate":
        other = translate(batch, torch.tensor([0.3, -1.7, 2.2], dtype=torch.float64))
    else:
        other, _ = permute(batch, gen)
    results = []
    for b in (batch, other):
        g = radius_graph(b, CUTOFF)
        _, cos = line_graph(g.edge_index, g.vectors, b.num_nodes)
        results.append(np.sort(cos.numpy()))
    np.testing.assert_allclose(results[0], results[1], atol=1e-9)
