"""Small self-written SVG plots (histogram, scatter with a parity line, line plots).

No plotting library: the report must be built in the process that ran the pipeline, in a
few milliseconds, and render the same in every browser. Every text is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

__all__ = ["PALETTE", "histogram", "line_plot", "nice_ticks", "scatter"]

#: series colours (the test looks for them in the screenshot)
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")

W, H = 420, 280
LEFT, RIGHT, TOP, BOTTOM = 58, 14, 28, 44


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e5 or a < 1e-3:
        return f"{v:.2g}"
    return f"{v:.6g}" if a >= 1 else f"{v:.4g}"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks = []
    k = 0
    while start + k * step <= hi + 1e-9 * step and k < 50:
        ticks.append(round(start + k * step, 12))
        k += 1
    return ticks


def _range(values: Sequence[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12 * max(1.0, abs(lo)):
        pad = 0.5 if lo == 0 else abs(lo) * 0.05
        return lo - pad, hi + pad
    return lo, hi


class _Frame:
    """Maps data to pixels and draws axes, ticks, labels and title."""

    def __init__(self, xr: tuple[float, float], yr: tuple[float, float], title: str, xlabel: str, ylabel: str):
        self.x0, self.x1 = xr
        self.y0, self.y1 = yr
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel

    def px(self, x: float) -> float:
        return LEFT + (x - self.x0) / (self.x1 - self.x0) * (W - LEFT - RIGHT)

    def py(self, y: float) -> float:
        return H - BOTTOM - (y - self.y0) / (self.y1 - self.y0) * (H - TOP - BOTTOM)

    def axes(self, yticks: bool = True) -> list[str]:
        out = [
            f'<rect x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" height="{H - TOP - BOTTOM}" fill="#ffffff" stroke="#888" />'
        ]
        for t in nice_ticks(self.x0, self.x1):
            x = self.px(t)
            out.append(f'<line x1="{x:.1f}" y1="{H - BOTTOM}" x2="{x:.1f}" y2="{H - BOTTOM + 4}" stroke="#555" />')
            out.append(f'<text x="{x:.1f}" y="{H - BOTTOM + 16}" text-anchor="middle">{escape(_fmt(t))}</text>')
        if yticks:
            for t in nice_ticks(self.y0, self.y1):
                y = self.py(t)
                out.append(f'<line x1="{LEFT - 4}" y1="{y:.1f}" x2="{LEFT}" y2="{y:.1f}" stroke="#555" />')
                out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(_fmt(t))}</text>')
        out.append(
            f'<text x="{(LEFT + W - RIGHT) / 2:.1f}" y="{H - 8}" text-anchor="middle">{escape(self.xlabel)}</text>'
        )
        out.append(
            f'<text x="14" y="{(TOP + H - BOTTOM) / 2:.1f}" text-anchor="middle" '
            f'transform="rotate(-90 14 {(TOP + H - BOTTOM) / 2:.1f})">{escape(self.ylabel)}</text>'
        )
        out.append(f'<text x="{W / 2:.1f}" y="17" text-anchor="middle" class="t">{escape(self.title)}</text>')
        return out


def _svg(body: list[str], label: str, cls: str) -> str:
    return (
        f'<svg class="plot {escape(cls)}" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">' + "".join(body) + "</svg>"
    )


def _label(name: str, unit: str | None) -> str:
    return f"{name} ({unit})" if unit else name


def histogram(values: Sequence[float], name: str, unit: str | None, color: str = PALETTE[0]) -> str:
    """An SVG histogram of ``values`` (√n bins, 5 to 40)."""
    vals = [float(v) for v in values if math.isfinite(v)]
    if not vals:
        return ""
    lo, hi = _range(vals)
    nbins = max(5, min(40, math.ceil(math.sqrt(len(vals)))))
    width = (hi - lo) / nbins
    counts = [0] * nbins
    for v in vals:
        counts[min(nbins - 1, max(0, int((v - lo) / width)))] += 1
    f = _Frame((lo, hi), (0, max(counts) * 1.08), f"{name} (n={len(vals)})", _label(name, unit), "crystals")
    body = f.axes()
    for k, c in enumerate(counts):
        if c:
            x, x2 = f.px(lo + k * width), f.px(lo + (k + 1) * width)
            y = f.py(c)
            body.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(x2 - x - 1, 1):.1f}" height="{f.py(0) - y:.1f}" fill="{color}" />'
            )
    return _svg(body, f"histogram of {name}", "hist")


def scatter(
    x: Sequence[float],
    y: Sequence[float],
    title: str,
    xlabel: str,
    ylabel: str,
    *,
    parity: bool = False,
    color: str = PALETTE[0],
    cls: str = "scatter",
) -> str:
    """An SVG scatter plot; with ``parity`` equal axes and the y = x line."""
    pts = [(float(a), float(b)) for a, b in zip(x, y) if math.isfinite(a) and math.isfinite(b)]
    if not pts:
        return ""
    xr = _range([p[0] for p in pts])
    yr = _range([p[1] for p in pts])
    if parity:
        xr = yr = (min(xr[0], yr[0]), max(xr[1], yr[1]))
    f = _Frame(xr, yr, title, xlabel, ylabel)
    body = f.axes()
    if parity:
        body.append(
            f'<line x1="{f.px(xr[0]):.1f}" y1="{f.py(xr[0]):.1f}" x2="{f.px(xr[1]):.1f}" y2="{f.py(xr[1]):.1f}" stroke="#999" />'
        )
    step = max(1, len(pts) // 5000)
    for a, b in pts[::step]:
        body.append(f'<circle cx="{f.px(a):.1f}" cy="{f.py(b):.1f}" r="2.6" fill="{color}" fill-opacity="0.7" />')
    return _svg(body, title, cls)


def line_plot(
    series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    title: str,
    xlabel: str,
    ylabel: str,
    *,
    offset: float = 0.0,
    yticks: bool = True,
    log_y: bool = False,
    cls: str = "lines",
) -> str:
    """Lines, one per ``(label, x, y)`` series, in :data:`PALETTE` order, with a legend;
    ``offset`` stacks series vertically (XRD patterns); ``log_y`` plots log10(y) (losses)."""
    clean = []
    for k, (label, xs, ys) in enumerate(series):
        pts = [(float(a), float(b)) for a, b in zip(xs, ys) if math.isfinite(a) and math.isfinite(b)]
        if log_y:
            pts = [(a, math.log10(b)) for a, b in pts if b > 0]
        if pts:
            clean.append((label, [(a, b + k * offset) for a, b in pts], PALETTE[k % len(PALETTE)]))
    if not clean:
        return ""
    xr = _range([p[0] for _, pts, _ in clean for p in pts])
    yr = _range([p[1] for _, pts, _ in clean for p in pts])
    yr = (yr[0], yr[1] + (yr[1] - yr[0]) * 0.12 * len(clean))  # room for the legend
    f = _Frame(xr, yr, title, xlabel, ("log10 " + ylabel) if log_y else ylabel)
    body = f.axes(yticks=yticks)
    for k, (label, pts, color) in enumerate(clean):
        d = " ".join(f"{f.px(a):.1f},{f.py(b):.1f}" for a, b in pts)
        body.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="1.4" />')
        ly = TOP + 14 + 14 * k
        body.append(
            f'<line x1="{W - RIGHT - 150}" y1="{ly - 4}" x2="{W - RIGHT - 132}" y2="{ly - 4}" stroke="{color}" stroke-width="3" />'
        )
        body.append(f'<text x="{W - RIGHT - 128}" y="{ly}">{escape(label[:28])}</text>')
    return _svg(body, title, cls)
