"""GPU checks (marked ``gpu``; skipped where CUDA is absent)."""

from __future__ import annotations

import pytest
import torch
from ase.build import bulk

from crystal import CrystalBatch
from crystal.testing import LennardJones
from crystal_sim.relax import relax

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_batch_moves_to_cuda_and_back():
    batch = CrystalBatch.from_atoms([bulk("Cu", "fcc", a=3.6), bulk("Si", "diamond", a=5.43)])
    gpu = batch.to("cuda")
    assert gpu.device.type == "cuda" and gpu.batch.device.type == "cuda"
    torch.testing.assert_close(gpu.cart_coords.cpu(), batch.cart_coords)
    assert gpu.select([1]).ids == ["1"]


def test_relax_on_cuda_matches_cpu():
    atoms = bulk("Ar", "fcc", a=5.6) * (2, 1, 1)
    atoms.rattle(0.2, seed=1)
    batch = CrystalBatch.from_atoms([atoms, bulk("Ar", "sc", a=3.5)])
    cpu = relax(LennardJones(device="cpu", cutoff=6.0), batch, fmax=1e-3)
    gpu = relax(LennardJones(device="cuda", cutoff=6.0), batch, fmax=1e-3)
    assert gpu.batch.device.type == "cuda"
    torch.testing.assert_close(gpu.energy.cpu(), cpu.energy, atol=1e-8, rtol=0)
    assert gpu.steps.tolist() == cpu.steps.tolist()


def test_radius_graph_on_cuda_matches_cpu():
    from crystal.neighbors import radius_graph

    batch = CrystalBatch.from_atoms([bulk("Cu", "fcc", a=3.6) * (2, 1, 1), bulk("Si", "diamond", a=5.43)])
    for k in (None, 12):
        g_cpu, g_gpu = radius_graph(batch, 6.0, max_neighbors=k), radius_graph(batch.to("cuda"), 6.0, max_neighbors=k)
        assert torch.equal(g_gpu.edge_index.cpu(), g_cpu.edge_index)
        torch.testing.assert_close(g_gpu.distances.cpu(), g_cpu.distances)


def test_fit_on_cuda_keeps_data_on_the_device():
    """The training engine moves the data set to the GPU once and trains there."""
    from test_trainable import MeanEmbeddingEncoder
    from test_training import _toy_data

    from crystal_train import evaluate, fit

    data = _toy_data(16)
    enc = MeanEmbeddingEncoder(targets=[{"name": "y"}], width=8, device="cuda")
    before = evaluate(enc, data)[1]["y_mae"]
    enc, _info = fit(
        enc,
        data,
        data,
        trainer={"max_epochs": 30, "batch_size": 4, "accelerator": "gpu"},
        optim={"lr": 0.05, "scheduler": "none"},
        quiet=True,
    )
    assert next(enc.net.parameters()).device.type == "cuda"
    assert evaluate(enc, data)[1]["y_mae"] < before
