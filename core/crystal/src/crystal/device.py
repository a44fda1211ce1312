"""Device selection: ``"auto" | "cpu" | "cuda" | "cuda:N"`` everywhere."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from crystal.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["DEVICE_PATTERN", "DeviceSpec", "resolve_device"]

DeviceSpec = Literal["auto", "cpu", "cuda"] | str
DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn a device spec into a :class:`torch.device`.

    ``"auto"`` (or ``None``) picks ``cuda`` when available, else ``cpu``. Asking for a
    CUDA device that is not present raises :class:`~crystal.errors.ConfigError`.
    """
    import torch

    if isinstance(device, torch.device):
        spec = str(device)
    else:
        spec = "auto" if device is None else str(device).strip().lower()
    if not re.match(DEVICE_PATTERN, spec):
        raise ConfigError(f"device {device!r} is not one of 'auto', 'cpu', 'cuda', 'cuda:N'")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {spec!r} requested but CUDA is not available on this machine")
        index = int(spec.split(":")[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device {spec!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return torch.device(spec)
