"""Training with PyTorch Lightning: one ``LightningModule`` for every trainable encoder.

The whole data set is a :class:`CrystalBatch` that is moved to the device **once**; the
data loaders only yield index tensors (so Lightning's ``DistributedSampler`` shards them
under DDP) and :meth:`EncoderTask.transfer_batch_to_device` selects the crystals on the
device. Graphs are built inside the model, batched, on the device.

Run directory (``output``)::

    checkpoints/last.ckpt, best.ckpt   Lightning checkpoints (resume with resume=True)
    metrics.csv                        one row per epoch: losses, MAEs, lr, epoch time
    model.pt                           the best model, crystal checkpoint format
    summary.json, model-card.md        data, split, seed, metrics, sha256
    predictions.csv, parity.png        test (else validation) predictions vs truth
    failures.csv                       every row that was skipped, and why
    train-config.json                  the validated run config
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from crystal.batch import CrystalBatch
from crystal.errors import ConfigError, StructureError
from crystal.io import Failure, atomic_write
from crystal.targets import TargetSet
from crystal.trainable import TrainableEncoder
from crystal_train.config import OptimConfig, TrainConfig, TrainerConfig
from crystal_train.data import LabelledData, read_labelled, split_indices

__all__ = ["EncoderTask", "TrainResult", "evaluate", "fit", "recompute_batchnorm", "train"]

log = logging.getLogger("crystal_train")


def _lightning() -> Any:
    try:
        import lightning.pytorch as pl
    except ImportError as exc:  # pragma: no cover - lightning is a core dependency
        raise ConfigError(f"training needs PyTorch Lightning (pip install lightning): {exc}") from None
    return pl


def _truth(batch: CrystalBatch, encoder_targets: Any) -> dict[str, torch.Tensor]:
    out = {}
    for s in encoder_targets.specs:
        table = batch.atom_properties if s.level == "atom" else batch.crystal_properties
        if s.name not in table:
            raise StructureError(f"the batch has no values for target {s.name!r} ({s.level} level)")
        out[s.name] = table[s.name]
    return out


def _indices(n: int) -> Any:
    """The data set of a loader: crystal indices ``0..n-1`` (a ``Dataset`` for the type checker)."""
    return list(range(n))


class _Collate:
    """Collate data-set indices into ``(split, LongTensor)`` (picklable for ddp_spawn)."""

    def __init__(self, split: str) -> None:
        self.split = split

    def __call__(self, items: list[int]) -> tuple[str, torch.Tensor]:
        return self.split, torch.as_tensor(items, dtype=torch.long)


def _make_task_class() -> type:
    pl = _lightning()

    class _EncoderTask(pl.LightningModule):  # type: ignore[misc, name-defined]
        """Loss, metrics and optimisation of an :class:`~crystal.trainable.EncoderNet`."""

        def __init__(
            self,
            net: torch.nn.Module,
            optim: OptimConfig,
            splits: Mapping[str, CrystalBatch],
            batch_size: int = 64,
            recompute_batchnorm: bool = False,
        ) -> None:
            super().__init__()
            self.net = net
            self.optim = optim
            self._splits = dict(splits)
            self._on_device: dict[tuple[str, str], CrystalBatch] = {}
            self._batch_size = batch_size
            self._recompute_batchnorm = recompute_batchnorm

        def on_validation_epoch_start(self) -> None:
            if self._recompute_batchnorm and self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
                recompute_batchnorm(self.net, self._data("train", self.device), self._batch_size)

        def _data(self, split: str, device: torch.device) -> CrystalBatch:
            key = (split, str(device))
            if key not in self._on_device:
                self._on_device[key] = self._splits[split].to(device)
            return self._on_device[key]

        # data: indices in, crystals selected on the device
        def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> CrystalBatch:
            split, index = batch
            return self._data(split, device).select(index.to(device))

        def _step(self, batch: CrystalBatch, stage: str) -> torch.Tensor:
            targets: TargetSet = self.net.targets  # type: ignore[assignment]
            raw = self.net(batch)
            truth = _truth(batch, targets)
            loss, parts = targets.loss(raw, truth, batch.num_atoms)
            b = len(batch)
            self.log(f"{stage}_loss", loss, batch_size=b, on_step=False, on_epoch=True, sync_dist=True)
            if len(parts) > 1:
                for name, part in parts.items():
                    self.log(f"{stage}_loss_{name}", part, batch_size=b, on_step=False, on_epoch=True, sync_dist=True)
            if stage != "train":
                with torch.no_grad():
                    values = targets.denormalize({k: v.detach() for k, v in raw.items()}, batch.num_atoms)
                    for s in targets.specs:
                        n = batch.num_nodes if s.level == "atom" else b
                        v, t = values[s.name], truth[s.name]
                        if s.task == "regression":
                            err = (v.reshape(-1, s.dim).double() - t.reshape(-1, s.dim).double()).abs().mean()
                            self.log(f"{stage}_{s.name}_mae", err, batch_size=n, on_epoch=True, sync_dist=True)
                        else:
                            pred = (v > 0.5).long() if v.dim() == 1 else v.argmax(-1)
                            acc = (pred == t.reshape(-1)).double().mean()
                            self.log(f"{stage}_{s.name}_accuracy", acc, batch_size=n, on_epoch=True, sync_dist=True)
            result: torch.Tensor = loss
            return result

        def training_step(self, batch: CrystalBatch, batch_idx: int) -> torch.Tensor:
            return self._step(batch, "train")

        def validation_step(self, batch: CrystalBatch, batch_idx: int) -> torch.Tensor:
            return self._step(batch, "val")

        def configure_optimizers(self) -> Any:
            o = self.optim
            params = [p for p in self.net.parameters() if p.requires_grad]
            if o.optimizer == "adam":
                opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
            elif o.optimizer == "adamw":
                opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
            else:
                opt = torch.optim.SGD(params, lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum or 0.9)
            if o.scheduler == "none":
                return opt
            sched: Any
            if o.scheduler == "onecycle":
                total = int(self.trainer.estimated_stepping_batches)
                sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=o.lr, total_steps=max(total, 1))
                return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
            if o.scheduler == "cosine":
                sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(int(self.trainer.max_epochs or 1), 1))
                return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
            if o.scheduler == "multistep":
                sched = torch.optim.lr_scheduler.MultiStepLR(
                    opt, milestones=list(o.milestones or []), gamma=o.gamma or 0.1
                )
                return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, factor=o.gamma or 0.5, patience=o.plateau_patience or 10
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": self._monitor}}

        @property
        def _monitor(self) -> str:
            return "val_loss" if len(self._splits.get("val", CrystalBatch.empty())) else "train_loss"

    return _EncoderTask


_TASK_CLASS: type | None = None


def EncoderTask(
    net: torch.nn.Module,
    optim: OptimConfig,
    splits: Mapping[str, CrystalBatch],
    batch_size: int = 64,
    recompute_batchnorm: bool = False,
) -> Any:
    """The ``LightningModule`` training ``net`` (created lazily so that importing this
    module does not import Lightning)."""
    global _TASK_CLASS
    if _TASK_CLASS is None:
        _TASK_CLASS = _make_task_class()
    return _TASK_CLASS(net, optim, splits, batch_size, recompute_batchnorm)


def recompute_batchnorm(net: torch.nn.Module, data: CrystalBatch, batch_size: int) -> int:
    """Set every BatchNorm's running mean/variance to the exact mean and (unbiased) variance
    of its inputs over all of ``data`` with the current weights ("precise BN", Wu & Johnson
    2021), instead of a moving average over batches computed with older weights.

    Forward passes run in training mode (so each layer sees what it sees in training) without
    gradients; the module's mode is restored. Returns the number of BatchNorm layers.
    """
    layers = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not layers or len(data) == 0:
        return len(layers)
    was_training = net.training
    sums: dict[int, list[Any]] = {}

    def accumulate(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].detach()
        dims = [d for d in range(x.dim()) if d != 1]
        n = x.numel() // x.shape[1]
        acc = sums.setdefault(id(module), [0, 0.0, 0.0])
        acc[0] += n
        acc[1] = acc[1] + x.double().sum(dims)
        acc[2] = acc[2] + x.double().pow(2).sum(dims)

    handles = [m.register_forward_pre_hook(accumulate) for m in layers]
    net.train()
    try:
        with torch.no_grad():
            for chunk in data.split(batch_size):
                net(chunk)
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
    was_training = net.training
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    with torch.no_grad():
        for chunk in data.split(batch_size):
            net(chunk)
    for m, momentum in zip(layers, momenta, strict=True):
        m.momentum = momentum
    net.train(was_training)
    return len(layers)


def _epoch_callback(path: Path | None, echo: bool) -> Any:
    pl = _lightning()

    class EpochMetrics(pl.Callback):  # type: ignore[misc, name-defined]
        """One row per epoch in ``metrics.csv`` (rewritten atomically) and a log line."""

        def __init__(self) -> None:
            self.rows: list[dict[str, Any]] = []
            self._t0 = time.perf_counter()

        def on_train_start(self, trainer: Any, module: Any) -> None:
            self._t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            if not trainer.is_global_zero:
                return
            row: dict[str, Any] = {"epoch": trainer.current_epoch + 1}
            row.update({k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if v.numel() == 1})
            row["lr"] = float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else math.nan
            now = time.perf_counter()  # wall time since the previous epoch ended: training, validation, checkpoints
            row["epoch_time_s"] = round(now - self._t0, 3)
            self._t0 = now
            self.rows.append(row)
            if path is not None:
                keys = list(dict.fromkeys(k for r in self.rows for k in r))
                with atomic_write(path, newline="") as fh:
                    w = csv.DictWriter(fh, fieldnames=keys)
                    w.writeheader()
                    w.writerows(self.rows)
            if echo:
                shown = " ".join(f"{k} {v:.4g}" for k, v in row.items() if k not in ("epoch",))
                print(f"epoch {row['epoch']}/{trainer.max_epochs}: {shown}", file=sys.stderr, flush=True)

    return EpochMetrics()


@dataclass
class TrainResult:
    """What a run produced (on the global-zero process; elsewhere only ``encoder``)."""

    encoder: TrainableEncoder
    output: Path | None
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    checkpoint: Path | None = None
    sha256: str | None = None
    epochs: int = 0
    train_time_s: float = 0.0
    failures: list[Failure] = field(default_factory=list)


def _is_launcher() -> bool:
    return int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0


def fit(
    encoder: TrainableEncoder,
    train: CrystalBatch,
    val: CrystalBatch | None = None,
    *,
    optim: OptimConfig | Mapping[str, Any] | None = None,
    trainer: TrainerConfig | Mapping[str, Any] | None = None,
    output: str | os.PathLike[str] | None = None,
    resume: bool = False,
    fit_normalizer: bool = True,
    quiet: bool = False,
) -> tuple[TrainableEncoder, dict[str, Any]]:
    """Train ``encoder.net`` on labelled batches (targets in ``crystal_properties`` /
    ``atom_properties``) with Lightning; the best weights (lowest ``val_loss``, else
    ``train_loss``) are loaded back into ``encoder``. Returns ``(encoder, info)`` with
    ``info = {"epochs", "best_epoch", "train_time_s", "history", "best_score", "global_zero",
    "world_size"}``.
    """
    pl = _lightning()
    o = optim if isinstance(optim, OptimConfig) else OptimConfig.model_validate(dict(optim or {}))
    t = trainer if isinstance(trainer, TrainerConfig) else TrainerConfig.model_validate(dict(trainer or {}))
    if len(train) == 0:
        raise ConfigError("no training structures (all rows were skipped?)")
    val = val if val is not None and len(val) else None
    targets = encoder.target_set
    _truth(train, targets)
    if val is not None:
        _truth(val, targets)
    if fit_normalizer:
        targets.fit_normalizer(
            {s.name: _truth(train, targets)[s.name] for s in targets.specs if s.task == "regression"},
            train.num_atoms,
        )
    if not quiet:
        for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
            logging.getLogger(name).setLevel(logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")  # Lightning internals
    pl.seed_everything(t.seed, workers=True, verbose=False)
    out = Path(output) if output is not None else None
    ckpt_dir = out / "checkpoints" if out is not None else None
    monitor = "val_loss" if val is not None else "train_loss"
    callbacks: list[Any] = []
    checkpoint_cb = None
    if ckpt_dir is not None:
        checkpoint_cb = pl.callbacks.ModelCheckpoint(
            dirpath=ckpt_dir, filename="best", monitor=monitor, mode="min", enable_version_counter=False
        )
        # every epoch (Lightning's save_last only saves when the monitored value improves)
        last_cb = pl.callbacks.ModelCheckpoint(
            dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1, enable_version_counter=False
        )
        callbacks += [checkpoint_cb, last_cb]
    if t.patience is not None:
        callbacks.append(pl.callbacks.EarlyStopping(monitor=monitor, patience=t.patience, mode="min"))
    epochs_cb = _epoch_callback(out / "metrics.csv" if out is not None else None, echo=not quiet)
    callbacks.append(epochs_cb)
    tty = sys.stderr.isatty()
    splits = {"train": train.to(dtype=torch.float64)}
    if val is not None:
        splits["val"] = val.to(dtype=torch.float64)
    recompute = t.batchnorm_stats == "recompute"
    if recompute and not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in encoder.net.modules()):
        raise ConfigError(f"trainer.batchnorm_stats = 'recompute': encoder {encoder.name!r} has no BatchNorm layers")
    task = EncoderTask(encoder.net, o, splits, t.batch_size, recompute)
    devices: Any = t.devices
    strategy = t.strategy
    if strategy == "auto" and (devices == "auto" or int(devices) > 1 or t.num_nodes > 1):
        strategy = "ddp"
    pl_trainer = pl.Trainer(
        accelerator=t.accelerator,
        devices=devices,
        num_nodes=t.num_nodes,
        strategy=strategy,
        precision=t.precision,
        max_epochs=t.max_epochs,
        deterministic=t.deterministic,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=checkpoint_cb is not None,
        enable_progress_bar=bool(t.progress and tty and not quiet),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=t.check_val_every_n_epoch,
        limit_val_batches=1.0 if val is not None else 0,
        gradient_clip_val=o.gradient_clip,
        default_root_dir=str(out) if out is not None else None,
        use_distributed_sampler=True,
    )
    from torch.utils.data import DataLoader

    train_loader: DataLoader[Any] = DataLoader(
        _indices(len(train)), batch_size=t.batch_size, shuffle=True, collate_fn=_Collate("train")
    )
    val_loader: DataLoader[Any] | None = (
        DataLoader(_indices(len(val)), batch_size=t.batch_size, shuffle=False, collate_fn=_Collate("val"))
        if val is not None
        else None
    )
    ckpt_path = None
    if resume:
        last = ckpt_dir / "last.ckpt" if ckpt_dir is not None else None
        if last is None or not last.is_file():
            raise ConfigError(f"cannot resume: {last} does not exist")
        ckpt_path = str(last)
    start = time.perf_counter()
    encoder.net.train()
    pl_trainer.fit(task, train_dataloaders=train_loader, val_dataloaders=val_loader, ckpt_path=ckpt_path)
    elapsed = time.perf_counter() - start
    best_epoch = None
    best_score = None
    if checkpoint_cb is not None and checkpoint_cb.best_model_path and Path(checkpoint_cb.best_model_path).is_file():
        state = torch.load(checkpoint_cb.best_model_path, map_location="cpu", weights_only=True)
        encoder.net.load_state_dict(
            {k[len("net.") :]: v for k, v in state["state_dict"].items() if k.startswith("net.")}
        )
        best_epoch = int(state.get("epoch", -1)) + 1
        best_score = float(checkpoint_cb.best_model_score) if checkpoint_cb.best_model_score is not None else None
    encoder.net.to(encoder.device).eval()
    encoder.trained = True
    info = {
        "epochs": int(pl_trainer.current_epoch),
        "best_epoch": best_epoch,
        "best_score": best_score,
        "monitor": monitor,
        "train_time_s": elapsed,
        "history": list(epochs_cb.rows),
        "global_zero": bool(pl_trainer.is_global_zero),
        "world_size": int(pl_trainer.world_size),
    }
    return encoder, info


def evaluate(
    encoder: TrainableEncoder, data: CrystalBatch, batch_size: int = 256
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Batched predictions for ``data`` and the metrics against its labels (CPU tensors)."""
    targets = encoder.target_set
    parts: list[dict[str, torch.Tensor]] = []
    for chunk in data.split(batch_size):
        parts.append({k: v.detach().cpu() for k, v in encoder.predict(chunk).items()})
    values = {s.name: torch.cat([p[s.name] for p in parts]) if parts else torch.zeros(0) for s in targets.specs}
    truth = {k: v.cpu() for k, v in _truth(data, targets).items()}
    return values, targets.metrics(values, truth)


def _element_failures(encoder: TrainableEncoder, data: LabelledData, name: str) -> LabelledData:
    try:
        encoder.check_elements(data.batch)
        return data
    except StructureError:
        pass
    keep, failures = [], list(data.failures)
    for i in range(len(data.batch)):  # only on the failure path: find the offending rows
        one = data.batch.select([i])
        try:
            encoder.check_elements(one)
            keep.append(i)
        except StructureError as exc:
            failures.append(Failure(one.ids[0], "elements", str(exc), str(one.info[0].get("source", name))))
    return LabelledData(data.batch.select(keep), failures, data.aliases)


def _write_failures(path: Path, failures: list[Failure]) -> None:
    with atomic_write(path, newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "step", "reason", "source"])
        for f in failures:
            w.writerow([f.id, f.step, f.reason, f.source])


def _write_predictions(
    path: Path, split: str, data: CrystalBatch, values: Mapping[str, torch.Tensor], encoder: TrainableEncoder
) -> None:
    specs = [s for s in encoder.target_set.specs if s.level == "structure"]
    truth = _truth(data, encoder.target_set)
    with atomic_write(path, newline="") as fh:
        w = csv.writer(fh)
        header = ["split", "id"]
        for s in specs:
            header += [f"{s.name}_true", f"{s.name}_pred"]
        w.writerow(header)
        for i, ident in enumerate(data.ids):
            row: list[Any] = [split, ident]
            for s in specs:
                tv, pv = truth[s.name][i], values[s.name][i]
                row += [
                    json.dumps(tv.tolist()) if tv.dim() else float(tv),
                    json.dumps(pv.tolist()) if pv.dim() else float(pv),
                ]
            w.writerow(row)


def _parity_plot(
    path: Path,
    split: str,
    data: CrystalBatch,
    values: Mapping[str, torch.Tensor],
    encoder: TrainableEncoder,
    metrics: Mapping[str, float],
) -> bool:
    specs = [s for s in encoder.target_set.specs if s.task == "regression"]
    if not specs or len(data) == 0:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth = _truth(data, encoder.target_set)
    fig, axes = plt.subplots(1, len(specs), figsize=(4.2 * len(specs), 4.2), squeeze=False)
    for ax, s in zip(axes[0], specs, strict=True):
        t = truth[s.name].reshape(-1).double().cpu().numpy()
        p = values[s.name].reshape(-1).double().cpu().numpy()
        lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
        ax.plot([lo, hi], [lo, hi], color="0.6", lw=1)
        ax.scatter(t, p, s=4, alpha=0.5)
        unit = f" ({s.unit})" if s.unit else ""
        ax.set_xlabel(f"true {s.name}{unit}")
        ax.set_ylabel(f"predicted {s.name}{unit}")
        ax.set_title(f"{encoder.name}, {split} (n={len(t)}): MAE {metrics.get(f'{s.name}_mae', math.nan):.4g}")
        ax.set_aspect("equal", adjustable="box")
    fig.tight_layout()
    tmp = path.with_suffix(".part.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return True


def _describe_target(s: Any) -> str:
    unit = f", {s.unit}" if s.unit else ""
    return f"`{s.name}` ({s.task}, {s.level}{unit})"


def _model_card(cfg: TrainConfig, encoder: TrainableEncoder, summary: Mapping[str, Any]) -> str:
    lines = [
        f"# {encoder.name} model card",
        "",
        f"- encoder: `{encoder.name}` {encoder.version} (crystal-core {summary['crystal_version']})",
        f"- targets: {', '.join(_describe_target(s) for s in encoder.target_set.specs)}",
        f"- training data: {', '.join(cfg.data.train)}",
        f"- split: {summary['split']}",
        f"- sizes: train {summary['sizes']['train']}, val {summary['sizes']['val']}, test {summary['sizes']['test']}; skipped rows {summary['skipped']}",
        f"- seed: {cfg.trainer.seed}; epochs run {summary['epochs']}, best epoch {summary['best_epoch']}",
        f"- optimiser: {cfg.optim.optimizer} lr {cfg.optim.lr:g}, weight decay {cfg.optim.weight_decay:g}, scheduler {cfg.optim.scheduler}; batch {cfg.trainer.batch_size}",
        f"- training time: {summary['train_time_s']:.1f} s on {summary['device']}",
        f"- parameters: {summary['parameters']}",
        f"- file: `model.pt`, sha256 `{summary['sha256']}`",
        "",
        "| split | metric | value |",
        "|---|---|---|",
    ]
    for split, metrics in summary["metrics"].items():
        for k, v in metrics.items():
            lines.append(f"| {split} | {k} | {v:.6g} |")
    lines += [
        "",
        "Architecture (encoder config):",
        "",
        "```json",
        json.dumps(encoder.checkpoint()["config"], indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def _build_encoder(cfg: TrainConfig, device: str) -> TrainableEncoder:
    from crystal.plugins import load_class

    cls = load_class("encoder", cfg.encoder)
    if not (isinstance(cls, type) and issubclass(cls, TrainableEncoder)):
        raise ConfigError(
            f"encoder {cfg.encoder!r} is not trainable (it does not subclass crystal.trainable.TrainableEncoder)"
        )
    if cfg.init is None:
        return cls(dict(cfg.model, targets=[s.model_dump() for s in cfg.targets], seed=cfg.trainer.seed), device=device)
    source = {"checkpoint": cfg.init} if (Path(cfg.init).suffix or os.sep in cfg.init) else {"weights": cfg.init}
    enc = cls(dict(cfg.model, **source), device=device)
    if [s.model_dump() for s in enc.target_set.specs] != [s.model_dump() for s in cfg.targets]:
        raise ConfigError(
            f"init {cfg.init!r} predicts {list(enc.targets)}, but the run's [[targets]] are {[s.name for s in cfg.targets]}; "
            "they must be identical to fine-tune"
        )
    return enc


def train(config: TrainConfig | Mapping[str, Any], *, resume: bool = False, quiet: bool = False) -> TrainResult:
    """Read the data, split it, train, evaluate and write the run directory (module doc)."""
    from crystal import __version__
    from crystal_train.config import parse_train_config

    cfg = config if isinstance(config, TrainConfig) else parse_train_config(dict(config))
    out = Path(cfg.output)
    launcher = _is_launcher()
    cfg_json = cfg.model_dump(mode="json")
    if launcher:
        if resume:
            saved = out / "train-config.json"
            if not saved.is_file():
                raise ConfigError(f"cannot resume: {saved} does not exist (no run in {out})")
            old = json.loads(saved.read_text(encoding="utf-8"))
            changed = _config_changes(old, cfg_json)
            if "trainer.max_epochs" in changed and cfg.optim.scheduler not in ("onecycle", "cosine"):
                changed.remove("trainer.max_epochs")
            elif "trainer.max_epochs" in changed:
                changed[changed.index("trainer.max_epochs")] = (
                    f"trainer.max_epochs, which the {cfg.optim.scheduler} schedule depends on"
                )
            if changed:
                raise ConfigError(f"cannot resume {out}: the run config changed ({', '.join(changed)})")
        elif (out / "checkpoints").exists() or (out / "model.pt").exists():
            raise ConfigError(f"output {str(out)!r} already holds a run; resume it (--resume) or choose another output")
        out.mkdir(parents=True, exist_ok=True)
        with atomic_write(out / "train-config.json") as fh:
            json.dump(cfg_json, fh, indent=2)
    device = "cuda" if cfg.trainer.accelerator in ("gpu", "cuda") else "cpu"
    encoder = _build_encoder(cfg, "cpu")
    specs = list(encoder.target_set.specs)

    def load(paths: list[str] | None, name: str) -> LabelledData | None:
        if not paths:
            return None
        data = read_labelled(
            paths,
            specs,
            columns=cfg.data.columns,
            inputs=cfg.data.inputs,
            limit=cfg.data.limit,
            on_error=cfg.data.on_error,
        )
        data = _element_failures(encoder, data, name)
        if cfg.data.on_error == "raise" and len(data.failures):
            f = data.failures[0]
            raise StructureError(f"{f.source}: {f.id}: {f.step}: {f.reason}")
        return data

    train_data = load(cfg.data.train, "train")
    assert train_data is not None
    val_data, test_data = load(cfg.data.val, "val"), load(cfg.data.test, "test")
    failures = train_data.failures + (val_data.failures if val_data else []) + (test_data.failures if test_data else [])
    fractions = [
        cfg.data.val_fraction if val_data is None else 0.0,
        cfg.data.test_fraction if test_data is None else 0.0,
    ]
    idx_train, idx_val, idx_test = split_indices(len(train_data.batch), fractions, cfg.data.split_seed)
    full = train_data.batch
    train_b = full.select(idx_train)
    val_b = val_data.batch if val_data is not None else full.select(idx_val)
    test_b = test_data.batch if test_data is not None else full.select(idx_test)
    if not quiet and launcher:
        msg = f"data: train {len(train_b)}, val {len(val_b)}, test {len(test_b)}; skipped {len(failures)} row(s)"
        print(msg + (f" (see {out / 'failures.csv'})" if failures else ""), file=sys.stderr)
        for alias in train_data.aliases:
            print(f"note: target {alias}", file=sys.stderr)
    if launcher:
        _write_failures(out / "failures.csv", failures)
    if device == "cuda":
        encoder.net.to("cuda")
        encoder.device = torch.device("cuda")
    encoder, info = fit(
        encoder,
        train_b,
        val_b,
        optim=cfg.optim,
        trainer=cfg.trainer,
        output=out,
        resume=resume,
        fit_normalizer=cfg.init is None,
        quiet=quiet,
    )
    result = TrainResult(encoder, out if info["global_zero"] else None, epochs=info["epochs"], failures=failures)
    result.train_time_s = info["train_time_s"]
    if not info["global_zero"]:
        return result
    metrics: dict[str, dict[str, float]] = {}
    evaluated: dict[str, tuple[CrystalBatch, dict[str, torch.Tensor]]] = {}
    for split, data in (("train", train_b), ("val", val_b), ("test", test_b)):
        if len(data):
            values, m = evaluate(encoder, data, batch_size=max(cfg.trainer.batch_size, 64))
            metrics[split], evaluated[split] = m, (data, values)
    report_split = "test" if "test" in evaluated else ("val" if "val" in evaluated else "train")
    data, values = evaluated[report_split]
    _write_predictions(out / "predictions.csv", report_split, data, values, encoder)
    _parity_plot(out / "parity.png", report_split, data, values, encoder, metrics[report_split])
    split_desc = (
        (
            f"val from {', '.join(cfg.data.val)}"
            if cfg.data.val
            else f"val {cfg.data.val_fraction:g} of train (seed {cfg.data.split_seed})"
        )
        + "; "
        + (
            f"test from {', '.join(cfg.data.test)}"
            if cfg.data.test
            else f"test {cfg.data.test_fraction:g} of train (seed {cfg.data.split_seed})"
        )
    )
    summary: dict[str, Any] = {
        "encoder": encoder.name,
        "encoder_version": encoder.version,
        "crystal_version": __version__,
        "targets": [s.model_dump(mode="json") for s in encoder.target_set.specs],
        "data": cfg.data.model_dump(mode="json"),
        "split": split_desc,
        "sizes": {"train": len(train_b), "val": len(val_b), "test": len(test_b)},
        "skipped": len(failures),
        "seed": cfg.trainer.seed,
        "epochs": info["epochs"],
        "best_epoch": info["best_epoch"],
        "monitor": info["monitor"],
        "train_time_s": round(info["train_time_s"], 2),
        "time_per_epoch_s": round(info["train_time_s"] / max(info["epochs"], 1), 3),
        "device": _device_name(cfg),
        "processes": info["world_size"],
        "parameters": sum(p.numel() for p in encoder.net.parameters()),
        "metrics": metrics,
    }
    sha = encoder.save(out / "model.pt", metadata={k: v for k, v in summary.items() if k != "targets"})
    summary["sha256"] = sha
    with atomic_write(out / "summary.json") as fh:
        json.dump(summary, fh, indent=2)
    with atomic_write(out / "model-card.md") as fh:
        fh.write(_model_card(cfg, encoder, summary))
    result.metrics, result.checkpoint, result.sha256 = metrics, out / "model.pt", sha
    return result


def _device_name(cfg: TrainConfig) -> str:
    import platform

    if cfg.trainer.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return (
        f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    )


_RESUMABLE = {("trainer", "progress"), ("trainer", "patience")}


def _config_changes(old: Mapping[str, Any], new: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[str]:
    changed: list[str] = []
    for key in sorted(set(old) | set(new)):
        path = (*prefix, key)
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _config_changes(a, b, path)
        elif a != b and path not in _RESUMABLE:
            changed.append(".".join(path))
    return changed
