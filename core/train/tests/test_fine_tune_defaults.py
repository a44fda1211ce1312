"""Fine-tuning defaults (issue 12): with ``init`` the pretrained E0s are kept and the learning
rate is a fine-tuning one, unless the run says otherwise; a TOML plus ``--init`` gets them too."""

from __future__ import annotations

import pytest

from crystal_train.potential import parse_potential_config, read_potential_toml

BASE = {"potential": "mace", "data": {"train": ["x.xyz"]}, "output": "runs/x"}


def test_defaults_without_init_fit_e0s_with_the_training_lr():
    cfg = parse_potential_config(dict(BASE))
    assert cfg.e0s == "fit" and cfg.fit.lr == pytest.approx(0.01)


def test_fine_tuning_keeps_e0s_and_uses_a_small_lr():
    cfg = parse_potential_config(dict(BASE, init="mace-mp-0-small"))
    assert cfg.e0s == "keep" and cfg.fit.lr == pytest.approx(1e-4)
    cfg = parse_potential_config(dict(BASE, init="mace-mp-0-small", fit={"max_epochs": 3}))
    assert cfg.fit.lr == pytest.approx(1e-4) and cfg.fit.max_epochs == 3


def test_explicit_choices_win():
    cfg = parse_potential_config(dict(BASE, init="w", e0s="fit", fit={"lr": 0.003}))
    assert cfg.e0s == "fit" and cfg.fit.lr == pytest.approx(0.003)


def test_toml_then_init_from_the_command_line_gets_fine_tuning_defaults(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('potential = "mace"\noutput = "out"\n[data]\ntrain = ["x.xyz"]\n[fit]\nmax_epochs = 2\n')
    raw = read_potential_toml(path)
    raw["init"] = "mace-mp-0-small"  # what `crystal train-potential run.toml --init ...` does
    cfg = parse_potential_config(raw, str(path))
    assert cfg.e0s == "keep" and cfg.fit.lr == pytest.approx(1e-4) and cfg.fit.max_epochs == 2
