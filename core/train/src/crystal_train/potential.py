"""Training interatomic potentials on energies, forces and (optionally) stress.

>>> from crystal_train.potential import train_potential
>>> result = train_potential({"potential": "mace", "model": {"hidden_irreps": "32x0e + 32x1o"},
...     "data": {"train": ["mlearn/Ni/train.xyz"], "test": ["mlearn/Ni/test.xyz"]},
...     "fit": {"max_epochs": 200}, "output": "runs/mace-ni"})  # doctest: +SKIP
>>> result.metrics["test"]["energy_mae_mev_per_atom"]  # doctest: +SKIP

Steps: read labelled structures (extended XYZ with energies and forces, or any format of
:func:`~crystal_train.data.read_labelled`), split them (seeded), fit per-element
reference energies by least squares on the training split (unless fine-tuning keeps the
pretrained ones), let the plugin compute its data statistics
(:meth:`~crystal.trainable_potential.TrainablePotential.statistics`), then minimise the
weighted loss ``w_E·MSE(E/N) + w_F·MSE(F) + w_S·MSE(σ)`` with :func:`~crystal_train.engine.fit_model`
(EMA of weights, early stopping, DDP-ready through Lightning) and evaluate.

Fine-tuning: ``init`` names shipped weights or a checkpoint; the architecture comes from it
and the data's elements must be among its elements. ``e0s = "keep"`` (the default with
``init``) keeps the pretrained reference energies, ``"fit"`` refits them on the new data (new
DFT settings). Fine-tuning also defaults to a small learning rate (``fit.lr = 1e-4``) so
that the first epochs do not undo the pretraining; any ``[fit]`` value given wins.

Run directory (``output``): ``model.pt`` (crystal-potential checkpoint), the engine's
``metrics.csv``, ``best.pt``, ``checkpoints/``, and the run writers' ``summary.json``,
``model-card.md``, ``predictions.csv`` (per-structure energies), ``parity.png`` (energy per
atom and force components), ``failures.csv``; ``train-config.json``.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, ValidationError, model_validator

from crystal.batch import CrystalBatch
from crystal.config import StrictModel, field_hint
from crystal.errors import ConfigError, StructureError
from crystal.io import Failure, atomic_write
from crystal.targets import TargetSpec
from crystal.trainable_potential import TrainablePotential, fit_reference_energies
from crystal_train.cluster import is_rank_zero, resolve_placement
from crystal_train.data import no_rows_error, read_labelled, split_indices
from crystal_train.engine import fit_model
from crystal_train.options import FitConfig, check_loggers, fit_defaults, warn_fine_tune_overrides
from crystal_train.writers import ParityPanel, RunReport, machine_name, write_failures, write_run

__all__ = [
    "LossWeights",
    "PotentialDataConfig",
    "PotentialTrainConfig",
    "PotentialTrainResult",
    "load_potential_config",
    "parse_potential_config",
    "train_potential",
]


class PotentialDataConfig(StrictModel):
    """Labelled structures for a potential and how they are split."""

    train: list[str] = Field(min_length=1, description="training data: extended XYZ, CSV with cif, JSON (globs ok)")
    val: list[str] | None = Field(None, description="validation data; default: val_fraction of train")
    test: list[str] | None = Field(None, description="test data; default: none")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="fraction of train held out for validation")
    split_seed: int = Field(0, ge=0, description="seed of the train/val split")
    energy_key: str = Field("energy", description="info key / column of the total energy, eV")
    forces_key: str | None = Field("forces", description="per-atom array of forces, eV/Å (None: energies only)")
    stress_key: str | None = Field(
        None, description="stress, eV/Å³, ASE sign and Voigt order xx yy zz yz xz xy (None: not used)"
    )
    limit: int | None = Field(None, ge=1, description="read at most this many structures per data set")
    on_error: Literal["skip", "raise"] = Field("skip", description="unusable row: skip and report, or stop")


class LossWeights(StrictModel):
    """Weights of the mean squared errors in the loss (MACE's defaults: 1 and 100)."""

    energy: float = Field(1.0, ge=0, description="weight of MSE(energy per atom), (eV/atom)⁻²")
    forces: float = Field(100.0, ge=0, description="weight of MSE(force components), (eV/Å)⁻²")
    stress: float = Field(0.0, ge=0, description="weight of MSE(stress components), (eV/Å³)⁻²; needs stress_key")


_POTENTIAL_FIT_DEFAULTS = {
    "max_epochs": 200,
    "batch_size": 5,
    "lr": 0.01,
    "amsgrad": True,
    "ema_decay": 0.99,
    "scheduler": "plateau",
    "plateau_factor": 0.8,
    "plateau_patience": 50,
}
#: [fit] defaults of a fine-tuning run (init given), over the ones above
_FINE_TUNE_FIT_DEFAULTS = {"lr": 1e-4}


class PotentialTrainConfig(StrictModel):
    """One training run of one potential."""

    potential: str = Field(min_length=1, description="potential plugin name (`crystal plugins list`)")
    model: dict[str, Any] = Field(default_factory=dict, description="the potential's architecture fields")
    init: str | None = Field(None, description="fine-tune from these named weights or this checkpoint path")
    e0s: Literal["fit", "keep"] = Field(
        "fit",
        description="reference energies: least-squares fit on the training split ('fit'), or keep init's "
        "('keep'); default: 'keep' when fine-tuning (init), else 'fit'",
    )
    data: PotentialDataConfig
    loss: LossWeights = Field(default_factory=LossWeights)  # type: ignore[arg-type]
    fit: FitConfig = Field(default_factory=lambda: FitConfig(**_POTENTIAL_FIT_DEFAULTS))  # type: ignore[arg-type]
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="device of training and evaluation")
    output: str = Field("runs/train-potential", min_length=1, description="run directory (created)")

    @model_validator(mode="before")
    @classmethod
    def _fit_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        tuning = bool(data.get("init"))
        if tuning and data.get("e0s") is None:
            data = dict(data, e0s="keep")
        if tuning:
            import warnings

            if data.get("e0s") == "fit":
                warnings.warn(
                    f"fine-tuning from {data['init']!r} with e0s = 'fit': the pretrained reference energies are "
                    "replaced by a least-squares fit on the new training data, which shifts every energy the "
                    "model predicts; keep them (the fine-tuning default, e0s = 'keep') unless the new data "
                    "comes from other DFT settings",
                    UserWarning,
                    stacklevel=2,
                )
            warn_fine_tune_overrides(data.get("fit"), _FINE_TUNE_FIT_DEFAULTS, _POTENTIAL_FIT_DEFAULTS, data["init"])
        if isinstance(data.get("fit"), dict) or (tuning and data.get("fit") is None):
            defaults = {**_POTENTIAL_FIT_DEFAULTS, **(_FINE_TUNE_FIT_DEFAULTS if tuning else {})}
            data = dict(data, fit=fit_defaults(data.get("fit") or {}, defaults))
        return data

    @model_validator(mode="after")
    def _consistent(self) -> PotentialTrainConfig:
        bad = sorted({"weights", "checkpoint", "sha256", "elements", "e0s", "seed"} & set(self.model))
        if bad:
            raise ValueError(f"model.{bad[0]} is set by the run (init, the data, fit.seed), not in [model]")
        if self.e0s == "keep" and self.init is None:
            raise ValueError("e0s = 'keep' needs init (pretrained weights to keep them from)")
        if self.loss.stress > 0 and self.data.stress_key is None:
            raise ValueError("loss.stress > 0 needs data.stress_key")
        if self.loss.forces > 0 and self.data.forces_key is None:
            raise ValueError("loss.forces > 0 needs data.forces_key (or set loss.forces = 0)")
        return self


@dataclass
class PotentialTrainResult:
    """What a run produced; on DDP processes other than global rank 0 only ``potential``,
    ``epochs`` and ``train_time_s`` (no metrics, ``checkpoint`` and ``sha256`` are ``None``)."""

    potential: TrainablePotential
    output: Path
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    checkpoint: Path | None = None
    sha256: str | None = None
    epochs: int = 0
    train_time_s: float = 0.0
    failures: list[Failure] = field(default_factory=list)


def parse_potential_config(data: dict[str, Any], origin: str = "<train-potential>") -> PotentialTrainConfig:
    """Validate a run given as a dict; :class:`ConfigError` names ``origin`` and each field."""
    try:
        return PotentialTrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            "\n".join(
                f"{origin}: field {'.'.join(str(p) for p in err['loc']) or '<root>'!r}: "
                + (
                    "unknown field" + field_hint(PotentialTrainConfig, tuple(err["loc"]))
                    if err["type"] == "extra_forbidden"
                    else err["msg"]
                )
                for err in exc.errors()
            )
        ) from None


def read_potential_toml(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """A potential-training TOML file as a dict, overridden, with data paths, output and a
    checkpoint ``init`` made relative to the file; not validated yet (a caller may add fields
    such as ``init`` first, which changes the defaults of a fine-tuning run)."""
    from crystal_train.config import read_run_toml

    data = read_run_toml(path, overrides)
    init = data.get("init")
    if isinstance(init, str) and (Path(init).suffix or os.sep in init) and not Path(init).is_absolute():
        data["init"] = os.path.normpath(Path(path).resolve().parent / init)
    return data


def load_potential_config(path: str | Path, overrides: list[str] | None = None) -> PotentialTrainConfig:
    """Read a potential-training TOML file (data paths, output and a checkpoint ``init``
    relative to the file), override, validate."""
    return parse_potential_config(read_potential_toml(path, overrides), str(path))


def _specs(cfg: PotentialTrainConfig) -> tuple[list[TargetSpec], dict[str, str]]:
    d = cfg.data
    specs = [TargetSpec(name="energy", unit="eV")]
    columns = {"energy": d.energy_key}
    if d.forces_key is not None:
        specs.append(TargetSpec(name="forces", level="atom", dim=3, unit="eV/Å"))
        columns["forces"] = d.forces_key
    if d.stress_key is not None:
        specs.append(TargetSpec(name="stress", dim=6, unit="eV/Å³"))
        columns["stress"] = d.stress_key
    return specs, columns


def evaluate_potential(
    potential: TrainablePotential, data: CrystalBatch, *, full: bool = False
) -> tuple[dict[str, float], Any]:
    """Energy (meV/atom) and force (eV/Å) errors of ``potential`` on labelled ``data``, and its
    (B,) predicted energies (``full=True``: the whole :class:`~crystal.components.PotentialOutput`)."""
    want_f = "forces" in data.atom_properties
    want_s = "stress" in data.crystal_properties
    out = potential.compute(data, forces=want_f, stress=want_s)
    de = (out.energy - data.crystal_properties["energy"]) / data.num_atoms.to(out.energy.dtype)
    m = {
        "energy_mae_mev_per_atom": 1000 * float(de.abs().mean()),
        "energy_rmse_mev_per_atom": 1000 * float(de.pow(2).mean().sqrt()),
    }
    if want_f:
        assert out.forces is not None
        df = out.forces - data.atom_properties["forces"]
        m["forces_mae"] = float(df.abs().mean())
        m["forces_rmse"] = float(df.pow(2).mean().sqrt())
    if want_s:
        assert out.stress is not None
        voigt = out.stress[:, [0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        m["stress_mae"] = float((voigt - data.crystal_properties["stress"]).abs().mean())
    return m, (out if full else out.energy)


def _potential_class(name: str) -> type[TrainablePotential]:
    from crystal.plugins import load_class

    cls = load_class("potential", name)
    if not (isinstance(cls, type) and issubclass(cls, TrainablePotential)):
        raise ConfigError(
            f"potential {name!r} is not trainable (it does not subclass crystal.trainable_potential.TrainablePotential)"
        )
    return cls


@dataclass
class _PotentialSplits:
    train: CrystalBatch
    val: CrystalBatch
    test: CrystalBatch
    failures: list[Failure]

    def items(self) -> list[tuple[str, CrystalBatch]]:
        return [(name, b) for name, b in (("train", self.train), ("val", self.val), ("test", self.test)) if len(b)]


def _prepare_run(cfg: PotentialTrainConfig) -> Path:
    """Check (every DDP process) and create the run directory (global rank 0 only)."""
    out = Path(cfg.output)
    check_loggers(cfg.fit, out)
    resolve_placement(cfg.fit)  # fit.devices / num_nodes against torchrun / srun, before anything is written
    if (out / "model.pt").exists():
        raise ConfigError(f"output {str(out)!r} already holds a trained potential; choose another output")
    if not is_rank_zero():
        return out
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "train-config.json") as fh:
        json.dump(cfg.model_dump(mode="json"), fh, indent=2)
    return out


def _read_splits(cfg: PotentialTrainConfig, out: Path) -> _PotentialSplits:
    specs, columns = _specs(cfg)

    def load(paths: list[str] | None) -> Any:
        if not paths:
            return None
        return read_labelled(paths, specs, columns=columns, limit=cfg.data.limit, on_error=cfg.data.on_error)

    train_data = load(cfg.data.train)
    val_data, test_data = load(cfg.data.val), load(cfg.data.test)
    failures: list[Failure] = [f for d in (train_data, val_data, test_data) if d is not None for f in d.failures]
    full = train_data.batch
    if len(full) == 0:
        raise no_rows_error(train_data, cfg.data.train or [])
    if val_data is None:
        idx_train, idx_val = split_indices(len(full), [cfg.data.val_fraction], cfg.data.split_seed)
        train_b, val_b = full.select(idx_train), full.select(idx_val)
    else:
        train_b, val_b = full, val_data.batch
    test_b = test_data.batch if test_data is not None else CrystalBatch.empty()
    return _PotentialSplits(train_b, val_b, test_b, failures)


def _new_potential(
    cls: type[TrainablePotential], cfg: PotentialTrainConfig, splits: _PotentialSplits, device: str
) -> TrainablePotential:
    """Elements from the data, E0s by least squares and the plugin's statistics from the training split."""
    from crystal.elements import symbol
    from crystal.neighbors import radius_graph

    train_b = splits.train
    present = sorted({int(z) for _, b in splits.items() for z in torch.unique(b.atomic_numbers).tolist()})
    elements = tuple(symbol(z) for z in present)
    e0s = fit_reference_energies(train_b, train_b.crystal_properties["energy"], elements)
    base = cls.make_config(dict(cfg.model, elements=elements, e0s=e0s, seed=cfg.fit.seed))
    per_atom = torch.tensor([e0s[symbol(int(z))] for z in train_b.atomic_numbers], dtype=torch.float64)
    offsets = torch.zeros(len(train_b), dtype=torch.float64).index_add(0, train_b.batch, per_atom)
    graph = radius_graph(train_b, float(base.cutoff))  # type: ignore[attr-defined]
    stats = cls.statistics(base, train_b, offsets, graph)
    return cls(cls.make_config(base.model_dump(), **stats), device=device)


def _fine_tuned_potential(
    cls: type[TrainablePotential], cfg: PotentialTrainConfig, splits: _PotentialSplits, device: str
) -> TrainablePotential:
    """``init``'s architecture and weights; its elements must cover the data; E0s refit unless kept."""
    assert cfg.init is not None
    source = {"checkpoint": cfg.init} if (Path(cfg.init).suffix or os.sep in cfg.init) else {"weights": cfg.init}
    potential = cls(dict(cfg.model, **source), device=device)
    for name, batch in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        try:
            potential.check_elements(batch)
        except StructureError as exc:
            raise ConfigError(f"fine-tuning from {cfg.init!r}: the {name} data: {exc}") from None
    if cfg.e0s == "fit":
        elements = potential.config.elements  # type: ignore[attr-defined]
        e0s = fit_reference_energies(splits.train, splits.train.crystal_properties["energy"], elements)
        # the model's interaction energies stay; only the per-element references change
        with torch.no_grad():
            potential.net.e0.copy_(torch.tensor([e0s[el] for el in elements], dtype=torch.float64))
        potential.config = potential.make_config(potential.config.model_dump(), e0s=e0s)
    return potential


def _evaluate(
    potential: TrainablePotential, splits: _PotentialSplits
) -> tuple[dict[str, dict[str, float]], dict[str, tuple[CrystalBatch, Any]]]:
    metrics: dict[str, dict[str, float]] = {}
    predicted: dict[str, tuple[CrystalBatch, Any]] = {}
    for split, data in splits.items():
        metrics[split], out = evaluate_potential(potential, data, full=True)
        predicted[split] = (data, out)
    return metrics, predicted


def _predictions(
    predicted: dict[str, tuple[CrystalBatch, Any]], metrics: dict[str, dict[str, float]]
) -> tuple[list[str], list[list[Any]], list[ParityPanel]]:
    header = ["split", "id", "num_atoms", "energy_true", "energy_pred"]
    rows = [
        [split, ident, int(data.num_atoms[i]), float(data.crystal_properties["energy"][i]), float(out.energy[i])]
        for split, (data, out) in predicted.items()
        for i, ident in enumerate(data.ids)
    ]
    split = "test" if "test" in predicted else ("val" if "val" in predicted else "train")
    data, out = predicted[split]
    n = data.num_atoms.to(torch.float64)
    m = metrics[split]
    panels = [
        ParityPanel(
            "energy per atom",
            (data.crystal_properties["energy"] / n).tolist(),
            (out.energy / n).tolist(),
            "eV/atom",
            title=f"energy, {split} (n={len(data)}): MAE {m['energy_mae_mev_per_atom']:.4g} meV/atom",
        )
    ]
    if out.forces is not None and "forces" in data.atom_properties:
        panels.append(
            ParityPanel(
                "force component",
                data.atom_properties["forces"].reshape(-1).tolist(),
                out.forces.reshape(-1).tolist(),
                "eV/Å",
                title=f"forces, {split} ({data.num_nodes} atoms): MAE {m['forces_mae']:.4g} eV/Å",
            )
        )
    return header, rows, panels


def _write_potential_run(
    cfg: PotentialTrainConfig,
    potential: TrainablePotential,
    splits: _PotentialSplits,
    result: Any,
    evaluated: Any,
    device: str,
) -> str:
    from crystal import __version__

    out = Path(cfg.output)
    metrics, predicted = evaluated
    summary: dict[str, Any] = {
        "potential": potential.name,
        "potential_version": potential.version,
        "crystal_version": __version__,
        "init": cfg.init,
        "data": cfg.data.model_dump(mode="json"),
        "sizes": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
        "skipped": len(splits.failures),
        "elements": list(potential.config.elements),  # type: ignore[attr-defined]
        "e0s": potential.config.e0s,  # type: ignore[attr-defined]
        "loss": cfg.loss.model_dump(),
        "fit": cfg.fit.model_dump(mode="json"),
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "train_time_s": round(result.seconds, 2),
        "processes": result.world_size,
        "nodes": result.num_nodes,
        "time_per_epoch_s": round(result.seconds / max(len(result.history), 1), 3),
        "device": machine_name(device),
        "parameters": sum(p.numel() for p in potential.net.model.parameters()),
        "metrics": metrics,
    }
    potential.metadata = dict(summary)
    sha = potential.save(out / "model.pt", metadata=summary)
    summary["sha256"] = sha
    header, rows, panels = _predictions(predicted, metrics)
    report = RunReport(
        f"{potential.name} potential model card",
        _card_facts(cfg, summary),
        metrics,
        summary,
        potential.checkpoint()["config"],
        header,
        rows,
        panels,
        splits.failures,
    )
    write_run(out, report)
    return sha


def train_potential(
    config: PotentialTrainConfig | dict[str, Any],
    *,
    potential_class: type[TrainablePotential] | None = None,
    quiet: bool = False,
) -> PotentialTrainResult:
    """Read, split, build (E0s, statistics) or fine-tune, fit, evaluate and write the run directory."""
    cfg = config if isinstance(config, PotentialTrainConfig) else parse_potential_config(dict(config))
    out = _prepare_run(cfg)
    cls = potential_class or _potential_class(cfg.potential)
    device = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
    splits = _read_splits(cfg, out)
    build = _new_potential if cfg.init is None else _fine_tuned_potential
    potential = build(cls, cfg, splits, device)
    launcher = is_rank_zero()
    if not quiet and launcher:
        print(
            f"data: train {len(splits.train)}, val {len(splits.val)}, test {len(splits.test)}; "
            f"skipped {len(splits.failures)}; elements {', '.join(potential.config.elements)}",  # type: ignore[attr-defined]
            file=sys.stderr,
        )
    if launcher:
        write_failures(out / "failures.csv", splits.failures)
    net = potential.net
    net.energy_weight, net.forces_weight, net.stress_weight = cfg.loss.energy, cfg.loss.forces, cfg.loss.stress
    result = fit_model(
        net,
        splits.train.to(dtype=torch.float64),
        splits.val.to(dtype=torch.float64) if len(splits.val) else None,
        cfg.fit.model_copy(update={"accelerator": "cuda" if device == "cuda" else "cpu"}),
        run_dir=out,
        quiet=quiet,
        run_name=potential.name,
    )
    net.to(potential.device).eval()
    potential.trained = True
    if not result.global_zero:  # another DDP process: rank 0 evaluates and writes the run directory
        return PotentialTrainResult(potential, out, epochs=result.epochs, train_time_s=result.seconds)
    evaluated = _evaluate(potential, splits)
    sha = _write_potential_run(cfg, potential, splits, result, evaluated, device)
    return PotentialTrainResult(
        potential, out, evaluated[0], out / "model.pt", sha, result.epochs, result.seconds, splits.failures
    )


def _card_facts(cfg: PotentialTrainConfig, summary: dict[str, Any]) -> list[str]:
    f = cfg.fit
    return [
        f"potential: `{summary['potential']}` {summary['potential_version']} (crystal-core {summary['crystal_version']})",
        f"elements: {', '.join(summary['elements'])}; reference energies (eV/atom): "
        + ", ".join(f"{k} {v:.6f}" for k, v in (summary["e0s"] or {}).items()),
        f"training data: {', '.join(cfg.data.train)}" + (f"; fine-tuned from `{cfg.init}`" if cfg.init else ""),
        f"sizes: train {summary['sizes']['train']}, val {summary['sizes']['val']}, test {summary['sizes']['test']};"
        f" skipped {summary['skipped']}",
        f"loss weights: energy {cfg.loss.energy:g}, forces {cfg.loss.forces:g}, stress {cfg.loss.stress:g}",
        f"optimiser: {f.optimizer} lr {f.lr:g} (amsgrad {f.amsgrad}), scheduler {f.scheduler}, EMA {f.ema_decay}, "
        f"batch {f.batch_size}, seed {f.seed}",
        f"epochs run {summary['epochs']}, best epoch {summary['best_epoch']}; training time "
        f"{summary['train_time_s']:.0f} s on {summary['device']}",
        f"parameters: {summary['parameters']}",
        f"file: `model.pt`, sha256 `{summary['sha256']}`",
    ]
