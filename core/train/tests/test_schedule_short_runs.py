"""One-cycle with too few optimiser steps falls back to cosine with a warning (issue 15: one step
per epoch logged lr 4e-9 in epoch 1 and a loss of 72)."""

from __future__ import annotations

import csv

import pytest
import torch

from crystal_train import FitConfig, fit_model
from crystal_train.engine import ONECYCLE_MIN_STEPS, make_schedule


class Linear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 1)

    def training_loss(self, batch):
        x, y = batch
        err = self.lin(x).squeeze(-1) - y
        return {"loss": (err**2).mean()}


def _opt(lr: float = 1e-3) -> torch.optim.Optimizer:
    return torch.optim.AdamW(torch.nn.Linear(2, 1).parameters(), lr=lr)


def test_short_onecycle_falls_back_to_cosine_with_a_warning():
    cfg = FitConfig(scheduler="onecycle", max_epochs=10, batch_size=64, lr=1e-3)
    opt = _opt()
    with pytest.warns(UserWarning, match=rf"needs at least {ONECYCLE_MIN_STEPS} optimiser steps.*has 10"):
        entry = make_schedule(opt, cfg, 10, "val_loss")
    sched = entry["scheduler"]
    assert not isinstance(sched, torch.optim.lr_scheduler.OneCycleLR)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-3)  # starts at the configured lr, not lr/25
    assert min(lrs) > 1e-6 and lrs == sorted(lrs, reverse=True)


def test_long_onecycle_is_kept_without_warning(recwarn):
    cfg = FitConfig(scheduler="onecycle", max_epochs=10, lr=1e-3)
    entry = make_schedule(_opt(), cfg, ONECYCLE_MIN_STEPS, "val_loss")
    assert isinstance(entry["scheduler"], torch.optim.lr_scheduler.OneCycleLR)
    assert not [w for w in recwarn if "onecycle" in str(w.message)]


@pytest.mark.slow  # a Lightning run: ~20 s on a loaded 2-core VM
def test_one_step_per_epoch_trains_at_a_usable_lr(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5])
    cfg = FitConfig(scheduler="onecycle", max_epochs=4, batch_size=16, lr=1e-2)  # 1 step per epoch
    with pytest.warns(UserWarning, match="cosine schedule"):
        fit_model(Linear(), (x, y), (x, y), cfg, run_dir=tmp_path)
    lrs = [float(r["lr"]) for r in csv.DictReader((tmp_path / "metrics.csv").open())]
    # one-cycle logged [8e-3, 2.8e-3, 4e-8, 2.8e-3] here; cosine decays from lr to 0 at the last step
    assert min(lrs[:-1]) > 1e-3 and lrs == sorted(lrs, reverse=True), lrs
