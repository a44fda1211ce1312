"""Measured powder patterns: readers, writer and resampling onto a simulation grid.

Formats (chosen by extension, or ``fmt=``):

``.xy`` / ``.txt`` / ``.dat``  two columns ``2θ intensity`` (whitespace, comma or semicolon
                                separated; further columns are ignored)
``.xye``                        three columns ``2θ intensity error``
``.csv``                        comma separated with an optional header row; the 2θ and
                                intensity columns are found by name (``2theta``, ``two_theta``,
                                ``angle`` ...; ``intensity``, ``counts`` ...) or are the first two

Lines starting with ``#``, ``!``, ``;``, ``%`` or ``//`` are comments, as is anything after
``#`` on a line; blank lines are skipped; non-numeric lines are accepted only before the
first data line (headers).  Every error is a :class:`PatternError` naming the file, the
line and the field.  2θ must be in degrees, strictly monotonic (decreasing files are
reversed) and inside (0, 180).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from crystal.errors import CrystalError

__all__ = ["FORMATS", "MeasuredPattern", "PatternError", "read_pattern", "resample", "write_pattern"]

FORMATS = ("xy", "xye", "csv")
_EXT = {".xy": "xy", ".txt": "xy", ".dat": "xy", ".xye": "xye", ".csv": "csv"}
_COMMENT = ("#", "!", ";", "%", "//")
_SPLIT = re.compile(r"[\s,;]+")
_TT_NAMES = {"2theta", "two_theta", "twotheta", "2th", "tth", "2θ", "angle", "2theta_deg", "2theta(deg)", "x"}
_I_NAMES = {"intensity", "counts", "i", "y", "int", "yobs", "intensity_counts"}
_E_NAMES = {"error", "errors", "sigma", "esd", "e", "err", "uncertainty"}


class PatternError(CrystalError, ValueError):
    """A measured-pattern file cannot be read; the message names file, line and field."""


@dataclass
class MeasuredPattern:
    """A measured pattern: ``two_theta`` (L,) degrees ascending, ``intensity`` (L,), ``errors`` (L,) or None."""

    two_theta: torch.Tensor
    intensity: torch.Tensor
    errors: torch.Tensor | None = None
    source: str = ""

    def __len__(self) -> int:
        return int(self.two_theta.shape[0])


def _fmt_of(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise PatternError(f"{path}: unknown pattern format {fmt!r}; allowed: {', '.join(FORMATS)}")
        return fmt
    try:
        return _EXT[path.suffix.lower()]
    except KeyError:
        raise PatternError(
            f"{path}: unknown pattern file extension {path.suffix!r}; allowed: {', '.join(sorted(_EXT))} "
            "(or pass the format explicitly)"
        ) from None


def _fields(line: str, fmt: str) -> list[str]:
    body = line.split("#", 1)[0].strip()
    if fmt == "csv":
        return [f.strip() for f in body.split(",")]
    return [f for f in _SPLIT.split(body) if f]


def _number(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v


def _header_columns(names: list[str], path: Path, lineno: int) -> tuple[int, int, int | None]:
    low = [n.strip().strip('"').strip("'").lower().replace(" ", "") for n in names]
    tt = next((i for i, n in enumerate(low) if n in _TT_NAMES or n.startswith("2theta")), None)
    it = next((i for i, n in enumerate(low) if n in _I_NAMES or n.startswith("intensity")), None)
    er = next((i for i, n in enumerate(low) if n in _E_NAMES), None)
    if tt is None and it is None:
        return 0, 1, 2 if len(names) > 2 else None
    if tt is None or it is None:
        missing = "2θ (2theta, two_theta, angle)" if tt is None else "intensity (intensity, counts)"
        raise PatternError(f"{path}, line {lineno}: header {names} has no {missing} column")
    return tt, it, er


def read_pattern(path: str | Path, *, fmt: Literal["xy", "xye", "csv"] | None = None) -> MeasuredPattern:
    """Read a measured pattern (see the module docstring); float64 tensors on the CPU."""
    p = Path(path)
    kind = _fmt_of(p, fmt)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise PatternError(f"{p}: cannot read pattern file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    cols: tuple[int, int, int | None] = (0, 1, 2 if kind == "xye" else None)
    rows: list[tuple[float, float, float | None]] = []
    need = 3 if kind == "xye" else 2
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith(_COMMENT):
            continue
        fields = _fields(stripped, kind)
        if not fields or all(f == "" for f in fields):
            continue
        values = [_number(f) for f in fields]
        if not rows and any(v is None for v in values) and (kind == "csv" or all(v is None for v in values)):
            # a header line (before the first data line)
            if kind == "csv":
                cols = _header_columns(fields, p, lineno)
            continue
        tt_i, in_i, er_i = cols
        width = max(tt_i, in_i, er_i if er_i is not None else 0) + 1
        if len(fields) < max(need, width):
            raise PatternError(
                f"{p}, line {lineno}: expected at least {max(need, width)} fields "
                f"({'2θ, intensity, error' if kind == 'xye' else '2θ, intensity'}), found {len(fields)}: {stripped!r}"
            )
        picked = [(tt_i, "2θ"), (in_i, "intensity")] + ([(er_i, "error")] if er_i is not None else [])
        got: list[float] = []
        for idx, name in picked:
            v = values[idx]
            if v is None or not math.isfinite(v):
                raise PatternError(
                    f"{p}, line {lineno}, field {idx + 1} ({name}): {fields[idx]!r} is not a finite number"
                )
            got.append(v)
        err = got[2] if len(got) > 2 else None
        if err is not None and err < 0:
            raise PatternError(
                f"{p}, line {lineno}, field {er_i + 1 if er_i is not None else 3} (error): negative {err}"
            )
        rows.append((got[0], got[1], err))
    if len(rows) < 2:
        raise PatternError(f"{p}: no data — found {len(rows)} data line(s), need at least 2 (2θ, intensity)")
    tt = torch.tensor([r[0] for r in rows], dtype=torch.float64)
    yi = torch.tensor([r[1] for r in rows], dtype=torch.float64)
    ee = torch.tensor([r[2] for r in rows], dtype=torch.float64) if rows[0][2] is not None else None
    if bool((tt <= 0).any() | (tt >= 180).any()):
        bad = int(torch.nonzero((tt <= 0) | (tt >= 180))[0])
        raise PatternError(f"{p}: 2θ = {float(tt[bad])} at data point {bad + 1} is outside (0, 180) degrees")
    d = torch.diff(tt)
    if bool((d < 0).all()):
        tt, yi = tt.flip(0), yi.flip(0)
        ee = ee.flip(0) if ee is not None else None
    elif not bool((d > 0).all()):
        bad = int(torch.nonzero(d <= 0)[0]) + 1
        raise PatternError(
            f"{p}: 2θ must be strictly increasing; data point {bad + 1} (2θ = {float(tt[bad])}) "
            f"does not exceed the previous one ({float(tt[bad - 1])})"
        )
    return MeasuredPattern(tt, yi, ee, str(p))


def write_pattern(
    path: str | Path,
    two_theta: torch.Tensor | Sequence[float],
    intensity: torch.Tensor | Sequence[float],
    errors: torch.Tensor | Sequence[float] | None = None,
    *,
    comment: str | None = None,
    fmt: Literal["xy", "xye", "csv"] | None = None,
) -> Path:
    """Write a pattern in the format of the extension (``.xy``, ``.xye``, ``.csv``); returns the path."""
    p = Path(path)
    kind = _fmt_of(p, fmt)
    x = torch.as_tensor(two_theta, dtype=torch.float64).flatten().tolist()
    y = torch.as_tensor(intensity, dtype=torch.float64).flatten().tolist()
    e = None if errors is None else torch.as_tensor(errors, dtype=torch.float64).flatten().tolist()
    if len(x) != len(y) or (e is not None and len(e) != len(x)):
        raise PatternError(f"{p}: 2θ, intensity and error columns have different lengths")
    if kind == "xye" and e is None:
        raise PatternError(f"{p}: the .xye format needs an error column")
    lines = [f"# {c}" for c in (comment or "").splitlines()]
    if kind == "csv":
        lines.append("two_theta,intensity" + (",error" if e is not None else ""))
        sep = ","
    else:
        sep = " "
    for i in range(len(x)):
        row = [repr(x[i]), repr(y[i])] + ([repr(e[i])] if e is not None else [])
        lines.append(sep.join(row))
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def resample(
    pattern: MeasuredPattern | tuple[torch.Tensor, torch.Tensor],
    grid: torch.Tensor,
    *,
    normalize: Literal["max", "none"] = "max",
    scale: float = 1.0,
) -> torch.Tensor:
    """Linear interpolation of a pattern onto ``grid`` (G,) (degrees); zero outside the measured range.

    Returns (G,) in ``grid``'s dtype and device, scaled to max ``scale`` when ``normalize="max"``.
    """
    if isinstance(pattern, MeasuredPattern):
        x, y = pattern.two_theta, pattern.intensity
    else:
        x, y = pattern
    x = torch.as_tensor(x, dtype=torch.float64, device=grid.device)
    y = torch.as_tensor(y, dtype=torch.float64, device=grid.device)
    g = grid.to(torch.float64)
    j = torch.searchsorted(x, g).clamp(1, len(x) - 1)
    x0, x1 = x[j - 1], x[j]
    t = ((g - x0) / (x1 - x0)).clamp(0.0, 1.0)
    out = y[j - 1] + t * (y[j] - y[j - 1])
    out = torch.where((g >= x[0]) & (g <= x[-1]), out, torch.zeros_like(out))
    if normalize == "max":
        top = out.max()
        if float(top) > 0:
            out = out * (scale / top)
    return out.to(grid.dtype)
