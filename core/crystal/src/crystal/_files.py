"""File modes: files crystal writes through a temporary file get the mode a plain ``open`` would.

``tempfile.mkstemp`` creates files ``0600`` whatever the umask, so results renamed from a
temporary file would be unreadable to collaborators; :func:`chmod_like_open` gives them
``0666 & ~umask`` (``0644`` under the usual umask 022), as ``open(path, "w")`` does.
"""

from __future__ import annotations

import os
import threading

__all__ = ["chmod_like_open", "current_umask"]

_lock = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux ``/proc``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _lock:  # elsewhere: set and restore (the umask is process-wide; serialise our own use)
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def chmod_like_open(fd: int) -> None:
    """Give the open file ``fd`` the mode ``open(path, "w")`` would have: ``0o666 & ~umask``."""
    os.fchmod(fd, 0o666 & ~current_umask())
