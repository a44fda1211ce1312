"""Device selection: ``"auto" | "cpu" | "cuda" | "cuda:N"`` everywhere."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Literal

from crystal.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["DEVICE_PATTERN", "DeviceSpec", "default_num_threads", "resolve_device", "set_num_threads"]

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


def default_num_threads() -> int:
    """CPU threads for torch when the user did not say: ``$CRYSTAL_NUM_THREADS`` if set,
    else the cores this process may use minus the load already on them (the 1-minute load
    average, rounded), at least 1.

    torch's own default (one thread per core) thrashes on a busy machine: on a loaded
    2-core box the XRD simulator ran at 0.5x pymatgen with 2 threads and 10x with 1.
    """
    env = os.environ.get("CRYSTAL_NUM_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ConfigError(f"CRYSTAL_NUM_THREADS={env!r} is not a positive integer") from None
        if n < 1:
            raise ConfigError(f"CRYSTAL_NUM_THREADS={env!r} is not a positive integer")
        return n
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        cores = os.cpu_count() or 1
    try:
        busy = round(os.getloadavg()[0])
    except (AttributeError, OSError):
        busy = 0
    return max(1, cores - busy)


def set_num_threads(threads: int | None = None) -> int:
    """Set torch's intra-op CPU threads to ``threads`` (or :func:`default_num_threads`) and
    return the number set. Raises :class:`~crystal.errors.ConfigError` for ``threads < 1``."""
    import torch

    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be a positive integer, got {threads}")
    n = default_num_threads() if threads is None else int(threads)
    torch.set_num_threads(n)
    return n
