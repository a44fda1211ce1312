"""crystal.checkpoint_formats: Lightning checkpoints with omegaconf hyper-parameters, weights-only.

The fixture ``lightning_omegaconf.ckpt`` was written by the real omegaconf and PyTorch-Lightning
(not installed with crystal) with :func:`make_fixture`::

    python -m venv /tmp/ckpt-ref && /tmp/ckpt-ref/bin/pip install torch==2.13.0 omegaconf==2.3.1 \\
        pytorch-lightning==2.6.6
    /tmp/ckpt-ref/bin/python core/crystal/tests/test_checkpoint_formats.py

It is a one-step ``Trainer.fit`` of a tiny module whose ``save_hyperparameters()`` received
omegaconf containers the way Hydra projects (DiffCSP, CDVAE, MatterGen) pass them: nested
``DictConfig``/``ListConfig`` nodes, ints, floats, bools, None, strings, an unresolved
interpolation and a missing value; the ModelCheckpoint callback state and Adam's state are in it.
"""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from crystal.checkpoint_formats import SAFE_GLOBAL_NAMES, load_lightning_checkpoint, plain_data
from crystal.errors import WeightsError

FIXTURE = Path(__file__).with_name("lightning_omegaconf.ckpt")

#: the hyper-parameters make_fixture passes (as omegaconf containers), in plain form
EXPECTED_HPARAMS = {
    "decoder": {
        "_target_": "pkg.module.Net",
        "hidden_dim": 8,
        "num_layers": 2,
        "act_fn": "silu",
        "ln": True,
        "cutoff": "${model.radius}",
        "dropout": None,
        "scale": 0.5,
        "name": "???",
    },
    "layers": [4, 8, {"kind": "dense", "bias": False}],
    "time_dim": 16,
    "cost_lattice": 1.0,
}


def make_fixture(path: Path = FIXTURE) -> None:  # pragma: no cover - run in the side venv only
    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(EXPECTED_HPARAMS)

    class Tiny(pl.LightningModule):  # type: ignore[misc]
        def __init__(self, **kwargs: object) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Linear(3, 2)

        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            return self.net(batch).pow(2).mean()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    torch.manual_seed(0)
    model = Tiny(**cfg)  # the values are DictConfig / ListConfig / plain, as Hydra's instantiate passes them
    loader = torch.utils.data.DataLoader(torch.randn(4, 3), batch_size=2)
    trainer = pl.Trainer(max_steps=1, logger=False, enable_progress_bar=False, default_root_dir="/tmp/ckpt-fixture-run")
    trainer.fit(model, loader)
    trainer.save_checkpoint(str(path))


@pytest.mark.skipif(not FIXTURE.is_file(), reason="fixture not generated")
def test_lightning_fixture_needs_the_stand_ins() -> None:
    """Without the allowlist the file does not load weights-only (so the test means something)."""
    with pytest.raises(pickle.UnpicklingError, match="omegaconf"):
        torch.load(FIXTURE, weights_only=True)


def test_lightning_fixture_loads_with_plain_hparams() -> None:
    ckpt = load_lightning_checkpoint(FIXTURE)
    assert ckpt["hyper_parameters"] == EXPECTED_HPARAMS
    assert type(ckpt["hyper_parameters"]["decoder"]) is dict
    assert type(ckpt["hyper_parameters"]["layers"]) is list
    sd = ckpt["state_dict"]
    assert set(sd) == {"net.weight", "net.bias"}
    assert sd["net.weight"].shape == (2, 3) and sd["net.weight"].dtype == torch.float32
    assert ckpt["global_step"] == 1
    assert isinstance(ckpt["pytorch-lightning_version"], str)
    assert ckpt["optimizer_states"][0]["state"][0]["exp_avg"].shape == (2, 3)


def test_lightning_loader_is_independent_of_omegaconf() -> None:
    """crystal does not need omegaconf or Lightning installed (nothing of theirs is imported)."""
    import sys

    load_lightning_checkpoint(FIXTURE)
    assert "omegaconf" not in sys.modules


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo owned > /dev/null",))


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "epoch=1-step=2.ckpt"
    torch.save({"state_dict": OrderedDict(w=torch.zeros(2)), "hyper_parameters": {"x": _Exploit()}}, bad)
    with pytest.raises(WeightsError) as info:
        load_lightning_checkpoint(bad)
    msg = str(info.value)
    assert str(bad) in msg and "system" in msg and "not allowed" in msg


def test_stand_in_names_cannot_be_called(tmp_path: Path) -> None:
    """A type reference (e.g. builtins.dict, typing.Any) is inert: a REDUCE on it is refused."""

    class Calls:
        def __reduce__(self) -> tuple[object, tuple[()]]:
            return (int, ())

    bad = tmp_path / "calls.ckpt"
    torch.save({"state_dict": {}, "x": Calls()}, bad)
    with pytest.raises(WeightsError, match=str(bad.name)):
        load_lightning_checkpoint(bad)


def test_not_a_lightning_checkpoint(tmp_path: Path) -> None:
    plain = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(1)}, plain)
    with pytest.raises(WeightsError, match="no 'state_dict'"):
        load_lightning_checkpoint(plain)
    with pytest.raises(WeightsError, match="does not exist"):
        load_lightning_checkpoint(tmp_path / "missing.ckpt")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=str(garbage.name)):
        load_lightning_checkpoint(garbage)


def test_old_lightning_callback_class_keys(tmp_path: Path) -> None:
    """Lightning < 1.5 keys ``callbacks`` by the callback class; those load as their dotted names."""
    pl = pytest.importorskip("pytorch_lightning")
    from pytorch_lightning.callbacks.early_stopping import EarlyStopping
    from pytorch_lightning.callbacks.model_checkpoint import ModelCheckpoint

    if ModelCheckpoint.__module__ != "pytorch_lightning.callbacks.model_checkpoint":  # pragma: no cover
        pytest.skip(f"pytorch_lightning {pl.__version__} moved ModelCheckpoint")
    old = tmp_path / "old.ckpt"
    torch.save(
        {
            "state_dict": OrderedDict(w=torch.ones(2)),
            "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.5)}, EarlyStopping: {"wait_count": 3}},
        },
        old,
    )
    ckpt = load_lightning_checkpoint(old)
    cb = ckpt["callbacks"]
    assert float(cb["pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"]["best_model_score"]) == 0.5
    assert cb["pytorch_lightning.callbacks.early_stopping.EarlyStopping"] == {"wait_count": 3}


def test_plain_data_keeps_tensors_and_ordered_dicts() -> None:
    sd = OrderedDict(a=torch.ones(1))
    out = plain_data({"sd": sd, "t": (1, [2.0, "x"])})
    assert type(out["sd"]) is OrderedDict and out["sd"]["a"] is sd["a"]
    assert out["t"] == (1, [2.0, "x"])
    assert "omegaconf.dictconfig.DictConfig" in SAFE_GLOBAL_NAMES


if __name__ == "__main__":  # pragma: no cover
    make_fixture()
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")
