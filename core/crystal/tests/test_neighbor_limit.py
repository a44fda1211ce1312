"""radius_graph refuses a collapsed cell with an error naming it instead of allocating an
unbounded edge list (issue 15)."""

from __future__ import annotations

import pytest
import torch
from ase.build import bulk

from crystal import CrystalBatch, StructureError
from crystal.neighbors import NeighborLimitError, radius_graph


def _batch(scale: float) -> CrystalBatch:
    ok = bulk("Si", "diamond", a=5.43)
    dense = bulk("Cu", "fcc", a=3.61)
    dense.set_cell(dense.cell * scale, scale_atoms=True)
    return CrystalBatch.from_atoms([ok, dense], ids=["si", "collapsed"])


def test_collapsed_cell_is_named_and_bound_is_configurable():
    batch = _batch(0.25)  # Cu at 1/64 of its volume: 5.4 atoms/Å^3
    with pytest.raises(NeighborLimitError, match=r"'collapsed'.*max_mean_neighbors=2000") as err:
        radius_graph(batch, 5.0)
    assert isinstance(err.value, StructureError)
    assert err.value.ids == ["collapsed"] and err.value.indices == [1]
    g = radius_graph(batch, 5.0, max_mean_neighbors=None)  # lifted: the full graph
    assert g.edge_index.shape[1] > 2000
    with pytest.raises(NeighborLimitError, match="'si'"):  # diamond: ~26 neighbours within 5 Å
        radius_graph(batch.select([0]), 5.0, max_mean_neighbors=10)


def test_real_crystals_pass_the_default_bound():
    g = radius_graph(_batch(1.0), 8.5)  # Si (diamond) and Cu at 8.5 Å: ~130 and ~220 per atom
    counts = torch.bincount(g.edge_index[0])
    assert int(counts.max()) < 2000
