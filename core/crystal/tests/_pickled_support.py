"""A module whose classes a test pickles whole (like mace-torch's ``.model`` files) and its converter."""

from __future__ import annotations

import os
from typing import Any

import torch


class TinyNet(torch.nn.Module):
    """A pickled-module stand-in: hyper-parameters as attributes, weights as parameters."""

    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.width = width
        self.linear = torch.nn.Linear(width, 1)


def to_payload(obj: Any) -> dict[str, Any]:
    """The converter: hyper-parameters + state dict, weights-only."""
    return {"hparams": {"width": int(obj.width)}, "state_dict": dict(obj.state_dict())}


def not_weights_only(obj: Any) -> Any:
    """A broken converter: returns the module itself."""
    return obj


class Exploit:
    """Unpickling this runs ``os.system``: it must never happen unless trusted."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))
