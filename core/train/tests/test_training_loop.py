"""crystal_train.loop.fit_model: the shared loop for models that define their own loss."""

from __future__ import annotations

import csv

import pytest
import torch

from crystal.errors import ConfigError
from crystal_train.loop import FitConfig, TensorData, fit_model


class Linear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 1)

    def training_loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch
        err = self.lin(x).squeeze(-1) - y
        return {"loss": (err**2).mean(), "mae": err.abs().mean()}


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    return x, x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3


def test_fit_model_learns_a_linear_map_and_writes_metrics(tmp_path):
    torch.manual_seed(0)
    net = Linear()
    result = fit_model(
        net, _data(256, 0), _data(64, 1), FitConfig(max_epochs=40, batch_size=32, lr=0.05), run_dir=tmp_path
    )
    assert result.net is net and not net.training
    assert result.history[-1]["val_mae"] < 0.05 < result.history[0]["val_mae"]
    assert result.best_score == min(r["val_loss"] for r in result.history)
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert len(rows) == 40 and {"train_loss", "val_loss", "val_mae", "lr", "seconds"} <= set(rows[0])
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert torch.equal(best["lin.weight"], net.lin.weight)


def test_ema_weights_are_the_returned_weights():
    torch.manual_seed(0)
    net = Linear()
    result = fit_model(net, _data(128, 0), _data(32, 1), {"max_epochs": 5, "lr": 0.05, "ema_decay": 0.9})
    x, y = _data(32, 1)
    with torch.no_grad():
        val = ((net.lin(x).squeeze(-1) - y) ** 2).mean()
    # the recorded best val_loss was computed with the EMA weights that are now loaded
    assert float(val) == pytest.approx(result.best_score, rel=1e-4)


def test_early_stopping_stops_on_patience():
    torch.manual_seed(0)
    net = Linear()
    # lr so small that nothing improves beyond float noise: patience 2 must stop long before 50 epochs
    result = fit_model(net, _data(64, 0), _data(16, 1), {"max_epochs": 50, "lr": 1e-12, "patience": 2})
    assert len(result.history) < 50
    assert len(result.history) - result.best_epoch == 2


def test_bad_inputs_are_named():
    with pytest.raises(ConfigError, match="training_loss"):
        fit_model(torch.nn.Linear(2, 2), torch.zeros(4, 2))
    with pytest.raises(ConfigError, match="no training items"):
        fit_model(Linear(), torch.zeros(0, 3))
    with pytest.raises(ConfigError, match="dim 0"):
        TensorData(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ConfigError, match="monitor 'val_nope'"):
        fit_model(Linear(), _data(8, 0), _data(8, 1), {"max_epochs": 1, "monitor": "val_nope"})
    with pytest.raises(ValueError, match="extra"):
        FitConfig(epochs=3)


def test_max_minutes_stops_training_early():
    torch.manual_seed(0)
    result = fit_model(Linear(), _data(64, 0), _data(16, 1), {"max_epochs": 100000, "max_minutes": 0.02})
    assert 1 <= len(result.history) < 100000 and result.seconds < 30
