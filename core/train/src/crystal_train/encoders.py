"""Training encoders (``crystal train``): :func:`train` runs the steps, :func:`fit` trains one encoder.

Every :class:`~crystal.trainable.TrainableEncoder` trains through the one engine
(:func:`crystal_train.engine.fit_model`): :class:`EncoderLoss` gives its
:class:`~crystal.trainable.EncoderNet` the ``training_loss`` contract (the targets' loss,
plus MAE / accuracy per target in validation).

:func:`train` in named steps: :func:`prepare_run` (run directory, resume check) →
:func:`build_encoder` → :func:`read_splits` (read, drop rows with unknown elements, split)
→ :func:`fit` → :func:`evaluate_splits` → :func:`write_encoder_run`. Run directory::

    model.pt                           the best model, crystal checkpoint format
    metrics.csv, best.pt, checkpoints/ the engine's (crystal_train.engine)
    summary.json, model-card.md        data, split, seed, metrics, sha256
    predictions.csv, parity.png        test (else validation) predictions vs truth
    failures.csv                       every row that was skipped, and why
    train-config.json                  the validated run config
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crystal.batch import CrystalBatch
from crystal.errors import ConfigError, StructureError
from crystal.io import Failure, atomic_write
from crystal.trainable import TrainableEncoder
from crystal_train.cluster import is_rank_zero, resolve_placement
from crystal_train.config import TrainConfig
from crystal_train.data import LabelledData, no_rows_error, read_labelled, split_indices
from crystal_train.engine import fit_model
from crystal_train.options import FitConfig, check_loggers
from crystal_train.writers import ParityPanel, RunReport, machine_name, write_failures, write_run

__all__ = [
    "EncoderLoss",
    "Splits",
    "TrainResult",
    "build_encoder",
    "evaluate",
    "evaluate_splits",
    "fit",
    "prepare_run",
    "read_splits",
    "train",
    "write_encoder_run",
]


def _truth(batch: CrystalBatch, targets: Any) -> dict[str, torch.Tensor]:
    out = {}
    for s in targets.specs:
        table = batch.atom_properties if s.level == "atom" else batch.crystal_properties
        if s.name not in table:
            raise StructureError(f"the batch has no values for target {s.name!r} ({s.level} level)")
        out[s.name] = table[s.name]
    return out


class EncoderLoss(nn.Module):
    """The engine's ``training_loss`` contract for an :class:`~crystal.trainable.EncoderNet`."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def training_loss(self, batch: CrystalBatch) -> dict[str, torch.Tensor]:
        targets: Any = self.net.targets
        raw = self.net(batch)
        truth = _truth(batch, targets)
        loss, parts = targets.loss(raw, truth, batch.num_atoms)
        out: dict[str, torch.Tensor] = {"loss": loss}
        if len(parts) > 1:
            out.update({f"loss_{name}": part for name, part in parts.items()})
        if not self.training:
            with torch.no_grad():
                values = targets.denormalize({k: v.detach() for k, v in raw.items()}, batch.num_atoms)
                for s in targets.specs:
                    v, t = values[s.name], truth[s.name]
                    if s.task == "regression":
                        err = v.reshape(-1, s.dim).double() - t.reshape(-1, s.dim).double()
                        out[f"{s.name}_mae"] = err.abs().mean()
                    else:
                        pred = (v > 0.5).long() if v.dim() == 1 else v.argmax(-1)
                        out[f"{s.name}_accuracy"] = (pred == t.reshape(-1)).double().mean()
        return out


def fit(
    encoder: TrainableEncoder,
    train: CrystalBatch,
    val: CrystalBatch | None = None,
    options: FitConfig | Mapping[str, Any] | None = None,
    *,
    output: str | os.PathLike[str] | None = None,
    resume: bool = False,
    fit_normalizer: bool = True,
    quiet: bool = False,
) -> tuple[TrainableEncoder, dict[str, Any]]:
    """Train ``encoder.net`` on labelled batches (targets in ``crystal_properties`` /
    ``atom_properties``) with :func:`~crystal_train.engine.fit_model`; the best weights (by
    ``options.monitor``) are loaded back into ``encoder``. Returns ``(encoder, info)`` with
    ``info = {"epochs", "best_epoch", "best_score", "monitor", "train_time_s", "history",
    "global_zero", "world_size", "num_nodes"}``.
    """
    cfg = options if isinstance(options, FitConfig) else FitConfig.model_validate(dict(options or {}))
    if len(train) == 0:
        raise ConfigError("no training structures (all rows were skipped?)")
    val = val if val is not None and len(val) else None
    targets = encoder.target_set
    truth = _truth(train, targets)
    if val is not None:
        _truth(val, targets)
    if fit_normalizer:
        targets.fit_normalizer(
            {s.name: truth[s.name] for s in targets.specs if s.task == "regression"}, train.num_atoms
        )
    module = EncoderLoss(encoder.net)
    result = fit_model(
        module,
        train.to(dtype=torch.float64),
        val.to(dtype=torch.float64) if val is not None else None,
        cfg,
        run_dir=Path(output) if output is not None else None,
        resume=resume,
        quiet=quiet,
        run_name=encoder.name,
    )
    encoder.net.to(encoder.device).eval()
    encoder.trained = True
    info = {
        "epochs": result.epochs,
        "best_epoch": result.best_epoch or None,
        "best_score": None if math.isinf(result.best_score) else result.best_score,
        "monitor": result.monitor,
        "train_time_s": result.seconds,
        "history": list(result.history),
        "global_zero": result.global_zero,
        "world_size": result.world_size,
        "num_nodes": result.num_nodes,
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


@dataclass
class Splits:
    """The labelled train / val / test batches of a run and every skipped row."""

    train: CrystalBatch
    val: CrystalBatch
    test: CrystalBatch
    failures: list[Failure]
    aliases: list[str]

    def items(self) -> list[tuple[str, CrystalBatch]]:
        return [(name, b) for name, b in (("train", self.train), ("val", self.val), ("test", self.test)) if len(b)]


def _is_launcher() -> bool:
    """Global rank 0 (under torchrun / srun too): the process that writes the run directory."""
    return is_rank_zero()


_RESUMABLE = {("fit", "progress"), ("fit", "patience"), ("fit", "max_minutes"), ("fit", "logger")}


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


def prepare_run(cfg: TrainConfig, resume: bool) -> Path:
    """Check the run directory (a new run must not overwrite one; a resumed one must keep
    its config) and write ``train-config.json``. Every DDP process checks (a refused run stops
    all of them, none waits for the others); only global rank 0 writes."""
    out = Path(cfg.output)
    check_loggers(cfg.fit, out)
    resolve_placement(cfg.fit)  # fit.devices / num_nodes against torchrun / srun, before anything is written
    cfg_json = cfg.model_dump(mode="json")
    if resume:
        saved = out / "train-config.json"
        if not saved.is_file():
            raise ConfigError(f"cannot resume: {saved} does not exist (no run in {out})")
        changed = _config_changes(json.loads(saved.read_text(encoding="utf-8")), cfg_json)
        if "fit.max_epochs" in changed and cfg.fit.scheduler not in ("onecycle", "cosine"):
            changed.remove("fit.max_epochs")
        elif "fit.max_epochs" in changed:
            changed[changed.index("fit.max_epochs")] = (
                f"fit.max_epochs, which the {cfg.fit.scheduler} schedule depends on"
            )
        if changed:
            raise ConfigError(f"cannot resume {out}: the run config changed ({', '.join(changed)})")
    elif (out / "checkpoints").exists() or (out / "model.pt").exists():
        raise ConfigError(f"output {str(out)!r} already holds a run; resume it (--resume) or choose another output")
    if not _is_launcher():
        return out
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "train-config.json") as fh:
        json.dump(cfg_json, fh, indent=2)
    return out


def build_encoder(cfg: TrainConfig, device: str = "cpu") -> TrainableEncoder:
    """A fresh encoder for the run's targets, or the ``init`` weights to fine-tune (same targets)."""
    from crystal.plugins import load_class

    cls = load_class("encoder", cfg.encoder)
    if not (isinstance(cls, type) and issubclass(cls, TrainableEncoder)):
        raise ConfigError(
            f"encoder {cfg.encoder!r} is not trainable (it does not subclass crystal.trainable.TrainableEncoder)"
        )
    if cfg.init is None:
        return cls(dict(cfg.model, targets=[s.model_dump() for s in cfg.targets], seed=cfg.fit.seed), device=device)
    source = {"checkpoint": cfg.init} if (Path(cfg.init).suffix or os.sep in cfg.init) else {"weights": cfg.init}
    enc = cls(dict(cfg.model, **source), device=device)
    if [s.model_dump() for s in enc.target_set.specs] != [s.model_dump() for s in cfg.targets]:
        raise ConfigError(
            f"init {cfg.init!r} predicts {list(enc.targets)}, but the run's [[targets]] are "
            f"{[s.name for s in cfg.targets]}; they must be identical to fine-tune"
        )
    return enc


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


def _read(cfg: TrainConfig, encoder: TrainableEncoder, paths: list[str] | None, name: str) -> LabelledData | None:
    if not paths:
        return None
    d = cfg.data
    data = read_labelled(
        paths, list(encoder.target_set.specs), columns=d.columns, inputs=d.inputs, limit=d.limit, on_error=d.on_error
    )
    data = _element_failures(encoder, data, name)
    if d.on_error == "raise" and len(data.failures):
        f = data.failures[0]
        raise StructureError(f"{f.source}: {f.id}: {f.step}: {f.reason}")
    return data


def read_splits(cfg: TrainConfig, encoder: TrainableEncoder) -> Splits:
    """Read train (and val / test when given) and hold seeded fractions of train out for the rest."""
    train_data = _read(cfg, encoder, cfg.data.train, "train")
    assert train_data is not None
    if len(train_data) == 0:
        raise no_rows_error(train_data, cfg.data.train or [])
    val_data, test_data = _read(cfg, encoder, cfg.data.val, "val"), _read(cfg, encoder, cfg.data.test, "test")
    failures = [f for d in (train_data, val_data, test_data) if d is not None for f in d.failures]
    fractions = [
        cfg.data.val_fraction if val_data is None else 0.0,
        cfg.data.test_fraction if test_data is None else 0.0,
    ]
    idx_train, idx_val, idx_test = split_indices(len(train_data.batch), fractions, cfg.data.split_seed)
    full = train_data.batch
    return Splits(
        full.select(idx_train),
        val_data.batch if val_data is not None else full.select(idx_val),
        test_data.batch if test_data is not None else full.select(idx_test),
        failures,
        list(train_data.aliases),
    )


def evaluate_splits(
    encoder: TrainableEncoder, splits: Splits, batch_size: int
) -> tuple[dict[str, dict[str, float]], dict[str, tuple[CrystalBatch, dict[str, torch.Tensor]]]]:
    """Metrics and predictions of every non-empty split."""
    metrics: dict[str, dict[str, float]] = {}
    predicted: dict[str, tuple[CrystalBatch, dict[str, torch.Tensor]]] = {}
    for split, data in splits.items():
        values, m = evaluate(encoder, data, batch_size=max(batch_size, 64))
        metrics[split], predicted[split] = m, (data, values)
    return metrics, predicted


def _split_description(cfg: TrainConfig) -> str:
    d = cfg.data
    val = f"val from {', '.join(d.val)}" if d.val else f"val {d.val_fraction:g} of train (seed {d.split_seed})"
    test = f"test from {', '.join(d.test)}" if d.test else f"test {d.test_fraction:g} of train (seed {d.split_seed})"
    return f"{val}; {test}"


def _describe_target(s: Any) -> str:
    unit = f", {s.unit}" if s.unit else ""
    return f"`{s.name}` ({s.task}, {s.level}{unit})"


def _encoder_predictions(
    encoder: TrainableEncoder, split: str, data: CrystalBatch, values: Mapping[str, torch.Tensor], metrics: Any
) -> tuple[list[str], list[list[Any]], list[ParityPanel]]:
    specs = list(encoder.target_set.specs)
    truth = _truth(data, encoder.target_set)
    header = ["split", "id"] + [f"{s.name}_{k}" for s in specs if s.level == "structure" for k in ("true", "pred")]
    rows = []
    for i, ident in enumerate(data.ids):
        row: list[Any] = [split, ident]
        for s in (s for s in specs if s.level == "structure"):
            tv, pv = truth[s.name][i], values[s.name][i]
            row += [tv.tolist() if tv.dim() else float(tv), pv.tolist() if pv.dim() else float(pv)]
        rows.append(row)
    panels = []
    for s in specs:
        t, p = truth[s.name].reshape(-1), values[s.name]
        if s.task == "classification":
            p = ((p > 0.5).long() if p.dim() == 1 else p.argmax(-1)).reshape(-1)
            score = f"accuracy {metrics.get(f'{s.name}_accuracy', math.nan):.4g}"
        else:
            p = p.reshape(-1)
            score = f"MAE {metrics.get(f'{s.name}_mae', math.nan):.4g}"
        title = f"{encoder.name}, {split} (n={len(t)}): {score}"
        panels.append(ParityPanel(s.name, t.tolist(), p.tolist(), s.unit, s.task, title))  # type: ignore[arg-type]
    return header, rows, panels


def write_encoder_run(
    cfg: TrainConfig, encoder: TrainableEncoder, splits: Splits, info: Mapping[str, Any], evaluated: Any
) -> tuple[dict[str, dict[str, float]], str]:
    """``model.pt`` and the run writers' artefacts; returns ``(metrics, sha256)``."""
    from crystal import __version__

    out = Path(cfg.output)
    metrics, predicted = evaluated
    report_split = "test" if "test" in predicted else ("val" if "val" in predicted else "train")
    data, values = predicted[report_split]
    header, rows, panels = _encoder_predictions(encoder, report_split, data, values, metrics[report_split])
    sizes = {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)}
    device = "cuda" if cfg.fit.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available() else "cpu"
    summary: dict[str, Any] = {
        "encoder": encoder.name,
        "encoder_version": encoder.version,
        "crystal_version": __version__,
        "targets": [s.model_dump(mode="json") for s in encoder.target_set.specs],
        "data": cfg.data.model_dump(mode="json"),
        "split": _split_description(cfg),
        "sizes": sizes,
        "skipped": len(splits.failures),
        "seed": cfg.fit.seed,
        "fit": cfg.fit.model_dump(mode="json"),
        "epochs": info["epochs"],
        "best_epoch": info["best_epoch"],
        "monitor": info["monitor"],
        "train_time_s": round(info["train_time_s"], 2),
        "time_per_epoch_s": round(info["train_time_s"] / max(info["epochs"], 1), 3),
        "device": machine_name(device),
        "processes": info["world_size"],
        "nodes": info.get("num_nodes", 1),
        "parameters": sum(p.numel() for p in encoder.net.parameters()),
        "metrics": metrics,
    }
    sha = encoder.save(out / "model.pt", metadata={k: v for k, v in summary.items() if k != "targets"})
    summary["sha256"] = sha
    f = cfg.fit
    facts = [
        f"encoder: `{encoder.name}` {encoder.version} (crystal-core {__version__})",
        f"targets: {', '.join(_describe_target(s) for s in encoder.target_set.specs)}",
        f"training data: {', '.join(cfg.data.train)}" + (f"; fine-tuned from `{cfg.init}`" if cfg.init else ""),
        f"split: {summary['split']}",
        f"sizes: train {sizes['train']}, val {sizes['val']}, test {sizes['test']}; skipped rows {summary['skipped']}",
        f"seed: {f.seed}; epochs run {summary['epochs']}, best epoch {summary['best_epoch']} by {summary['monitor']}",
        f"optimiser: {f.optimizer} lr {f.lr:g}, weight decay {f.weight_decay:g}, scheduler {f.scheduler}; "
        f"batch {f.batch_size}",
        f"training time: {summary['train_time_s']:.1f} s on {summary['device']}"
        + (f" ({summary['processes']} DDP processes, {summary['nodes']} node(s))" if summary["processes"] > 1 else ""),
        f"parameters: {summary['parameters']}",
        f"file: `model.pt`, sha256 `{sha}`",
    ]
    title = f"{encoder.name} model card"
    arch = encoder.checkpoint()["config"]
    write_run(out, RunReport(title, facts, metrics, summary, arch, header, rows, panels, splits.failures))
    return metrics, sha


def train(config: TrainConfig | Mapping[str, Any], *, resume: bool = False, quiet: bool = False) -> TrainResult:
    """Read the data, split it, build the encoder, fit, evaluate and write the run directory."""
    from crystal_train.config import parse_train_config

    cfg = config if isinstance(config, TrainConfig) else parse_train_config(dict(config))
    out = prepare_run(cfg, resume)
    encoder = build_encoder(cfg, "cpu")
    splits = read_splits(cfg, encoder)
    launcher = _is_launcher()
    if not quiet and launcher:
        n = len(splits.failures)
        msg = f"data: train {len(splits.train)}, val {len(splits.val)}, test {len(splits.test)}; skipped {n} row(s)"
        print(msg + (f" (see {out / 'failures.csv'})" if n else ""), file=sys.stderr)
        for alias in splits.aliases:
            print(f"note: target {alias}", file=sys.stderr)
    if launcher:
        write_failures(out / "failures.csv", splits.failures)
    if cfg.fit.accelerator in ("gpu", "cuda"):
        encoder.net.to("cuda")
        encoder.device = torch.device("cuda")
    encoder, info = fit(
        encoder, splits.train, splits.val, cfg.fit, output=out, resume=resume, fit_normalizer=cfg.init is None,
        quiet=quiet,
    )  # fmt: skip
    result = TrainResult(encoder, out if info["global_zero"] else None, epochs=info["epochs"], failures=splits.failures)
    result.train_time_s = info["train_time_s"]
    if not info["global_zero"]:
        return result
    evaluated = evaluate_splits(encoder, splits, cfg.fit.batch_size)
    result.metrics, result.sha256 = write_encoder_run(cfg, encoder, splits, info, evaluated)
    result.checkpoint = out / "model.pt"
    return result
