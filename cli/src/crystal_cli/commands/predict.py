"""``crystal predict``: properties of structure files with an encoder.

An encoder without trained weights predicts noise, so ``predict`` refuses to run one unless
told to: ``--weights`` names shipped weights or a checkpoint file (a ``crystal train`` run's
``model.pt``), an encoder with ``default_weights`` uses those (and says so), and
``--random-init`` asks for random weights on purpose.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from crystal.errors import ConfigError
from crystal_cli._common import ThreadsOption, apply_threads, component_config, shortcut
from crystal_cli.app import app

__all__ = ["predict_cmd", "trained_config", "weights_option"]

RandomInitOption = Annotated[
    bool,
    typer.Option(
        "--random-init",
        help="Use a randomly initialised (untrained) model on purpose; without it a model with no weights is refused.",
    ),
]


def weights_option(cls: Any, value: str, option: str = "--weights") -> dict[str, Any]:
    """The config keys for ``--weights VALUE`` of component class ``cls``: ``{"weights": VALUE}``
    for a name, ``{"checkpoint": PATH}`` for an existing file, a path-like value
    (``runs/x/model.pt``) or a ``crystal train`` run directory holding ``model.pt``."""
    from crystal.weights import looks_like_path

    what = f"{cls.kind.singular} {cls.name!r}"
    names = ", ".join(cls.weights) or "none shipped"
    if value in cls.weights:
        return {"weights": value}
    path = Path(value).expanduser()
    if path.is_dir() and (path / "model.pt").is_file():
        path = path / "model.pt"
    if not (path.is_file() or looks_like_path(value)):
        return {"weights": value}  # an unknown name: the config's error lists the names (with a did-you-mean)
    if not path.is_file():
        raise ConfigError(
            f"{option} {value}: no such file (a checkpoint file, e.g. the model.pt of `crystal train`, "
            f"or named weights of {what}: {names})"
        )
    if "checkpoint" not in cls.Config.model_fields:
        raise ConfigError(f"{option} {value}: {what} loads no checkpoint files; its named weights: {names}")
    return {"checkpoint": str(path.resolve())}


def trained_config(
    kind: str, name: str, weights: str | None, config: dict[str, Any], random_init: bool, command: str
) -> tuple[dict[str, Any], str | None]:
    """The config of component ``kind``/``name`` for ``--weights``, ``-c`` and ``--random-init``,
    refusing random weights unless ``random_init``; and a line naming the weights used (None
    for a component without weights). Raises :class:`ConfigError` (exit 2) before anything runs."""
    from crystal.plugins import load_class
    from crystal_pipeline.runner import weights_config

    cls = load_class(kind, name)
    if weights is not None and random_init:
        raise ConfigError(f"{command}: give --weights or --random-init, not both")
    cfg = dict(config)
    if weights is not None:
        given = weights_option(cls, weights)
        clash = sorted(k for k in ("weights", "checkpoint") if cfg.get(k) is not None)
        if clash:
            raise ConfigError(f"{command}: --weights and -c {clash[0]}= both choose the weights; give one")
        cfg.update(given)
    try:
        cfg = weights_config(
            cls,
            cfg,
            random_init=random_init,
            give="--weights NAME or --weights PATH/model.pt",
            switch="pass --random-init",
        )
    except ConfigError as exc:
        raise ConfigError(f"{command}: {exc}") from None
    what = f"{kind} {name!r}"
    if cfg.get("checkpoint") is not None:
        return cfg, f"{what}: checkpoint {cfg['checkpoint']}"
    chosen = cfg.get("weights")
    if random_init:
        return (
            cfg,
            f"{what}: random initial weights (--random-init): the outputs are not predictions of a trained model",
        )
    if chosen is None:
        chosen = getattr(cls.make_config(cfg), "weights", None)
    if chosen is None:
        return cfg, None
    default = " (its default weights)" if weights is None and config.get("weights") is None else ""
    return cfg, f"{what}: weights {chosen!r}{default}"


@app.command("predict")
def predict_cmd(
    inputs: Annotated[list[Path], typer.Argument(help="Structure files, folders or globs.")],
    encoder: Annotated[str, typer.Option("--encoder", "-e", help="Encoder plugin name.")],
    weights: Annotated[
        str | None,
        typer.Option(
            help="Named weights (see `crystal plugins info ENCODER`), or a checkpoint file such as a "
            "`crystal train` run's model.pt (or its run directory)."
        ),
    ] = None,
    random_init: RandomInitOption = False,
    config: Annotated[
        list[str] | None, typer.Option("--config", "-c", help="Encoder config KEY=VALUE (repeatable).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", "--output", "-o")] = None,
    threads: ThreadsOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Predict properties of structures with an encoder; writes predictions.csv.

    Without --weights the encoder's default weights are used; an encoder without any is refused
    unless --random-init."""
    apply_threads(threads)
    encoder_config, used = trained_config(
        "encoder", encoder, weights, component_config(config), random_init, "crystal predict"
    )
    step: dict[str, Any] = {"id": "predict", "type": "predict", "encoder": encoder, "config": encoder_config}
    if random_init:
        step["random_init"] = True
    shortcut(inputs, [step], [{"type": "csv", "path": "predictions.csv"}], "predict", device, run_dir, quiet)
    if used is not None and not quiet:
        typer.echo(used)
