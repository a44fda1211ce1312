"""The training engine: one Lightning ``LightningModule`` and one ``Trainer`` setup for every model.

The model contract is one method::

    def training_loss(self, batch) -> dict[str, torch.Tensor]:
        # {"loss": scalar to minimise, "<metric>": scalar, ...}

Encoders (through :class:`crystal_train.encoders.EncoderLoss`), potentials
(:class:`~crystal.trainable_potential.PotentialNet`), DiffCSP, CrystaLLM and the XRD
classifier all implement it and train with :func:`fit_model` and the options of
:class:`~crystal_train.options.FitConfig`. Every key is logged as ``train_<key>`` /
``val_<key>`` (epoch means weighted by batch size). Training steps run in train mode;
validation runs in eval mode under ``torch.no_grad()``, unless the model sets
``needs_grad_in_eval = True`` (potentials that take forces by autograd inside their loss).

Data (``train``/``val``) is a :class:`~crystal.batch.CrystalBatch`, a tensor or tuple of
tensors indexed along dim 0, or any object with ``__len__``, ``select(index)`` and
``to(device)``. It is moved to the device **once**; the loaders yield index tensors only
(sharded by Lightning's ``DistributedSampler`` under DDP) and each step selects its items on
the device.

Run directory (``run_dir``)::

    metrics.csv                   one row per epoch: losses, metrics, lr, epoch time (always)
    best.pt                       state_dict of the best epoch (EMA weights when ema_decay is set)
    checkpoints/last.ckpt         Lightning checkpoint of the last epoch (resume=True continues it)
    checkpoints/best.ckpt         Lightning checkpoint of the best epoch by `monitor`
    logs/                         TensorBoard events / W&B files when `logger` asks for them
"""

from __future__ import annotations

import copy
import datetime
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from crystal.errors import ConfigError
from crystal_train.cluster import resolve_placement
from crystal_train.options import FitConfig, check_loggers

__all__ = ["FitResult", "TensorData", "fit_model", "item_losses", "recompute_batchnorm"]

log = logging.getLogger("crystal_train")


@dataclass
class FitResult:
    """The trained module (best weights, EMA if enabled, eval mode) and its history.

    ``history`` holds the epochs run by this call (a resumed run: only the new ones);
    ``epochs`` is the epoch count reached including resumed ones."""

    net: torch.nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = math.nan
    seconds: float = 0.0
    epochs: int = 0
    monitor: str = "val_loss"
    global_zero: bool = True
    world_size: int = 1
    num_nodes: int = 1


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


def as_data(data: Any, name: str) -> _Selectable:
    """``data`` as something with ``__len__``, ``select`` and ``to`` (tensors become :class:`TensorData`)."""
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
    except ImportError as exc:  # pragma: no cover - lightning is a dependency of crystal-train
        raise ConfigError(f"training needs PyTorch Lightning (pip install lightning): {exc}") from None
    return pl


class _Collate:
    """Collate data-set indices into ``(split, LongTensor)`` (picklable for ddp_spawn)."""

    def __init__(self, split: str) -> None:
        self.split = split

    def __call__(self, items: list[int]) -> tuple[str, torch.Tensor]:
        return self.split, torch.as_tensor(items, dtype=torch.long)


def _batch_size(batch: Any) -> int:
    if isinstance(batch, tuple | list):
        return int(batch[0].shape[0])
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    return len(batch)


def _has_batchnorm(net: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())


def recompute_batchnorm(
    net: torch.nn.Module, data: Any, batch_size: int, forward: Callable[[Any], Any] | None = None
) -> int:
    """Set every BatchNorm's running mean/variance to the exact mean and (unbiased) variance
    of its inputs over all of ``data`` with the current weights ("precise BN", Wu & Johnson
    2021), instead of a moving average over batches computed with older weights.

    ``forward(chunk)`` runs the model (default: ``net.training_loss`` when it exists, else
    ``net``); forward passes run in training mode without gradients and the module's mode is
    restored. Returns the number of BatchNorm layers.
    """
    layers = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    data = as_data(data, "batchnorm")
    if not layers or len(data) == 0:
        return len(layers)
    if forward is None:
        forward = getattr(net, "training_loss", None) or net
    was_training = net.training
    sums: dict[int, list[Any]] = {}

    def accumulate(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].detach()
        dims = [d for d in range(x.dim()) if d != 1]
        acc = sums.setdefault(id(module), [0, 0.0, 0.0])
        acc[0] += x.numel() // x.shape[1]
        acc[1] = acc[1] + x.double().sum(dims)
        acc[2] = acc[2] + x.double().pow(2).sum(dims)

    handles = [m.register_forward_pre_hook(accumulate) for m in layers]
    net.train()
    try:
        with torch.no_grad():
            for start in range(0, len(data), batch_size):
                forward(data.select(torch.arange(start, min(start + batch_size, len(data)))))
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    for m in layers:
        if id(m) not in sums or m.running_mean is None or m.running_var is None:
            continue
        n, s1, s2 = sums[id(m)]
        mean = s1 / n
        var = (s2 / n - mean * mean).clamp(min=0) * (n / max(n - 1, 1))  # unbiased, as BatchNorm stores
        m.running_mean.copy_(mean.to(m.running_mean.dtype))
        m.running_var.copy_(var.to(m.running_var.dtype))
    return len(layers)


# --------------------------------------------------------------------------- optimiser and schedule
def _lr_lambda(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to 0 at ``total_steps``."""

    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(max(t, 0.0), 1.0)))

    return f


def make_optimizer(params: list[torch.nn.Parameter], cfg: FitConfig) -> torch.optim.Optimizer:
    """The optimiser of ``cfg`` over ``params``."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum or 0.9)
    kw: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay, "amsgrad": cfg.amsgrad}
    return torch.optim.AdamW(params, **kw) if cfg.optimizer == "adamw" else torch.optim.Adam(params, **kw)


#: fewest optimiser steps a one-cycle schedule runs with; below, :func:`make_schedule` uses cosine
ONECYCLE_MIN_STEPS = 50


def make_schedule(opt: torch.optim.Optimizer, cfg: FitConfig, total_steps: int, monitor: str) -> Any:
    """Lightning's ``lr_scheduler`` entry for ``cfg.scheduler`` (None: constant lr).

    One-cycle needs steps: it starts at ``lr/25``, spends 30 % of the run warming up and
    ends at ``lr/25/10⁴`` (4e-9 for lr = 1e-3). With fewer than :data:`ONECYCLE_MIN_STEPS`
    optimiser steps in the whole run (e.g. one batch per epoch and a few epochs) most steps
    would run far below ``lr``, so the cosine schedule is used instead (it starts at ``lr``
    and decays to 0 at the last step), with a warning naming the numbers.
    """
    sched = torch.optim.lr_scheduler
    scheduler = cfg.scheduler
    if scheduler == "onecycle" and total_steps < ONECYCLE_MIN_STEPS:
        steps_per_epoch = max(total_steps // cfg.max_epochs, 1)
        message = (
            f"fit.scheduler = 'onecycle' needs at least {ONECYCLE_MIN_STEPS} optimiser steps, but this run has "
            f"{total_steps} ({cfg.max_epochs} epoch(s) x ~{steps_per_epoch} step(s) of batch_size {cfg.batch_size}); "
            f"one-cycle would start at lr/25 and end at lr/25e4 ({cfg.lr / 25 / 1e4:.2g}), so the cosine schedule "
            "(from lr to 0) is used instead; train longer, use a smaller fit.batch_size, or set fit.scheduler "
            "explicitly ('cosine', 'none', 'plateau') to silence this"
        )
        warnings.warn(message, UserWarning, stacklevel=2)
        scheduler = "cosine"
    if scheduler == "onecycle":
        return {"scheduler": sched.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps), "interval": "step"}
    if scheduler == "cosine":
        steps_per_epoch = max(total_steps // cfg.max_epochs, 1)
        lam = sched.LambdaLR(opt, _lr_lambda(cfg.warmup_epochs * steps_per_epoch, total_steps))
        return {"scheduler": lam, "interval": "step"}
    if cfg.scheduler == "plateau":
        plateau = sched.ReduceLROnPlateau(
            opt, mode=cfg.monitor_mode, factor=cfg.plateau_factor, patience=cfg.plateau_patience
        )
        return {"scheduler": plateau, "monitor": monitor, "interval": "epoch", "strict": False}
    if cfg.scheduler == "multistep":
        multi = sched.MultiStepLR(opt, milestones=list(cfg.milestones or []), gamma=cfg.gamma or 0.1)
        return {"scheduler": multi, "interval": "epoch"}
    return None


# --------------------------------------------------------------------------- the LightningModule
_TASK_CLASS: type | None = None


def _task_class() -> type:
    global _TASK_CLASS
    if _TASK_CLASS is None:
        _TASK_CLASS = _make_task_class()
    return _TASK_CLASS


def _make_task_class() -> type:
    pl = _lightning()

    class LossTask(pl.LightningModule):  # type: ignore[misc, name-defined]
        """Minimises ``net.training_loss``: data on the device, EMA, warm-up, precise BN."""

        def __init__(self, net: torch.nn.Module, cfg: FitConfig, splits: dict[str, _Selectable], monitor: str):
            super().__init__()
            self.net = net
            self.cfg = cfg
            self.monitor = monitor
            self._splits = splits
            self._on_device: dict[tuple[str, str], Any] = {}
            object.__setattr__(self, "ema", None)  # not a submodule: Lightning must not train or move it
            self._ema_pending: dict[str, torch.Tensor] | None = None

        # data: indices in, items selected on the device
        def _data(self, split: str, device: torch.device) -> Any:
            key = (split, str(device))
            if key not in self._on_device:
                self._on_device[key] = self._splits[split].to(device)
            return self._on_device[key]

        def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
            split, index = batch
            return self._data(split, device).select(index.to(device))

        # steps
        def _log(self, out: Mapping[str, torch.Tensor], stage: str, size: int) -> torch.Tensor:
            if "loss" not in out:
                raise ConfigError(f"{type(self.net).__name__}.training_loss must return a dict with a 'loss' key")
            for key, value in out.items():
                v = value if key == "loss" and stage == "train" else value.detach()
                self.log(f"{stage}_{key}", v.float(), batch_size=size, on_step=False, on_epoch=True, sync_dist=True)
            return out["loss"]

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self._log(self.net.training_loss(batch), "train", _batch_size(batch))  # type: ignore[operator]

        def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            with torch.set_grad_enabled(bool(getattr(self.net, "needs_grad_in_eval", False))):
                out = self.net.training_loss(batch)  # type: ignore[operator]
            return self._log({k: v.detach() for k, v in out.items()}, "val", _batch_size(batch))

        # warm-up for the schedules that do not include it (cosine does; onecycle has its own)
        def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
            cfg = self.cfg
            if not cfg.warmup_epochs or cfg.scheduler == "cosine":
                return
            steps = cfg.warmup_epochs * max(int(self.trainer.num_training_batches), 1)
            step = int(self.trainer.global_step)
            if step <= steps:
                for group in self.trainer.optimizers[0].param_groups:
                    group["lr"] = cfg.lr * min((step + 1) / steps, 1.0)

        # EMA of the weights
        def on_fit_start(self) -> None:
            if self.cfg.ema_decay is not None and self.ema is None:
                ema = copy.deepcopy(self.net).eval()
                for p in ema.parameters():
                    p.requires_grad_(False)
                if self._ema_pending is not None:
                    ema.load_state_dict(self._ema_pending)
                object.__setattr__(self, "ema", ema)

        def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
            if self.ema is None:
                return
            d = float(self.cfg.ema_decay or 0.0)
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
            if self.trainer.sanity_checking:
                return
            self._swap()
            if self.cfg.batchnorm_stats == "recompute" and self.trainer.state.fn == "fit":
                recompute_batchnorm(self.net, self._data("train", self.device), self.cfg.batch_size)

        def on_validation_epoch_end(self) -> None:
            if not self.trainer.sanity_checking:
                self._swap()

        def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            if self.ema is not None:
                checkpoint["ema_state_dict"] = {k: v.detach().cpu() for k, v in self.ema.state_dict().items()}

        def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            self._ema_pending = checkpoint.get("ema_state_dict")

        # optimiser
        def configure_optimizers(self) -> Any:
            opt = make_optimizer([p for p in self.net.parameters() if p.requires_grad], self.cfg)
            total = max(int(self.trainer.estimated_stepping_batches), 1)
            schedule = make_schedule(opt, self.cfg, total, self.monitor)
            return opt if schedule is None else {"optimizer": opt, "lr_scheduler": schedule}

    return LossTask


# --------------------------------------------------------------------------- epochs: metrics, best, stopping
class _Tracker:
    """Epoch rows (metrics.csv and the loggers), best weights in memory, early stopping."""

    def __init__(self, cfg: FitConfig, monitor: str, out: Path | None, echo: bool, loggers: list[Any]) -> None:
        self.cfg, self.monitor, self.out, self.echo, self.loggers = cfg, monitor, out, echo, loggers
        self.sign = 1.0 if cfg.monitor_mode == "min" else -1.0
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

            def state_dict(self) -> dict[str, Any]:
                return {"best_score": tracker.best_score, "best_epoch": tracker.best_epoch, "best": tracker.best_state}

            def load_state_dict(self, state: dict[str, Any]) -> None:
                tracker.best_score, tracker.best_epoch = float(state["best_score"]), int(state["best_epoch"])
                tracker.best_state = state.get("best")

        return EpochEnd()

    def _validated(self, trainer: Any, epoch: int, metrics: Mapping[str, float]) -> bool:
        if self.monitor in metrics and not self.monitor.startswith("val_"):
            return True
        return epoch % self.cfg.check_val_every_n_epoch == 0 or trainer.should_stop

    def epoch_end(self, trainer: Any, module: Any) -> None:
        metrics = {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if v.numel() == 1}
        epoch = trainer.current_epoch + 1
        row: dict[str, float] = {"epoch": epoch, **metrics}
        row["lr"] = float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else math.nan
        now = time.perf_counter()
        row["epoch_time_s"] = round(now - self._t0, 3)
        self._t0 = now
        self.rows.append(row)
        if self._validated(trainer, epoch, metrics):
            score = metrics.get(self.monitor)
            if score is None:
                raise ConfigError(f"fit: monitor {self.monitor!r} is not logged (logged: {', '.join(metrics)})")
            if self.sign * score < self.sign * self.best_score or self.best_state is None:
                self.best_score, self.best_epoch = score, epoch
                source = module.ema if module.ema is not None else module.net
                self.best_state = {k: v.detach().clone() for k, v in source.state_dict().items()}
            elif self.cfg.patience is not None and epoch - self.best_epoch >= self.cfg.patience:
                trainer.should_stop = True
        if trainer.is_global_zero:
            self._report(row, trainer)

    def _report(self, row: dict[str, float], trainer: Any) -> None:
        from crystal_train.writers import write_metrics_csv

        if self.out is not None:
            write_metrics_csv(self.out / "metrics.csv", self.rows)
        for logger in self.loggers:
            logger.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
        if self.echo:
            shown = " ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch")
            print(f"epoch {int(row['epoch'])}/{trainer.max_epochs}: {shown}", file=sys.stderr, flush=True)


def make_loggers(cfg: FitConfig, out: Path | None, run_name: str | None = None) -> list[Any]:
    """Lightning loggers for ``cfg.logger`` besides csv (metrics.csv is written by the engine)."""
    check_loggers(cfg, out)
    if out is None:
        return []
    from lightning.pytorch import loggers

    made: list[Any] = []
    if "tensorboard" in cfg.logger:
        made.append(loggers.TensorBoardLogger(save_dir=str(out), name="logs", version="tensorboard"))
    if "wandb" in cfg.logger:
        made.append(
            loggers.WandbLogger(project=cfg.wandb_project, name=run_name or out.name, save_dir=str(out / "logs"))
        )
    return made


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")  # Lightning internals
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")


def _make_trainer(cfg: FitConfig, out: Path | None, callbacks: list[Any], has_val: bool, quiet: bool) -> Any:
    pl = _lightning()
    placement = resolve_placement(cfg)  # torchrun / srun: devices and num_nodes from the launcher
    return pl.Trainer(
        accelerator=cfg.accelerator,
        devices=placement.devices,
        num_nodes=placement.num_nodes,
        strategy=placement.strategy,
        precision=cfg.precision,
        max_epochs=cfg.max_epochs,
        max_time=None if cfg.max_minutes is None else datetime.timedelta(minutes=cfg.max_minutes),
        deterministic=cfg.deterministic,
        callbacks=callbacks,
        logger=False,  # the tracker sends each epoch row to the loggers (make_loggers)
        enable_checkpointing=out is not None,
        enable_progress_bar=bool(cfg.progress and not quiet and sys.stderr.isatty()),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=cfg.check_val_every_n_epoch,
        limit_val_batches=1.0 if has_val else 0,
        gradient_clip_val=cfg.gradient_clip,
        inference_mode=False,  # validation may need autograd (forces)
        default_root_dir=str(out) if out is not None else None,
        use_distributed_sampler=True,
    )


def _checkpoint_callbacks(out: Path | None, monitor: str, mode: str) -> list[Any]:
    if out is None:
        return []
    pl = _lightning()
    ckpt = out / "checkpoints"
    best = pl.callbacks.ModelCheckpoint(
        dirpath=ckpt, filename="best", monitor=monitor, mode=mode, enable_version_counter=False
    )
    # every epoch (Lightning's save_last only saves when the monitored value improves)
    last = pl.callbacks.ModelCheckpoint(
        dirpath=ckpt, filename="last", monitor=None, save_top_k=1, enable_version_counter=False
    )
    return [best, last]


def _loaders(splits: Mapping[str, _Selectable], batch_size: int) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    return {
        split: DataLoader(
            list(range(len(data))),  # type: ignore[arg-type]
            batch_size=batch_size,
            shuffle=split == "train",
            collate_fn=_Collate(split),
        )
        for split, data in splits.items()
    }


def _splits(net: torch.nn.Module, train: Any, val: Any, cfg: FitConfig) -> dict[str, _Selectable]:
    if not callable(getattr(net, "training_loss", None)):
        raise ConfigError(f"fit_model: {type(net).__name__} has no training_loss(batch) method")
    splits: dict[str, _Selectable] = {"train": as_data(train, "train")}
    if len(splits["train"]) == 0:
        raise ConfigError("fit_model: no training items")
    if val is not None and len(val):
        splits["val"] = as_data(val, "val")
    if cfg.batchnorm_stats == "recompute" and not _has_batchnorm(net):
        raise ConfigError(f"batchnorm_stats = 'recompute': {type(net).__name__} has no BatchNorm layers")
    return splits


def fit_model(
    net: torch.nn.Module,
    train: Any,
    val: Any = None,
    config: FitConfig | Mapping[str, Any] | None = None,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    quiet: bool = True,
    run_name: str | None = None,
) -> FitResult:
    """Minimise ``net.training_loss`` over ``train`` (module docstring) with the options ``config``.

    Returns the module with the weights of the best epoch by ``config.monitor`` loaded (the
    EMA weights when ``ema_decay`` is set), in eval mode. ``resume=True`` continues the run
    in ``run_dir`` from ``checkpoints/last.ckpt`` (optimiser, schedule, EMA, best epoch).
    """
    pl = _lightning()
    cfg = config if isinstance(config, FitConfig) else FitConfig.model_validate(dict(config or {}))
    splits = _splits(net, train, val, cfg)
    out = Path(run_dir) if run_dir is not None else None
    loggers = make_loggers(cfg, out, run_name)
    ckpt_path = None
    if resume:
        last = out / "checkpoints" / "last.ckpt" if out is not None else None
        if last is None or not last.is_file():
            raise ConfigError(f"cannot resume: {last} does not exist")
        ckpt_path = str(last)
    _quiet_lightning()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    monitor = cfg.monitor if "val" in splits else cfg.monitor.replace("val_", "train_", 1)
    task = _task_class()(net, cfg, splits, monitor)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    tracker = _Tracker(cfg, monitor, out, not quiet, loggers)
    callbacks = [tracker.callback(), *_checkpoint_callbacks(out, monitor, cfg.monitor_mode)]
    trainer = _make_trainer(cfg, out, callbacks, "val" in splits, quiet)
    loaders = _loaders(splits, cfg.batch_size)
    start = time.perf_counter()
    net.train()
    trainer.fit(task, train_dataloaders=loaders["train"], val_dataloaders=loaders.get("val"), ckpt_path=ckpt_path)
    seconds = time.perf_counter() - start
    for logger in loggers:
        logger.finalize("success")
    if tracker.best_state is not None:
        net.load_state_dict(tracker.best_state)
        if out is not None and trainer.is_global_zero:
            from crystal.weights import save_checkpoint

            save_checkpoint({k: v.cpu() for k, v in tracker.best_state.items()}, out / "best.pt")
    net.eval()
    return FitResult(
        net,
        tracker.rows,
        tracker.best_epoch,
        tracker.best_score,
        seconds,
        epochs=int(trainer.current_epoch),
        monitor=monitor,
        global_zero=bool(trainer.is_global_zero),
        world_size=int(trainer.world_size),
        num_nodes=int(trainer.num_nodes),
    )


def item_losses(net: torch.nn.Module, data: Any, limit: int | None = 1000) -> list[dict[str, float]]:
    """``net.training_loss`` of each of the first ``limit`` items of ``data`` alone, in eval mode:
    the per-item rows of ``predictions.csv`` for models without a per-item prediction (generators)."""
    items = as_data(data, "items")
    n = len(items) if limit is None else min(len(items), limit)
    rows: list[dict[str, float]] = []
    was_training = net.training
    net.eval()
    try:
        with torch.set_grad_enabled(bool(getattr(net, "needs_grad_in_eval", False))):
            for i in range(n):
                out = net.training_loss(items.select(torch.tensor([i])))  # type: ignore[operator]
                rows.append({k: float(v.detach()) for k, v in out.items()})
    finally:
        net.train(was_training)
    return rows
