"""``crystal run`` and ``crystal validate``: pipelines from TOML (or the embedded default)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer

from crystal.errors import ConfigError
from crystal_cli._common import ProgressListener, ThreadsOption, apply_threads, print_summary, run_interruptible
from crystal_cli.app import DEFAULT_PIPELINE, app


def _pipeline_path(pipeline: Path | None) -> tuple[Path | None, str]:
    if pipeline is not None:
        return pipeline, str(pipeline)
    return None, f"<default pipeline {DEFAULT_PIPELINE}>"


def _load(pipeline: Path | None, overrides: list[str]) -> Any:
    from crystal_pipeline import Pipeline
    from crystal_pipeline.config import apply_overrides, parse_pipeline_config

    if pipeline is not None:
        return Pipeline.from_toml(pipeline, overrides)
    import tomllib

    text = resources.files("crystal_cli").joinpath(DEFAULT_PIPELINE).read_text(encoding="utf-8")
    origin = f"<default pipeline {DEFAULT_PIPELINE}>"
    data = apply_overrides(tomllib.loads(text), overrides, origin)
    return Pipeline(parse_pipeline_config(data, origin), origin=origin)


def _with_executor(
    p: Any, executor: str | None, address: str | None, workers: int | None, gpus_per_worker: float | None
) -> Any:
    """``p`` with the executor flags of ``crystal run`` applied over its ``[pipeline]`` table."""
    from crystal_pipeline.config import parse_pipeline_config

    ray_flags = {"address": address, "workers": workers, "gpus_per_worker": gpus_per_worker}
    given = {k: v for k, v in ray_flags.items() if v is not None}
    if executor is None and not given:
        return p
    data = p.config.model_dump(mode="json")
    if executor is not None:
        data["pipeline"]["executor"] = executor
    if given and data["pipeline"]["executor"] != "ray":
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ConfigError(f"{flags}: only with the ray executor (--executor ray or [pipeline] executor = 'ray')")
    data["pipeline"]["ray"].update(given)
    p.config = parse_pipeline_config(data, p.origin)
    return p


@app.command("validate")
def validate(
    pipeline: Annotated[
        Path | None, typer.Argument(help="Pipeline TOML (default: the embedded default pipeline).")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a field: STEP.field=value (TOML value).")
    ] = None,
) -> None:
    """Validate a pipeline (schema, plugins, component configs) without running it."""
    p = _load(pipeline, set_ or [])
    p.check()
    cfg = p.config
    typer.echo(
        f"{p.origin}: valid — source {cfg.source.type}, {len(cfg.steps)} step(s) "
        f"({', '.join(s.id for s in cfg.steps) or 'none'}), {len(cfg.sinks)} sink(s), "
        f"executor {cfg.pipeline.executor}"
    )


@app.command("run")
def run(
    pipeline: Annotated[
        Path | None,
        typer.Argument(
            help="Pipeline TOML (default: the embedded default discovery pipeline; with --resume: the "
            "interrupted run's own pipeline, from its manifest)."
        ),
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a field: STEP.field=value (TOML value).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N (overrides the pipeline's).")] = None,
    run_dir: Annotated[
        Path | None, typer.Option("--run-dir", "--output", "-o", help="Run directory (default runs/<name>-<time>).")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Resume the interrupted run in --run-dir.")] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress output; print only the run directory.")
    ] = False,
    executor: Annotated[
        str | None,
        typer.Option(
            help="local (this process) or ray (map stages on a Ray cluster; pip install 'crystal-pipeline[ray]'); "
            "overrides [pipeline] executor."
        ),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(help="ray: the cluster to join (auto, ray://host:10001, host:6379); default: a local Ray."),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="ray: worker actors (default: cluster CPUs, or GPUs / --gpus-per-worker).")
    ] = None,
    gpus_per_worker: Annotated[
        float | None, typer.Option(min=0, help="ray: GPUs reserved by each worker (Ray num_gpus).")
    ] = None,
    threads: ThreadsOption = None,
) -> None:
    """Run a pipeline: source → steps → sinks, into a run directory with a manifest."""
    import os

    explicit = threads is not None or bool(os.environ.get("CRYSTAL_NUM_THREADS", "").strip())
    apply_threads(threads)
    if not explicit:  # ray workers keep Ray's per-actor default (cpus_per_worker), not this process's idle cores
        os.environ.pop("CRYSTAL_NUM_THREADS", None)
    if resume and run_dir is None:
        raise ConfigError("--resume needs --run-dir DIR (the interrupted run's directory)")
    if resume and pipeline is None and not set_:  # `crystal run --resume --run-dir DIR`: the run's own pipeline
        from crystal_pipeline import Pipeline

        p = Pipeline.from_run_dir(run_dir)  # type: ignore[arg-type]  # checked above
    else:
        p = _load(pipeline, set_ or [])
    if executor is not None and executor not in ("local", "ray"):
        raise ConfigError(f"--executor {executor!r}: must be 'local' or 'ray'")
    p = _with_executor(p, executor, address, workers, gpus_per_worker)
    listeners = [] if quiet else [ProgressListener()]
    result = run_interruptible(p, run_dir, listeners, resume=resume, device=device)
    if quiet:
        typer.echo(str(result.run_dir))
        return
    print_summary(result)
