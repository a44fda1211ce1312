"""Make throw-away installed distributions (a package + ``*.dist-info``) on ``sys.path``.

Used to test discovery exactly as pip-installed plugins are seen: through
``importlib.metadata`` entry points, with no mocking.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path


def make_dist(
    root: Path,
    dist: str,
    entry_points: dict[str, dict[str, str]],
    files: dict[str, str] | None = None,
    version: str = "1.0",
) -> Path:
    """Create ``root/<dist>.dist-info`` and the given package files under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = []
    for group, eps in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{k} = {v}" for k, v in eps.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for rel, text in (files or {}).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def forget_modules(prefix: str) -> None:
    for name in [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]:
        del sys.modules[name]
