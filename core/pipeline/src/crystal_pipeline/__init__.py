"""Pipelines: a source, steps of any kind, sinks — from TOML, a dict, or Python."""

from __future__ import annotations

from crystal_pipeline.config import PipelineConfig, load_pipeline_config, parse_pipeline_config
from crystal_pipeline.runner import Pipeline, RunResult, load_pipeline, run_pipeline

__all__ = [
    "Pipeline",
    "PipelineConfig",
    "RunResult",
    "load_pipeline",
    "load_pipeline_config",
    "parse_pipeline_config",
    "run_pipeline",
]
