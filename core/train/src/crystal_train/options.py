"""The one options model of every training run: :class:`FitConfig`.

Encoders (``crystal train``, table ``[fit]``), potentials (``crystal train-potential``,
table ``[fit]``), DiffCSP, CrystaLLM and the XRD classifier all train through
:func:`crystal_train.engine.fit_model` with these options; each trainer only changes the
defaults (:func:`fit_defaults`)::

    [fit]
    max_epochs = 100
    batch_size = 64
    optimizer = "adamw"       # adam | adamw | sgd  (amsgrad = true for the AMSGrad variant)
    lr = 1e-3
    scheduler = "onecycle"    # none | cosine | onecycle | plateau | multistep
    warmup_epochs = 0
    gradient_clip = 1.0
    ema_decay = 0.99
    monitor = "val_loss"      # any logged metric; monitor_mode = "max" for accuracies
    patience = 20             # early stopping on monitor
    max_minutes = 60          # wall-time cap
    devices = 2               # DDP through Lightning
    logger = ["tensorboard"]  # metrics.csv is always written

Encoder run files written before the single engine used two tables, ``[optim]`` and
``[trainer]``; :func:`merge_legacy_sections` maps them field by field into ``[fit]`` (the
names are the same; ``optim.gamma`` with the plateau scheduler is ``plateau_factor``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from crystal.config import StrictModel
from crystal.errors import ConfigError

__all__ = [
    "LEGACY_SECTIONS",
    "FitConfig",
    "LoggerName",
    "check_loggers",
    "fit_defaults",
    "merge_legacy_sections",
    "warn_fine_tune_overrides",
]

LoggerName = Literal["csv", "tensorboard", "wandb"]

#: run-file tables that older encoder runs used; their fields now live in ``[fit]``
LEGACY_SECTIONS = ("optim", "trainer")


class FitConfig(StrictModel):
    """Optimiser, schedule, stopping, hardware and logging of one training run."""

    # ---------------------------------------------------------------- length
    max_epochs: int = Field(100, ge=1, description="maximum number of epochs (passes over the training data)")
    batch_size: int = Field(32, ge=1, description="items (crystals, sequences, patterns) per step and process")
    max_minutes: float | None = Field(
        None, gt=0, description="stop after this much training wall time, minutes (the best epoch so far is kept)"
    )
    # ---------------------------------------------------------------- optimiser
    optimizer: Literal["adam", "adamw", "sgd"] = Field(
        "adamw", description="torch.optim optimiser (AdamW: decoupled weight decay)"
    )
    lr: float = Field(1e-3, gt=0, description="peak learning rate, per optimiser step")
    weight_decay: float = Field(0.0, ge=0, description="weight decay (decoupled for adamw), per step")
    amsgrad: bool = Field(False, description="the AMSGrad variant of adam/adamw (MACE's default)")
    momentum: float | None = Field(None, ge=0, lt=1, description="SGD momentum (sgd only; default 0.9)")
    gradient_clip: float | None = Field(None, gt=0, description="clip the global gradient L2 norm to this value")
    ema_decay: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="exponential moving average of the weights, decay per optimiser step; validation, "
        "checkpoints and the returned model use the averaged weights",
    )
    # ---------------------------------------------------------------- schedule
    scheduler: Literal["none", "cosine", "onecycle", "plateau", "multistep"] = Field(
        "cosine",
        description="learning-rate schedule: none, cosine decay to 0 per step, one-cycle (its own warm-up), "
        "reduce-on-plateau of `monitor` per epoch, or multistep (x gamma at `milestones` epochs)",
    )
    warmup_epochs: int = Field(
        0, ge=0, description="linear warm-up from lr/steps to lr over this many epochs (not with onecycle)"
    )
    plateau_factor: float = Field(0.5, gt=0, lt=1, description="plateau: lr factor when `monitor` stalls")
    plateau_patience: int = Field(10, ge=1, description="plateau: epochs without improvement before the lr drops")
    milestones: list[int] | None = Field(None, description="multistep: epochs at which lr is multiplied by gamma")
    gamma: float | None = Field(None, gt=0, le=1, description="multistep: lr factor at each milestone (default 0.1)")
    # ---------------------------------------------------------------- selection and stopping
    monitor: str = Field(
        "val_loss",
        min_length=1,
        description="logged metric (train_<key> / val_<key>) selecting the best epoch; without validation data "
        "val_<key> becomes train_<key>",
    )
    monitor_mode: Literal["min", "max"] = Field("min", description="whether `monitor` is minimised or maximised")
    patience: int | None = Field(None, ge=1, description="early stopping: epochs without improvement of `monitor`")
    check_val_every_n_epoch: int = Field(1, ge=1, description="validate every n epochs")
    batchnorm_stats: Literal["running", "recompute"] = Field(
        "running",
        description="BatchNorm statistics for validation and the saved model: 'running' (PyTorch's moving "
        "average) or 'recompute' (exact averages over the training set with the current weights before every "
        "validation, 'precise BN' of Wu & Johnson 2021); needs a model with BatchNorm layers",
    )
    # ---------------------------------------------------------------- hardware
    seed: int = Field(0, ge=0, description="seed of initialisation, shuffling and dropout")
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = Field("auto", description="Lightning accelerator")
    devices: int | Literal["auto"] = Field(
        1,
        description="devices (processes) per node; > 1 trains with DDP; under torchrun / srun: unset or 'auto' "
        "takes the launcher's processes per node, a number must equal it (crystal_train.cluster)",
    )
    num_nodes: int = Field(
        1,
        ge=1,
        description="nodes for multi-node DDP; under torchrun / srun: unset takes the launcher's, a number must equal it",
    )
    strategy: Literal["auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true"] = Field(
        "auto", description="Lightning strategy (auto: ddp when devices > 1 or num_nodes > 1)"
    )
    precision: Literal["32", "64", "bf16-mixed", "16-mixed"] = Field("32", description="numeric precision")
    deterministic: bool = Field(False, description="use deterministic algorithms (slower)")
    # ---------------------------------------------------------------- output
    progress: bool = Field(True, description="show a progress bar (only on a terminal and without quiet)")
    logger: list[LoggerName] = Field(
        default_factory=lambda: list[LoggerName](["csv"]),
        description="where epoch metrics go: csv (metrics.csv, always), tensorboard (logs/, needs "
        "crystal-train[tensorboard]), wandb (Weights & Biases, needs crystal-train[wandb]); a name or a list",
    )
    wandb_project: str = Field("crystal", min_length=1, description="wandb: the Weights & Biases project")

    @field_validator("logger", mode="before")
    @classmethod
    def _logger_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list | tuple):
            return ["csv", *dict.fromkeys(v for v in value if v != "csv")]
        return value

    @field_validator("devices")
    @classmethod
    def _devices(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("devices must be >= 1 (or 'auto')")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> FitConfig:
        if self.momentum is not None and self.optimizer != "sgd":
            raise ValueError(f"momentum is only used by the sgd optimiser, not {self.optimizer!r}")
        if self.amsgrad and self.optimizer == "sgd":
            raise ValueError("amsgrad is a variant of adam/adamw, not of sgd")
        if self.milestones is not None and self.scheduler != "multistep":
            raise ValueError("milestones are only used by the multistep scheduler")
        if self.scheduler == "multistep" and not self.milestones:
            raise ValueError("the multistep scheduler needs milestones")
        if self.gamma is not None and self.scheduler != "multistep":
            raise ValueError("gamma is only used by the multistep scheduler (plateau: plateau_factor)")
        if self.warmup_epochs and self.scheduler == "onecycle":
            raise ValueError("warmup_epochs does not apply to onecycle (it warms up by itself)")
        if self.wandb_project != "crystal" and "wandb" not in self.logger:
            raise ValueError("wandb_project is only used with logger 'wandb'")
        return self

    @property
    def resolved_strategy(self) -> str:
        if self.strategy == "auto" and (self.devices == "auto" or int(self.devices) > 1 or self.num_nodes > 1):
            return "ddp"
        return self.strategy


def fit_defaults(data: Any, defaults: Mapping[str, Any]) -> Any:
    """``data`` (a ``[fit]`` table) with a trainer's ``defaults`` under the fields it does not set.

    A default that only applies to another scheduler or optimiser is dropped when the user
    chooses one (a potential's ``plateau_patience`` does not block ``scheduler = "cosine"``)."""
    if isinstance(data, FitConfig):
        return data
    given = dict(data or {})
    merged = {**defaults, **given}
    if merged.get("scheduler") != "plateau":
        for key in ("plateau_factor", "plateau_patience"):
            if key not in given:
                merged.pop(key, None)
    if merged.get("optimizer") == "sgd" and "amsgrad" not in given:
        merged.pop("amsgrad", None)
    return merged


def warn_fine_tune_overrides(fit: Any, fine_tune: Mapping[str, Any], scratch: Mapping[str, Any], init: str) -> None:
    """Warn (``UserWarning``) for every field of ``fine_tune`` (a fine-tuning run's ``[fit]``
    defaults) that the run's ``fit`` table sets to another value: a from-scratch learning rate
    can wipe out what the pretrained ``init`` weights learned."""
    import warnings

    if isinstance(fit, FitConfig):
        given = {k: getattr(fit, k) for k in fit.model_fields_set}
    elif isinstance(fit, Mapping):
        given = dict(fit)
    else:
        return
    for key, value in fine_tune.items():
        if key in given and given[key] != value:
            warnings.warn(
                f"fine-tuning from {init!r} with fit.{key} = {given[key]!r}: the fine-tuning default is {value!r} "
                f"(from scratch: {scratch.get(key)!r}); a from-scratch {key} can erase what the pretrained model "
                "learned (remove the setting to use the fine-tuning default)",
                UserWarning,
                stacklevel=2,
            )


def merge_legacy_sections(data: dict[str, Any]) -> dict[str, Any]:
    """Move the fields of the pre-``[fit]`` encoder tables ``[optim]`` and ``[trainer]`` into ``[fit]``.

    A field given twice (``optim.lr`` and ``fit.lr``) is an error naming both."""
    if not any(isinstance(data.get(s), dict) for s in LEGACY_SECTIONS):
        return data
    data = dict(data)
    fit = dict(data.get("fit") or {})
    optim: dict[str, Any] = data["optim"] if isinstance(data.get("optim"), dict) else {}
    scheduler = fit.get("scheduler", optim.get("scheduler"))
    for section in LEGACY_SECTIONS:
        table = data.pop(section, None)
        if table is None:
            continue
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table (its fields now live in [fit])")
        for key, value in table.items():
            target = "plateau_factor" if key == "gamma" and scheduler == "plateau" else key
            if target in fit:
                raise ConfigError(f"{section}.{key} and fit.{target} are the same option; give it once, in [fit]")
            fit[target] = value
    data["fit"] = fit
    return data


def check_loggers(config: FitConfig, output: object | None) -> None:
    """Fail before training when a requested logger's package is missing or there is no run directory."""
    wanted = [name for name in config.logger if name != "csv"]
    if wanted and output is None:
        raise ConfigError(f"logger {wanted[0]!r} needs a run directory (output / run_dir)")
    if "tensorboard" in wanted and not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
        raise ConfigError(
            "logger 'tensorboard' needs TensorBoard, which is not installed: pip install 'crystal-train[tensorboard]'"
        )
    if "wandb" in wanted and importlib.util.find_spec("wandb") is None:
        raise ConfigError(
            "logger 'wandb' needs Weights & Biases, which is not installed: pip install 'crystal-train[wandb]'"
        )
