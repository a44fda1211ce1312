"""Training path of crystal-mattergen: data preparation, the loss, and (slow) fit_model on the toy denoiser."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from crystal_mattergen.model import MatterGenModel, ToyDenoiser, load_model, save_model
from crystal_mattergen.train import average_density, prepare_batch
from crystal_train import FitConfig, fit_model

torch.set_num_threads(1)


def perovskites() -> list:  # type: ignore[type-arg]
    from pymatgen.core import Lattice, Structure

    out = []
    for a_site, b_site, x, a in (("Sr", "Ti", "O", 3.905), ("Ba", "Zr", "O", 4.19), ("K", "Nb", "O", 4.02)):
        lat = Lattice.from_parameters(a, a * 1.01, a * 0.99, 89.0, 91.0, 90.5)
        out.append(
            Structure(
                lat, [b_site, a_site, x, x, x], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0], [0, 0.5, 0], [1.0, 0, 0.5]]
            )
        )
    return out


def test_prepare_batch_symmetrises_the_lattice() -> None:
    batch = prepare_batch(perovskites(), ["a", "b", "c"])
    assert batch.dtype == torch.float32 and batch.ids == ["a", "b", "c"]
    assert torch.allclose(batch.lattices, batch.lattices.transpose(1, 2), atol=1e-5)
    assert float(batch.frac_coords.min()) >= 0 and float(batch.frac_coords.max()) < 1
    rho = average_density(batch)
    assert 0.05 < rho < 0.1  # 5 atoms in ~60-75 Å^3


def test_training_loss_and_backward() -> None:
    batch = prepare_batch(perovskites())
    torch.manual_seed(0)
    model = MatterGenModel(ToyDenoiser(16), kind="toy")
    model.record_training_set(batch.num_atoms)
    assert model.num_atoms_distribution == {5: 1.0}
    losses = model.training_loss(batch)
    assert set(losses) == {"loss", "loss_pos", "loss_cell", "loss_atomic_numbers"}
    losses["loss"].backward()
    assert all(p.grad is not None for p in model.denoiser.inp.parameters())


@pytest.mark.slow
def test_fit_model_trains_the_toy_denoiser(tmp_path: Path) -> None:
    """~50 s on the shared 2-core VM (Lightning start-up)."""
    batch = prepare_batch(perovskites() * 4)
    torch.manual_seed(0)
    model = MatterGenModel(ToyDenoiser(16), kind="toy")
    model.record_training_set(batch.num_atoms)
    fit = FitConfig(max_epochs=2, batch_size=6, lr=1e-3, accelerator="cpu", progress=False, seed=0)
    result = fit_model(model, batch, batch.select(torch.arange(3)), fit, run_dir=tmp_path / "run", quiet=True)
    assert len(result.history) == 2 and torch.isfinite(torch.tensor(result.history[-1]["train_loss"]))
    path = save_model(result.net, tmp_path / "model.pt")  # type: ignore[arg-type]
    again, _ = load_model(path)
    assert again.num_atoms_distribution == {5: 1.0}
