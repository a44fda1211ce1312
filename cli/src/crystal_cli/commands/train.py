"""``crystal train`` (encoders) and ``crystal train-potential`` (interatomic potentials)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from crystal.errors import ConfigError
from crystal_cli._common import ThreadsOption, apply_threads, component_config
from crystal_cli.app import app


def _target_option(item: str) -> dict[str, Any]:
    """``NAME[:classification|:atom|:unit=eV]`` -> a TargetSpec dict."""
    name, *mods = item.split(":")
    spec: dict[str, Any] = {"name": name.strip()}
    for m in mods:
        m = m.strip()
        if m in ("classification", "regression"):
            spec["task"] = m
        elif m in ("atom", "structure"):
            spec["level"] = m
        elif m.startswith("unit="):
            spec["unit"] = m[len("unit=") :]
        elif m.startswith("classes="):
            spec["task"], spec["num_classes"] = "classification", int(m[len("classes=") :])
        else:
            raise ConfigError(
                f"--target {item!r}: unknown modifier {m!r} (use classification, atom, unit=..., classes=N)"
            )
    return spec


LOGGER_HELP = (
    "fit.logger: also log to tensorboard or wandb (repeatable; metrics.csv is always written). "
    "Needs pip install 'crystal-train[tensorboard]' / 'crystal-train[wandb]'."
)


def _logger_options(names: list[str] | None) -> list[str]:
    """``--logger tensorboard --logger wandb`` -> ``fit.logger=["tensorboard", "wandb"]``."""
    if not names:
        return []
    return [f"fit.logger={json.dumps([n.strip() for name in names for n in name.split(',') if n.strip()])}"]


@app.command("train")
def train_cmd(
    config_file: Annotated[Path | None, typer.Argument(help="Training TOML file (see docs/training.md).")] = None,
    encoder: Annotated[str | None, typer.Option("--encoder", "-e", help="Encoder plugin name.")] = None,
    train_data: Annotated[list[str] | None, typer.Option("--train", help="Training data (repeatable).")] = None,
    val_data: Annotated[
        list[str] | None, typer.Option("--val", help="Validation data (default: a fraction of --train).")
    ] = None,
    test_data: Annotated[list[str] | None, typer.Option("--test", help="Test data.")] = None,
    target: Annotated[
        list[str] | None,
        typer.Option("--target", "-t", help="Target NAME[:classification][:atom][:unit=eV] (repeatable)."),
    ] = None,
    model: Annotated[
        list[str] | None, typer.Option("--config", "-c", help="Encoder config KEY=VALUE (repeatable).")
    ] = None,
    sets: Annotated[list[str] | None, typer.Option("--set", help="Override SECTION.FIELD=VALUE (repeatable).")] = None,
    epochs: Annotated[int | None, typer.Option(help="fit.max_epochs")] = None,
    batch_size: Annotated[int | None, typer.Option(help="fit.batch_size")] = None,
    lr: Annotated[float | None, typer.Option(help="fit.lr")] = None,
    devices: Annotated[
        int | None, typer.Option(help="fit.devices (>1 = DDP; leave unset under torchrun / srun)")
    ] = None,
    accelerator: Annotated[str | None, typer.Option(help="fit.accelerator: auto, cpu, gpu")] = None,
    strategy: Annotated[str | None, typer.Option(help="fit.strategy: auto, ddp, ddp_spawn")] = None,
    seed: Annotated[int | None, typer.Option(help="fit.seed")] = None,
    logger: Annotated[list[str] | None, typer.Option("--logger", help=LOGGER_HELP)] = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Run directory.")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --output from its last checkpoint.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    threads: ThreadsOption = None,
) -> None:
    """Train an encoder on labelled structures (PyTorch Lightning; DDP with --devices N)."""
    apply_threads(threads)
    from crystal_train.config import apply_train_overrides, load_train_config, parse_train_config
    from crystal_train.encoders import train

    options: list[str] = []
    for key, value in (
        ("fit.max_epochs", epochs),
        ("fit.batch_size", batch_size),
        ("fit.lr", lr),
        ("fit.devices", devices),
        ("fit.seed", seed),
    ):
        if value is not None:
            options.append(f"{key}={value}")
    for key, text in (("fit.accelerator", accelerator), ("fit.strategy", strategy)):
        if text is not None:
            options.append(f"{key}={json.dumps(text)}")
    options += _logger_options(logger) + list(sets or [])
    extra: dict[str, Any] = {}
    if encoder:
        extra["encoder"] = encoder
    if output:
        extra["output"] = str(Path(output).resolve())
    if target:
        extra["targets"] = [_target_option(t) for t in target]
    data_extra = {
        k: [str(Path(p).resolve()) for p in v]
        for k, v in (("train", train_data), ("val", val_data), ("test", test_data))
        if v
    }
    if config_file is not None:
        cfg = load_train_config(config_file, options)
        raw = cfg.model_dump(mode="json", exclude_unset=True)
        raw.update(extra)
        if data_extra:
            raw["data"] = {**raw.get("data", {}), **data_extra}
        if model:
            raw["model"] = {**raw.get("model", {}), **component_config(model)}
        cfg = parse_train_config(raw, str(config_file))
    else:
        missing = [o for o, v in (("--encoder", encoder), ("--train", train_data), ("--target", target)) if not v]
        if missing:
            raise ConfigError(f"crystal train: give a training TOML file or {', '.join(missing)}")
        raw = {**extra, "data": data_extra, "model": component_config(model)}
        raw.setdefault("output", str(Path("runs") / f"train-{encoder}"))
        cfg = parse_train_config(apply_train_overrides(raw, options), "crystal train")
    result = train(cfg, resume=resume, quiet=quiet)
    if result.output is None:  # a DDP worker process: rank 0 reports
        return
    if not quiet:
        for split, metrics in result.metrics.items():
            shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            typer.echo(f"{split}: {shown}")
        typer.echo(f"model: {result.checkpoint} (sha256 {result.sha256})")
        typer.echo(f"run directory: {result.output}")


@app.command("train-potential")
def train_potential_cmd(
    config_file: Annotated[Path | None, typer.Argument(help="Potential-training TOML file (docs/training.md).")] = None,
    potential: Annotated[str | None, typer.Option("--potential", "-p", help="Trainable potential plugin.")] = None,
    train_data: Annotated[list[str] | None, typer.Option("--train", help="Training data (repeatable).")] = None,
    val_data: Annotated[list[str] | None, typer.Option("--val", help="Validation data.")] = None,
    test_data: Annotated[list[str] | None, typer.Option("--test", help="Test data.")] = None,
    init: Annotated[str | None, typer.Option("--init", help="Fine-tune from named weights or a checkpoint.")] = None,
    model: Annotated[list[str] | None, typer.Option("--config", "-c", help="Model config KEY=VALUE.")] = None,
    sets: Annotated[list[str] | None, typer.Option("--set", help="Override SECTION.FIELD=VALUE (repeatable).")] = None,
    epochs: Annotated[int | None, typer.Option(help="fit.max_epochs")] = None,
    logger: Annotated[list[str] | None, typer.Option("--logger", help=LOGGER_HELP)] = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Run directory.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    threads: ThreadsOption = None,
) -> None:
    """Train (or fine-tune) an interatomic potential on energies, forces and stress."""
    apply_threads(threads)
    from crystal_train.config import apply_train_overrides
    from crystal_train.potential import parse_potential_config, read_potential_toml, train_potential

    options = _logger_options(logger) + list(sets or []) + ([f"fit.max_epochs={epochs}"] if epochs is not None else [])
    extra: dict[str, Any] = {}
    if potential:
        extra["potential"] = potential
    if init:
        extra["init"] = str(Path(init).resolve()) if Path(init).exists() else init
    if output:
        extra["output"] = str(Path(output).resolve())
    data_extra = {
        k: [str(Path(p).resolve()) for p in v]
        for k, v in (("train", train_data), ("val", val_data), ("test", test_data))
        if v
    }
    if config_file is not None:
        # validated once, after --init/--train/... are merged: defaults depend on them (fine-tuning)
        raw = read_potential_toml(config_file, options)
        origin = str(config_file)
    else:
        missing = [o for o, v in (("--potential", potential), ("--train", train_data)) if not v]
        if missing:
            raise ConfigError(f"crystal train-potential: give a training TOML file or {', '.join(missing)}")
        raw = apply_train_overrides({"output": str(Path("runs") / f"train-{potential}")}, options)
        origin = "crystal train-potential"
    raw.update(extra)
    if data_extra:
        raw["data"] = {**raw.get("data", {}), **data_extra}
    if model:
        raw["model"] = {**raw.get("model", {}), **component_config(model)}
    result = train_potential(parse_potential_config(raw, origin), quiet=quiet)
    if result.checkpoint is None:  # a DDP process other than rank 0: rank 0 reports
        return
    if not quiet:
        for split, metrics in result.metrics.items():
            typer.echo(f"{split}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        typer.echo(f"model: {result.checkpoint} (sha256 {result.sha256})")
        typer.echo(f"run directory: {result.output}")
