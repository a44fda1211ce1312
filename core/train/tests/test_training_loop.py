"""crystal_train.engine.fit_model: the one engine, for models that define their own loss."""

from __future__ import annotations

import csv

import pytest
import torch

from crystal.errors import ConfigError
from crystal_train import FitConfig, TensorData, fit_model


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
    assert len(rows) == 40 and {"train_loss", "val_loss", "val_mae", "lr", "epoch_time_s"} <= set(rows[0])
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


def test_options_one_model_for_every_trainer():
    from crystal_train.options import fit_defaults

    cfg = FitConfig(logger="tensorboard")
    assert cfg.logger == ["csv", "tensorboard"]  # csv (metrics.csv) always
    with pytest.raises(ValueError, match="warmup_epochs does not apply to onecycle"):
        FitConfig(scheduler="onecycle", warmup_epochs=1)
    with pytest.raises(ValueError, match="amsgrad is a variant of adam"):
        FitConfig(optimizer="sgd", amsgrad=True)
    with pytest.raises(ValueError, match="Input should be"):
        FitConfig(logger="mlflow")
    # a trainer's defaults for another scheduler do not block the user's choice
    merged = fit_defaults({"scheduler": "cosine"}, {"scheduler": "plateau", "plateau_patience": 50, "lr": 0.01})
    assert FitConfig(**merged).lr == 0.01 and "plateau_patience" not in merged


def test_monitor_mode_max_selects_the_highest_metric():
    torch.manual_seed(0)
    result = fit_model(
        Linear(), _data(64, 0), _data(16, 1), {"max_epochs": 4, "lr": 0.05, "monitor": "val_mae", "monitor_mode": "max"}
    )
    assert result.best_score == max(r["val_mae"] for r in result.history)


def test_warmup_ramps_the_learning_rate_for_every_schedule():
    for scheduler in ("none", "plateau"):
        torch.manual_seed(0)
        result = fit_model(
            Linear(),
            _data(64, 0),
            _data(16, 1),
            {"max_epochs": 3, "lr": 0.1, "batch_size": 16, "scheduler": scheduler, "warmup_epochs": 2},
        )
        lrs = [r["lr"] for r in result.history]
        assert lrs[0] < lrs[1] <= 0.1 + 1e-12 and lrs[2] == pytest.approx(0.1), (scheduler, lrs)


def test_tensorboard_logger_writes_events(tmp_path):
    pytest.importorskip("tensorboardX", reason="crystal-train[test] installs tensorboardX")
    fit_model(Linear(), _data(32, 0), _data(8, 1), {"max_epochs": 2, "logger": ["tensorboard"]}, run_dir=tmp_path)
    events = list((tmp_path / "logs").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert (tmp_path / "metrics.csv").is_file()


def test_missing_logger_package_names_the_extra(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'crystal-train\[wandb\]'"):
        fit_model(Linear(), _data(8, 0), None, {"max_epochs": 1, "logger": "wandb"}, run_dir=tmp_path)
    with pytest.raises(ConfigError, match="needs a run directory"):
        fit_model(Linear(), _data(8, 0), None, {"max_epochs": 1, "logger": "tensorboard"})


def test_resume_continues_with_ema_and_best_epoch(tmp_path):
    torch.manual_seed(0)
    cfg = {"max_epochs": 3, "lr": 0.05, "ema_decay": 0.5, "scheduler": "none"}
    first = fit_model(Linear(), _data(64, 0), _data(16, 1), cfg, run_dir=tmp_path)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file() and first.epochs == 3
    again = fit_model(Linear(), _data(64, 0), _data(16, 1), {**cfg, "max_epochs": 5}, run_dir=tmp_path, resume=True)
    assert [r["epoch"] for r in again.history] == [4, 5] and again.epochs == 5
    assert again.best_score <= first.best_score


def test_writers_parity_plot_and_card(tmp_path):
    from crystal_train.writers import ParityPanel, RunReport, write_run

    report = RunReport(
        "toy model card",
        ["fact one"],
        {"test": {"y_mae": 0.5}},
        {"epochs": 1},
        {"width": 4},
        ["split", "id", "y_true", "y_pred"],
        [["test", "a", 1.0, 1.5]],
        [ParityPanel("y", [1.0, 2.0], [1.5, 2.0], "eV"), ParityPanel("c", [0, 1, 1], [0, 1, 0], kind="classification")],
    )
    write_run(tmp_path, report)
    card = (tmp_path / "model-card.md").read_text()
    assert "# toy model card" in card and "| test | y_mae | 0.5 |" in card and '"width": 4' in card
    assert (tmp_path / "parity.png").stat().st_size > 1000
    assert (tmp_path / "failures.csv").read_text().startswith("id,step,reason,source")
    assert list(csv.reader((tmp_path / "predictions.csv").open()))[1] == ["test", "a", "1.0", "1.5"]
