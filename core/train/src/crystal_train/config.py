"""Training runs as validated pydantic models, read from TOML (``crystal train RUN.toml``)::

    encoder = "cgcnn"
    output = "runs/cgcnn-perov5"

    [model]                     # the encoder's own config (architecture)
    n_conv = 3

    [[targets]]
    name = "heat_ref"
    unit = "eV"

    [data]
    train = ["../shared/data/perov_5/val.csv"]
    test = ["../shared/data/perov_5/test.csv"]
    val_fraction = 0.1

    [fit]                       # crystal_train.options.FitConfig (the same for every trainer)
    optimizer = "adamw"
    lr = 1e-3
    scheduler = "onecycle"
    max_epochs = 100
    batch_size = 64
    patience = 20

The tables ``[optim]`` and ``[trainer]`` of older run files are still read: their fields
are moved into ``[fit]`` (:func:`crystal_train.options.merge_legacy_sections`).

Unknown fields are errors naming the file and the field; ``--set section.field=value``
overrides any field (values parsed as TOML).
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from crystal.config import StrictModel, field_hint
from crystal.errors import ConfigError
from crystal.specs import parse_value
from crystal.targets import TargetSpec
from crystal_train.options import (
    LEGACY_SECTIONS,
    FitConfig,
    fit_defaults,
    merge_legacy_sections,
    warn_fine_tune_overrides,
)

__all__ = ["ENCODER_FIT_DEFAULTS", "DataConfig", "TrainConfig", "load_train_config", "parse_train_config"]


class DataConfig(StrictModel):
    """Where the labelled structures come from and how they are split."""

    train: list[str] = Field(
        min_length=1,
        description="training data: CSV with a 'cif' column (Perov-5/Carbon-24/MP-20), a folder of CIF/POSCAR "
        "files with id_prop.csv, extended XYZ, or pymatgen JSON (files, folders or globs)",
    )
    val: list[str] | None = Field(None, description="validation data; default: val_fraction of train")
    test: list[str] | None = Field(None, description="test data; default: test_fraction of train (0 = no test set)")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="fraction of train held out for validation (no val)")
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of train held out for testing (no test)")
    split_seed: int = Field(0, ge=0, description="seed of the random train/val/test split")
    columns: dict[str, str] = Field(
        default_factory=dict, description="target or input name -> column / info key in the data, when they differ"
    )
    inputs: list[str] = Field(
        default_factory=list,
        description="per-structure numeric columns the model reads as inputs (e.g. MEGNet's state_inputs such as "
        "temperature); a row missing one is skipped and reported",
    )
    limit: int | None = Field(None, ge=1, description="read at most this many structures per data set (for trials)")
    on_error: Literal["skip", "raise"] = Field(
        "skip",
        description="a row that cannot be used (bad CIF, missing or NaN target, unknown element): "
        "skip it and report it in failures.csv, or stop with an error",
    )

    @model_validator(mode="after")
    def _fractions(self) -> DataConfig:
        if self.val is not None and "val_fraction" in self.model_fields_set:
            raise ValueError("val_fraction is only used without val (both are given)")
        if self.test is not None and "test_fraction" in self.model_fields_set:
            raise ValueError("test_fraction is only used without test (both are given)")
        used = (0.0 if self.val is not None else self.val_fraction) + (
            0.0 if self.test is not None else self.test_fraction
        )
        if used >= 1.0:
            raise ValueError("val_fraction + test_fraction must leave training data (< 1)")
        return self


#: an encoder run's defaults that differ from :class:`FitConfig`'s
ENCODER_FIT_DEFAULTS: dict[str, Any] = {"batch_size": 64, "scheduler": "onecycle"}
#: [fit] defaults of a fine-tuning run (``init`` given), over the ones above: a peak learning
#: rate 10x below the from-scratch 1e-3, so that the first epochs do not erase the pretrained weights
ENCODER_FINE_TUNE_FIT_DEFAULTS: dict[str, Any] = {"lr": 1e-4}


class TrainConfig(StrictModel):
    """One training run of one encoder."""

    encoder: str = Field(min_length=1, description="encoder plugin name (`crystal plugins list`)")
    model: dict[str, Any] = Field(default_factory=dict, description="the encoder's config (architecture fields)")
    init: str | None = Field(
        None, description="start from these named weights or this checkpoint path (fine-tuning); the targets must match"
    )
    targets: list[TargetSpec] = Field(min_length=1, description="properties to learn")
    data: DataConfig
    fit: FitConfig = Field(
        default_factory=lambda: FitConfig(**ENCODER_FIT_DEFAULTS),
        description="optimiser, schedule, stopping, hardware, loggers (crystal_train.options.FitConfig)",
    )
    output: str = Field("runs/train", min_length=1, description="run directory (created; reused by --resume)")

    @model_validator(mode="before")
    @classmethod
    def _fit_section(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = merge_legacy_sections(data)
            init = data.get("init")
            defaults = ENCODER_FIT_DEFAULTS
            if init:
                defaults = {**ENCODER_FIT_DEFAULTS, **ENCODER_FINE_TUNE_FIT_DEFAULTS}
                scratch = {"lr": FitConfig.model_fields["lr"].default, **ENCODER_FIT_DEFAULTS}
                warn_fine_tune_overrides(data.get("fit"), ENCODER_FINE_TUNE_FIT_DEFAULTS, scratch, str(init))
            data = dict(data, fit=fit_defaults(data.get("fit"), defaults))
        return data

    @model_validator(mode="after")
    def _model_fields(self) -> TrainConfig:
        bad = sorted({"targets", "weights", "checkpoint", "sha256", "seed"} & set(self.model))
        if bad:
            raise ValueError(f"model.{bad[0]} is set by the run ([[targets]], init, fit.seed), not in [model]")
        return self


def parse_train_config(data: dict[str, Any], origin: str = "<train>") -> TrainConfig:
    """Validate a training run given as a dict; :class:`ConfigError` lists every problem,
    each naming ``origin`` (the file) and the field."""
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            "\n".join(
                f"{origin}: field {'.'.join(str(p) for p in err['loc']) or '<root>'!r}: "
                + (
                    "unknown field" + field_hint(TrainConfig, tuple(err["loc"]))
                    if err["type"] == "extra_forbidden"
                    else err["msg"]
                )
                for err in exc.errors()
            )
        ) from None


def apply_train_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``--set fit.max_epochs=5``, ``--set model.n_conv=4``, ``--set encoder=schnet``.

    Keys of the former ``optim`` / ``trainer`` tables (``--set trainer.max_epochs=5``) set
    the same field of ``fit``."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        m = re.match(r"^([A-Za-z0-9_.-]+)=(.*)$", item)
        if not m:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. trainer.max_epochs=5")
        *path, last = m.group(1).split(".")
        if path and path[0] in LEGACY_SECTIONS:
            path[0] = "fit"
        node = data
        for p in path:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {p!r} is not a table")
        node[last] = parse_value(m.group(2))  # TOML value, else the raw string
    return data


def read_run_toml(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a training TOML file, apply ``--set`` overrides and make ``data.train/val/test``
    and ``output`` paths relative to the file absolute (shared by encoder and potential runs)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read training file: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: malformed TOML: {exc}") from None
    data = apply_train_overrides(merge_legacy_sections(data), overrides or [])
    base = p.resolve().parent
    section = data.get("data")
    if isinstance(section, dict):
        for key in ("train", "val", "test"):
            value = section.get(key)
            if isinstance(value, str):
                value = [value]
            if isinstance(value, list):
                section[key] = [
                    v if not isinstance(v, str) or Path(v).is_absolute() else os.path.normpath(base / v) for v in value
                ]
    if isinstance(data.get("output"), str) and not Path(data["output"]).is_absolute():
        data["output"] = os.path.normpath(base / data["output"])
    return data


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a training TOML file (paths in ``data`` relative to the file), override, validate."""
    return parse_train_config(read_run_toml(path, overrides), str(path))
