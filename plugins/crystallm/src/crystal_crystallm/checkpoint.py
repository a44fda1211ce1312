"""CrystaLLM checkpoints: ``torch.save`` of a plain dict, loaded with ``weights_only=True``.

Layout (format ``crystal-crystallm/1``)::

    {"format": "crystal-crystallm/1",
     "config": <GPTConfig as JSON text>,
     "vocab": [token names in id order],      # must equal crystal_crystallm.vocab.TOKENS
     "state_dict": {name: tensor},
     "meta": {"data": ..., "epochs": ..., ...}}   # free-form, JSON-compatible
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from crystal.errors import ConfigError, WeightsError
from crystal_crystallm.model import CrystaLLMNet, GPTConfig
from crystal_crystallm.vocab import TOKENS

__all__ = ["FORMAT", "load_checkpoint", "load_named_weights", "net_from_checkpoint", "save_checkpoint"]

FORMAT = "crystal-crystallm/1"


def save_checkpoint(net: CrystaLLMNet, path: str | Path, *, meta: dict[str, Any] | None = None) -> str:
    """Write ``net`` (float32 weights) to ``path``; returns the file's sha256."""
    from crystal.weights import sha256sum

    state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in net.state_dict().items()}
    state.pop("lm_head.weight", None)  # tied to wte.weight, restored on load
    obj = {
        "format": FORMAT,
        "config": net.cfg.model_dump_json(),
        "vocab": list(TOKENS),
        "state_dict": state,
        "meta": json.loads(json.dumps(meta or {})),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return sha256sum(path)


def net_from_checkpoint(obj: Any, where: str) -> tuple[CrystaLLMNet, dict[str, Any]]:
    """Build the network from a loaded checkpoint dict; ``where`` names it in errors."""
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        got = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise WeightsError(f"crystallm: {where} is not a CrystaLLM checkpoint (format {got!r}, expected {FORMAT!r})")
    if list(obj.get("vocab", [])) != list(TOKENS):
        raise WeightsError(f"crystallm: {where} was trained with a different token vocabulary")
    try:
        cfg = GPTConfig.model_validate_json(obj["config"])
    except Exception as exc:
        raise WeightsError(f"crystallm: {where} has an invalid architecture config: {exc}") from None
    net = CrystaLLMNet(cfg)
    state = dict(obj["state_dict"])
    state.setdefault("lm_head.weight", state.get("wte.weight"))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"crystallm: {where} does not fit its declared architecture: {exc}") from None
    net.eval()
    return net, dict(obj.get("meta") or {})


def load_checkpoint(path: str | Path, sha256: str | None = None) -> tuple[CrystaLLMNet, dict[str, Any], str]:
    """Verify (when ``sha256`` is given) and load a checkpoint file; returns ``(net, meta, sha256)``."""
    from crystal.weights import sha256sum

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"crystallm: checkpoint {str(path)!r} does not exist")
    digest = sha256sum(path)
    if sha256 is not None and digest != sha256.lower():
        raise WeightsError(f"crystallm: checkpoint {str(path)!r} has sha256 {digest}, expected {sha256}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors are deliberately not trusted
        raise WeightsError(f"crystallm: cannot load {str(path)!r} weights-only: {exc}") from None
    net, meta = net_from_checkpoint(obj, repr(str(path)))
    return net, meta, digest


def load_named_weights(name: str) -> tuple[CrystaLLMNet, dict[str, Any], str]:
    """Shipped weights by name (sha256-verified by :mod:`crystal.weights`); ``(net, meta, sha256)``."""
    from crystal.weights import find_weights, load_state_dict

    obj = load_state_dict(name)
    net, meta = net_from_checkpoint(obj, f"weights {name!r}")
    return net, meta, find_weights(name).sha256
