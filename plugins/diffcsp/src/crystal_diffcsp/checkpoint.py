"""Saving and loading DiffCSP weights (``torch.load(..., weights_only=True)`` only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from crystal.errors import WeightsError
from crystal_diffcsp.diffusion import DiffCSP, DiffCSPModelConfig

__all__ = ["FORMAT", "load_checkpoint", "model_from_state", "save_checkpoint"]

FORMAT = "crystal-diffcsp/1"


def save_checkpoint(model: DiffCSP, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``{"format", "config" (JSON), "state_dict", "metadata" (JSON)}`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    torch.save(
        {
            "format": FORMAT,
            "config": model.config.model_dump_json(),
            "state_dict": state,
            "metadata": json.dumps(metadata or {}),
        },
        path,
    )
    return path


def model_from_state(state: Any, where: str) -> tuple[DiffCSP, dict[str, Any]]:
    """Build the model from a loaded checkpoint dict; errors name ``where``."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        fmt = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise WeightsError(f"{where}: not a {FORMAT} checkpoint (format {fmt!r})")
    try:
        config = DiffCSPModelConfig.model_validate_json(state["config"])
    except (ValidationError, KeyError, TypeError) as exc:
        raise WeightsError(f"{where}: invalid model config in checkpoint: {exc}") from None
    model = DiffCSP(config)
    try:
        model.load_state_dict(state["state_dict"], strict=True)
    except (RuntimeError, KeyError) as exc:
        raise WeightsError(f"{where}: state_dict does not fit the model config: {exc}") from None
    model.eval()
    return model, json.loads(state.get("metadata") or "{}")


def load_checkpoint(path: str | Path) -> tuple[DiffCSP, dict[str, Any]]:
    """Load a checkpoint file written by :func:`save_checkpoint` (weights-only unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"diffcsp checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors are not trusted
        raise WeightsError(f"{path} is not a weights-only checkpoint: {exc}") from None
    return model_from_state(state, str(path))
