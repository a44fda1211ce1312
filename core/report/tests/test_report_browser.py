"""report.html in a real browser: Debian's headless Chromium loads the report of a real
pipeline run with no console message and no script error, the 3-D viewers draw, and the
screenshot shows the table and the plots (pixels, not only a file).

Skipped, with the reason, when Chromium is not installed (``apt-get install chromium``;
``make install-test`` installs it when it can).
"""

from __future__ import annotations

import html as _html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from crystal_report.svgplot import PALETTE

WIDTH, HEIGHT = 1280, 3200


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("headless browser test: Debian's package 'chromium' is not installed (apt-get install chromium)")


def _load(page: Path, tmp_path: Path) -> tuple[str, str, Path]:
    """``(dumped DOM, stderr, screenshot)`` of ``page`` in headless Chromium."""
    shot = tmp_path / "shot.png"
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        f"--screenshot={shot}",
        "--dump-dom",
        f"--window-size={WIDTH},{HEIGHT}",
        page.resolve().as_uri(),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr[-3000:]
    assert shot.is_file(), res.stderr[-3000:]
    return res.stdout, res.stderr, shot


def _near(pixels: np.ndarray, colour: str, tol: int = 40) -> int:
    """How many pixels (an (N, 3) array) are within ``tol`` per channel of ``colour``."""
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels - rgb) <= tol).all(axis=1).sum())


def _region(img, rect: list[float]) -> np.ndarray:
    x, y, w, h = (round(v) for v in rect)
    assert y + h <= img.height, f"region {rect} lies below the screenshot ({img.width}x{img.height})"
    return np.asarray(img.crop((x, y, x + w, y + h)), dtype=int).reshape(-1, 3)


def test_report_in_headless_chromium(pipeline_run: Path, tmp_path: Path) -> None:
    from PIL import Image

    page = pipeline_run / "report.html"  # written by the pipeline_event hook at the end of the run
    dom, stderr, shot = _load(page, tmp_path)
    # no console output at all (errors, warnings or logs) and no script error caught by the page
    console = [line for line in stderr.splitlines() if ":CONSOLE" in line]
    assert not console, "\n".join(console)
    errors = re.search(r'<pre id="report-errors"[^>]*>(.*?)</pre>', dom, re.S)
    assert errors is not None and errors.group(1).strip() == "", errors.group(1) if errors else dom[:2000]
    # the viewer's script ran: every canvas drew its atoms (NaCl 8, Si 8, CsCl 2)
    drawn = sorted(int(n) for n in re.findall(r'data-rendered="(\d+)"', dom))
    assert drawn == [2, 8, 8]
    layout = json.loads(_html.unescape(re.search(r'data-layout="([^"]*)"', dom).group(1)))  # type: ignore[union-attr]
    assert {"table", "histogram", "xrd", "viewer"} <= set(layout)

    img = Image.open(shot).convert("RGB")
    assert img.size == (WIDTH, HEIGHT)
    # the table: dark text on a light background, many rows of it
    table = _region(img, layout["table"])
    dark = int((table.sum(axis=1) < 250).sum())
    assert dark > 0.02 * len(table), f"table region looks blank ({dark} dark pixels of {len(table)})"
    # the histograms: filled bars in the palette's colours
    hist = _region(img, layout["histogram"])
    assert sum(_near(hist, c, 8) for c in PALETTE) > 2000, "no histogram bars in the screenshot"
    # the XRD plot: one line per top candidate, each in its own colour
    xrd = _region(img, layout["xrd"])
    colours = [c for c in PALETTE[:3] if _near(xrd, c, 60) > 20]
    assert len(colours) == 3, f"XRD lines found in {colours} only"
    # the viewer: atoms drawn in their element colours (Cs: Jmol #57178f; Cl: #1ff01f), cell edges dark
    view = _region(img, layout["viewer"])
    assert _near(view, "#1ff01f", 70) > 50 and _near(view, "#57178f", 70) > 50
    assert int((view.sum(axis=1) < 300).sum()) > 100, "no cell edges drawn"
