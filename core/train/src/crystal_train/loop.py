"""The shared training loop for any model that defines its own loss (potentials, generators,
characterizers): :func:`fit_model`.

The model contract is one method::

    def training_loss(self, batch) -> dict[str, torch.Tensor]:
        # {"loss": scalar to minimise, "<metric>": scalar, ...}

Every key is logged as ``train_<key>`` / ``val_<key>`` (epoch means weighted by batch size).
Training steps run in train mode; validation runs in eval mode under ``torch.no_grad()``,
unless the model sets ``needs_grad_in_eval = True`` (potentials that take forces by
autograd inside their loss).

Data (``train``/``val``) is a :class:`~crystal.batch.CrystalBatch`, a tensor or tuple of
tensors indexed along dim 0, or any object with ``__len__``, ``select(index)`` and
``to(device)``. It is moved to the device **once**; the loaders yield index tensors only
(sharded by Lightning's ``DistributedSampler`` under DDP) and each step selects its items on
the device — the same design as the encoder engine (:mod:`crystal_train.engine`).

Options of :class:`FitConfig`: AdamW/Adam, cosine/one-cycle/plateau schedules with linear
warm-up, gradient clipping, an exponential moving average of the weights (validation and the
returned model use the EMA weights, as MACE and NequIP do), early stopping on any logged
validation metric, DDP through Lightning (``devices > 1``).
"""

from __future__ import annotations

import copy
import csv
import datetime
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from pydantic import Field

from crystal.config import StrictModel
from crystal.errors import ConfigError
from crystal.io import atomic_write

__all__ = ["FitConfig", "FitResult", "TensorData", "fit_model"]

log = logging.getLogger("crystal_train")


class FitConfig(StrictModel):
    """Optimisation settings of :func:`fit_model`."""

    max_epochs: int = Field(100, ge=1, description="maximum number of epochs")
    batch_size: int = Field(32, ge=1, description="items (crystals, sequences, patterns) per step and process")
    optimizer: Literal["adam", "adamw"] = Field("adamw", description="torch.optim optimiser")
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.0, ge=0, description="weight decay (decoupled for adamw)")
    amsgrad: bool = Field(False, description="use the AMSGrad variant of Adam/AdamW (MACE's default)")
    scheduler: Literal["none", "cosine", "onecycle", "plateau"] = Field(
        "cosine", description="learning-rate schedule: cosine decay per step, one-cycle, or reduce-on-plateau"
    )
    warmup_epochs: int = Field(0, ge=0, description="linear warm-up epochs before the schedule (cosine/none)")
    plateau_factor: float = Field(0.8, gt=0, lt=1, description="plateau: lr factor on a plateau")
    plateau_patience: int = Field(10, ge=1, description="plateau: epochs without improvement before the lr drops")
    gradient_clip: float | None = Field(None, gt=0, description="clip the global gradient norm to this value")
    ema_decay: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="exponential moving average of the weights with this decay per step; "
        "validation and the returned model use the averaged weights",
    )
    patience: int | None = Field(None, ge=1, description="early stopping: epochs without improvement of `monitor`")
    max_minutes: float | None = Field(
        None, gt=0, description="stop after this much training wall time, minutes (the best epoch so far is kept)"
    )
    monitor: str = Field("val_loss", min_length=1, description="metric selecting the best epoch (minimised)")
    seed: int = Field(0, ge=0, description="seed of shuffling, initialisation and dropout")
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = Field("auto", description="Lightning accelerator")
    devices: int = Field(1, ge=1, description="devices (processes); > 1 trains with DDP")
    precision: Literal["32", "64", "bf16-mixed", "16-mixed"] = Field("32", description="numeric precision")


@dataclass
class FitResult:
    """The trained module (best weights, EMA if enabled, eval mode) and its history."""

    net: torch.nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = math.nan
    seconds: float = 0.0


class _Selectable(Protocol):
    def __len__(self) -> int: ...
    def select(self, index: torch.Tensor) -> Any: ...
    def to(self, device: torch.device) -> Any: ...


class TensorData:
    """A tensor or tuple of tensors as a data set indexed along dim 0."""

    def __init__(self, *tensors: torch.Tensor) -> None:
        if not tensors:
            raise ConfigError("TensorData needs at least one tensor")
        n = int(tensors[0].shape[0])
        if any(int(t.shape[0]) != n for t in tensors):
            raise ConfigError(f"TensorData: tensors disagree on dim 0: {[tuple(t.shape) for t in tensors]}")
        self.tensors = tensors

    def __len__(self) -> int:
        return int(self.tensors[0].shape[0])

    def select(self, index: torch.Tensor) -> Any:
        out = tuple(t[index] for t in self.tensors)
        return out[0] if len(out) == 1 else out

    def to(self, device: torch.device | str) -> TensorData:
        return TensorData(*(t.to(device) for t in self.tensors))


def _as_data(data: Any, name: str) -> _Selectable:
    if isinstance(data, torch.Tensor):
        return TensorData(data)
    if isinstance(data, tuple) and data and all(isinstance(t, torch.Tensor) for t in data):
        return TensorData(*data)
    for attr in ("__len__", "select", "to"):
        if not hasattr(data, attr):
            raise ConfigError(f"fit_model: {name} data of type {type(data).__name__} has no {attr!r}")
    return data  # type: ignore[no-any-return]


def _lightning() -> Any:
    try:
        import lightning.pytorch as pl
    except ImportError as exc:  # pragma: no cover - lightning is a core dependency
        raise ConfigError(f"training needs PyTorch Lightning (pip install lightning): {exc}") from None
    return pl


class _Collate:
    """Collate data-set indices into ``(split, LongTensor)`` (picklable for ddp_spawn)."""

    def __init__(self, split: str) -> None:
        self.split = split

    def __call__(self, items: list[int]) -> tuple[str, torch.Tensor]:
        return self.split, torch.as_tensor(items, dtype=torch.long)


def _lr_lambda(warmup_steps: int, total_steps: int, cosine: bool) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if not cosine:
            return 1.0
        t = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(max(t, 0.0), 1.0)))

    return f


def _make_task(net: torch.nn.Module, cfg: FitConfig, splits: dict[str, _Selectable]) -> Any:
    pl = _lightning()

    class _LossTask(pl.LightningModule):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self._splits = splits
            self._on_device: dict[tuple[str, str], Any] = {}
            object.__setattr__(self, "ema", None)  # the EMA copy (see on_fit_start)
            self._swapped: list[torch.Tensor] | None = None

        # ------------------------------------------------------------- data
        def _data(self, split: str, device: torch.device) -> Any:
            key = (split, str(device))
            if key not in self._on_device:
                self._on_device[key] = self._splits[split].to(device)
            return self._on_device[key]

        def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
            split, index = batch
            return self._data(split, device).select(index.to(device))

        # ------------------------------------------------------------- steps
        def _log(self, out: dict[str, torch.Tensor], stage: str, size: int) -> torch.Tensor:
            if "loss" not in out:
                raise ConfigError(f"{type(self.net).__name__}.training_loss must return a dict with a 'loss' key")
            for key, value in out.items():
                v = value.detach() if key != "loss" else value
                self.log(f"{stage}_{key}", v.float(), batch_size=size, on_step=False, on_epoch=True, sync_dist=True)
            return out["loss"]

        @staticmethod
        def _size(batch: Any) -> int:
            if isinstance(batch, tuple):
                return int(batch[0].shape[0])
            return len(batch)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self._log(self.net.training_loss(batch), "train", self._size(batch))  # type: ignore[operator]

        def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            with torch.set_grad_enabled(bool(getattr(self.net, "needs_grad_in_eval", False))):
                out = self.net.training_loss(batch)  # type: ignore[operator]
            return self._log({k: v.detach() for k, v in out.items()}, "val", self._size(batch))

        # ------------------------------------------------------------- EMA
        def on_fit_start(self) -> None:
            if cfg.ema_decay is not None and self.ema is None:
                ema = copy.deepcopy(self.net).eval()
                for p in ema.parameters():
                    p.requires_grad_(False)
                # not a registered submodule: Lightning must not train, move or checkpoint it
                object.__setattr__(self, "ema", ema)

        def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
            if self.ema is None:
                return
            d = float(cfg.ema_decay or 0.0)
            with torch.no_grad():
                for e, p in zip(self.ema.parameters(), self.net.parameters(), strict=True):
                    e.lerp_(p.detach(), 1.0 - d)
                for e, b in zip(self.ema.buffers(), self.net.buffers(), strict=True):
                    e.copy_(b)

        def _swap(self) -> None:
            """Exchange the live weights with the EMA weights (an involution)."""
            if self.ema is None:
                return
            with torch.no_grad():
                for e, p in zip(self.ema.parameters(), self.net.parameters(), strict=True):
                    tmp = p.detach().clone()
                    p.copy_(e)
                    e.copy_(tmp)

        def on_validation_epoch_start(self) -> None:
            self._swap()

        def on_validation_epoch_end(self) -> None:
            self._swap()

        # ------------------------------------------------------------- optimiser
        def configure_optimizers(self) -> Any:
            params = [p for p in self.net.parameters() if p.requires_grad]
            kw: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay, "amsgrad": cfg.amsgrad}
            opt = torch.optim.AdamW(params, **kw) if cfg.optimizer == "adamw" else torch.optim.Adam(params, **kw)
            total = max(int(self.trainer.estimated_stepping_batches), 1)
            per_epoch = max(total // max(cfg.max_epochs, 1), 1)
            warm = cfg.warmup_epochs * per_epoch
            if cfg.scheduler == "onecycle":
                sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total)
                return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
            if cfg.scheduler == "plateau":
                sched_p = torch.optim.lr_scheduler.ReduceLROnPlateau(
                    opt, factor=cfg.plateau_factor, patience=cfg.plateau_patience
                )
                return {"optimizer": opt, "lr_scheduler": {"scheduler": sched_p, "monitor": monitor}}
            if cfg.scheduler == "none" and not warm:
                return opt
            lam = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(warm, total, cfg.scheduler == "cosine"))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": lam, "interval": "step"}}

    monitor = cfg.monitor if "val" in splits else cfg.monitor.replace("val_", "train_", 1)
    return _LossTask(), monitor


class _Tracker:
    """Lightning callback: epoch rows (metrics.csv), best weights in memory, early stopping."""

    def __init__(self, monitor: str, path: Path | None, echo: bool, patience: int | None) -> None:
        self.monitor, self.path, self.echo, self.patience = monitor, path, echo, patience
        self.rows: list[dict[str, float]] = []
        self.best_score = math.inf
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self._t0 = time.perf_counter()

    def callback(self) -> Any:
        pl = _lightning()
        tracker = self

        class EpochEnd(pl.Callback):  # type: ignore[misc, name-defined]
            def on_train_start(self, trainer: Any, module: Any) -> None:
                tracker._t0 = time.perf_counter()

            def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
                tracker.epoch_end(trainer, module)

        return EpochEnd()

    def epoch_end(self, trainer: Any, module: Any) -> None:
        metrics = {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if v.numel() == 1}
        row: dict[str, float] = {"epoch": trainer.current_epoch + 1, **metrics}
        row["lr"] = float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else math.nan
        now = time.perf_counter()
        row["seconds"] = round(now - self._t0, 3)
        self._t0 = now
        self.rows.append(row)
        score = metrics.get(self.monitor)
        if score is None:
            raise ConfigError(f"fit_model: monitor {self.monitor!r} is not logged (logged: {', '.join(metrics)})")
        if score < self.best_score:
            self.best_score, self.best_epoch = score, int(row["epoch"])
            source = module.ema if module.ema is not None else module.net
            self.best_state = {k: v.detach().clone() for k, v in source.state_dict().items()}
        elif self.patience is not None and row["epoch"] - self.best_epoch >= self.patience:
            trainer.should_stop = True
        if trainer.is_global_zero and self.path is not None:
            keys = list(dict.fromkeys(k for r in self.rows for k in r))
            with atomic_write(self.path, newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=keys)
                w.writeheader()
                w.writerows(self.rows)
        if trainer.is_global_zero and self.echo:
            shown = " ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch")
            print(f"epoch {int(row['epoch'])}/{trainer.max_epochs}: {shown}", file=sys.stderr, flush=True)


def fit_model(
    net: torch.nn.Module,
    train: Any,
    val: Any = None,
    config: FitConfig | dict[str, Any] | None = None,
    *,
    run_dir: str | Path | None = None,
    quiet: bool = True,
) -> FitResult:
    """Minimise ``net.training_loss`` over ``train``; see the module docstring.

    Returns the module with the weights of the best epoch by ``config.monitor`` loaded (the
    EMA weights when ``ema_decay`` is set), in eval mode. ``run_dir`` receives
    ``metrics.csv`` (one row per epoch, rewritten atomically) and ``best.pt`` (the best
    ``state_dict``, loadable with ``weights_only=True``).
    """
    pl = _lightning()
    cfg = config if isinstance(config, FitConfig) else FitConfig.model_validate(dict(config or {}))
    if not callable(getattr(net, "training_loss", None)):
        raise ConfigError(f"fit_model: {type(net).__name__} has no training_loss(batch) method")
    splits: dict[str, _Selectable] = {"train": _as_data(train, "train")}
    if len(splits["train"]) == 0:
        raise ConfigError("fit_model: no training items")
    if val is not None and len(val):
        splits["val"] = _as_data(val, "val")
    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    task, monitor = _make_task(net, cfg, splits)
    out = Path(run_dir) if run_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    tracker = _Tracker(monitor, out / "metrics.csv" if out is not None else None, not quiet, cfg.patience)
    trainer = pl.Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        strategy="ddp" if cfg.devices > 1 else "auto",
        precision=cfg.precision,
        max_epochs=cfg.max_epochs,
        max_time=None if cfg.max_minutes is None else datetime.timedelta(minutes=cfg.max_minutes),
        callbacks=[tracker.callback()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=bool(not quiet and sys.stderr.isatty()),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if "val" in splits else 0,
        gradient_clip_val=cfg.gradient_clip,
        inference_mode=False,  # validation may need autograd (forces)
        default_root_dir=str(out) if out is not None else None,
    )
    from torch.utils.data import DataLoader

    loaders: dict[str, DataLoader[Any]] = {
        split: DataLoader(
            list(range(len(data))),  # type: ignore[arg-type]
            batch_size=cfg.batch_size,
            shuffle=split == "train",
            collate_fn=_Collate(split),
        )
        for split, data in splits.items()
    }
    start = time.perf_counter()
    net.train()
    trainer.fit(task, train_dataloaders=loaders["train"], val_dataloaders=loaders.get("val"))
    seconds = time.perf_counter() - start
    if tracker.best_state is not None:
        net.load_state_dict(tracker.best_state)
        if out is not None and trainer.is_global_zero:
            with atomic_write(out / "best.pt", "wb") as fh:
                torch.save({k: v.cpu() for k, v in tracker.best_state.items()}, fh)
    net.eval()
    return FitResult(net, tracker.rows, tracker.best_epoch, tracker.best_score, seconds)
