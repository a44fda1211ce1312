"""Fine-tuning (``init``) defaults differ from from-scratch ones for encoders and potentials
(a 10x / 100x lower learning rate, pretrained E0s and normalisation kept), and overriding
them warns (issue 15)."""

from __future__ import annotations

import warnings

import pytest

from crystal_train.config import parse_train_config
from crystal_train.potential import parse_potential_config

ENC = {"encoder": "cgcnn", "targets": [{"name": "heat"}], "data": {"train": ["x.csv"]}, "output": "runs/x"}
POT = {"potential": "mace", "data": {"train": ["x.xyz"]}, "output": "runs/x"}


def _quiet(fn, data):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning with the defaults
        return fn(data)


def test_encoder_fine_tuning_defaults_to_a_lower_lr():
    scratch = _quiet(parse_train_config, dict(ENC))
    tuned = _quiet(parse_train_config, dict(ENC, init="cgcnn-perov5-heat-ref"))
    assert scratch.fit.lr == pytest.approx(1e-3)
    assert tuned.fit.lr == pytest.approx(1e-4)  # 10x lower
    assert tuned.fit.scheduler == scratch.fit.scheduler == "onecycle" and tuned.fit.batch_size == 64
    tuned = _quiet(parse_train_config, dict(ENC, init="w", fit={"max_epochs": 3}))
    assert tuned.fit.lr == pytest.approx(1e-4) and tuned.fit.max_epochs == 3


def test_encoder_lr_override_while_fine_tuning_warns_and_wins():
    with pytest.warns(UserWarning, match=r"fine-tuning from 'w' with fit.lr = 0.001.*default is 0.0001"):
        cfg = parse_train_config(dict(ENC, init="w", fit={"lr": 1e-3}))
    assert cfg.fit.lr == pytest.approx(1e-3)
    _quiet(parse_train_config, dict(ENC, fit={"lr": 3e-3}))  # from scratch: no warning


def test_potential_fine_tuning_defaults_and_override_warnings():
    scratch = _quiet(parse_potential_config, dict(POT))
    tuned = _quiet(parse_potential_config, dict(POT, init="mace-mp-0-small"))
    assert (scratch.e0s, tuned.e0s) == ("fit", "keep")
    assert scratch.fit.lr == pytest.approx(0.01) and tuned.fit.lr == pytest.approx(1e-4)
    with pytest.warns(UserWarning, match="e0s = 'fit'"):
        cfg = parse_potential_config(dict(POT, init="w", e0s="fit"))
    assert cfg.e0s == "fit"
    with pytest.warns(UserWarning, match=r"fit.lr = 0.01"):
        cfg = parse_potential_config(dict(POT, init="w", fit={"lr": 0.01}))
    assert cfg.fit.lr == pytest.approx(0.01)
