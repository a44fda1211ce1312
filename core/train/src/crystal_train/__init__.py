"""Training encoders with PyTorch Lightning (``crystal train`` and the Python API).

>>> from crystal_train import train
>>> result = train({"encoder": "cgcnn", "targets": [{"name": "heat_ref", "unit": "eV"}],
...                 "data": {"train": ["perov_5/val.csv"], "test": ["perov_5/test.csv"]},
...                 "fit": {"max_epochs": 50}, "output": "runs/cgcnn"})  # doctest: +SKIP
>>> result.metrics["test"]["heat_ref_mae"]  # doctest: +SKIP

One engine trains everything: :func:`fit_model` minimises any module's
``training_loss(batch)`` with the options of :class:`FitConfig` (encoders, potentials,
DiffCSP, CrystaLLM and the XRD classifier all use it); :mod:`crystal_train.writers`
writes every run's artefacts. :func:`fit` trains any
:class:`~crystal.trainable.TrainableEncoder` on labelled :class:`~crystal.batch.CrystalBatch`
objects; :func:`read_labelled` reads data sets; :func:`evaluate` predicts and scores.
Lightning is imported on first use.
"""

from __future__ import annotations

from crystal_train.config import DataConfig, TrainConfig, load_train_config, parse_train_config
from crystal_train.data import LabelledData, read_labelled, split_indices
from crystal_train.encoders import EncoderLoss, TrainResult, evaluate, fit, train
from crystal_train.engine import FitResult, TensorData, fit_model
from crystal_train.options import FitConfig
from crystal_train.potential import (
    LossWeights,
    PotentialDataConfig,
    PotentialTrainConfig,
    PotentialTrainResult,
    parse_potential_config,
    train_potential,
)

__all__ = [
    "DataConfig",
    "EncoderLoss",
    "FitConfig",
    "FitResult",
    "LabelledData",
    "LossWeights",
    "PotentialDataConfig",
    "PotentialTrainConfig",
    "PotentialTrainResult",
    "TensorData",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "fit",
    "fit_model",
    "load_train_config",
    "parse_potential_config",
    "parse_train_config",
    "read_labelled",
    "split_indices",
    "train",
    "train_potential",
]
