"""Reading a run directory: whatever of its files exist, nothing else.

A pipeline run (``crystal run``, ``relax``, ``predict``) holds ``manifest.json``,
``results.csv``, ``failures.csv`` and its sinks (``summary.csv``, ``predictions.csv``, CIF
folders, extxyz files); a training run (``crystal train``, ``train-potential``) holds
``train-config.json``, ``summary.json``, ``metrics.csv``, ``predictions.csv``,
``parity.png`` and ``failures.csv``. Units come from ``*.units.csv`` (rows ``column,unit``)
and ``*.units.json`` sidecars, a ``units``
entry of the manifest, headers written as ``name (unit)`` or ``name [unit]``, a units row,
the ``register_metrics`` hook and the fixed columns of the pipeline steps, in that order.
A missing or unreadable file is a note on the page, never an error.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["KNOWN_UNITS", "RunData", "Table", "read_run", "read_table"]

#: units of the columns the pipeline steps add (crystal_pipeline.columns), used when nothing else says
KNOWN_UNITS: dict[str, str] = {
    "rank": "",
    "id": "",
    "status": "",
    "step": "",
    "reason": "",
    "source": "",
    "formula": "",
    "num_atoms": "atoms",
    "energy": "eV",
    "energy_per_atom": "eV/atom",
    "converged": "bool",
    "relax_steps": "",
    "md_temperature_mean": "K",
    "md_energy_drift_per_atom": "eV/atom",
    "formation_energy_per_atom": "eV/atom",
    "e_above_hull": "eV/atom",
    "stable": "bool",
    "volume": "Å^3",
    "volume_per_atom": "Å^3/atom",
    "density": "g/cm^3",
    "min_distance": "Å",
    "split": "",
    "epoch": "",
}
_HEADER_UNIT = re.compile(r"^(?P<name>.*\S)\s*(?:\((?P<a>[^()]*)\)|\[(?P<b>[^\[\]]*)\])$")
_MAX_ROWS = 200_000  # rows read from one table (the page shows far fewer; distributions use these)


@dataclass
class Table:
    """A CSV table: column names (units stripped from the header), rows as strings, units found in the file."""

    path: Path
    columns: list[str]
    rows: list[dict[str, str]]
    units: dict[str, str] = field(default_factory=dict)
    truncated: bool = False

    def numeric(self, column: str) -> list[float]:
        """The finite numbers of ``column`` (cells that are not numbers are skipped)."""
        out = []
        for r in self.rows:
            v = _number(r.get(column, ""))
            if v is not None and math.isfinite(v):
                out.append(v)
        return out

    def is_numeric(self, column: str) -> bool:
        """Every non-empty cell of ``column`` is a number, and there is at least one."""
        seen = False
        for r in self.rows:
            cell = (r.get(column) or "").strip()
            if not cell:
                continue
            if _number(cell) is None:
                return False
            seen = True
        return seen


@dataclass
class RunData:
    """What a run directory holds (each field ``None``/empty when the file is absent)."""

    run_dir: Path
    kind: Literal["pipeline", "train", "unknown"]
    manifest: dict[str, Any] | None = None
    train_config: dict[str, Any] | None = None
    train_summary: dict[str, Any] | None = None
    results: Table | None = None
    ranked: Table | None = None  # the table the run ranked (a csv sink, or results.csv's ok rows)
    failures: Table | None = None
    predictions: Table | None = None
    metrics: Table | None = None  # training: one row per epoch
    parity_png: Path | None = None
    units: dict[str, str] = field(default_factory=dict)  # column -> unit
    unit_sources: dict[str, str] = field(default_factory=dict)  # column -> where the unit came from
    notes: list[str] = field(default_factory=list)  # files that could not be read, and why

    def unit(self, column: str) -> str | None:
        """The unit of ``column`` (``""``: none), or ``None`` when nothing says."""
        return self.units.get(column)

    @property
    def rank_step(self) -> dict[str, Any] | None:
        """The pipeline's last rank step config (``by``, ``descending``, ``top``), if any."""
        steps = ((self.manifest or {}).get("config") or {}).get("steps") or []
        ranks = [s for s in steps if isinstance(s, dict) and s.get("type") == "rank"]
        return ranks[-1] if ranks else None

    @property
    def counts(self) -> dict[str, int]:
        """Inputs per status: the manifest's counts, else counted from results.csv."""
        counts = (self.manifest or {}).get("counts")
        if isinstance(counts, dict) and counts:
            return {str(k): int(v) for k, v in counts.items() if isinstance(v, int | float)}
        if self.results is not None and "status" in self.results.columns:
            out: dict[str, int] = {"inputs": len(self.results.rows)}
            for r in self.results.rows:
                s = r.get("status") or "?"
                out[s] = out.get(s, 0) + 1
            return out
        return {}


def _number(cell: str | None) -> float | None:
    if cell is None:
        return None
    cell = cell.strip()
    if not cell:
        return None
    try:
        return float(cell)
    except ValueError:
        return None


def split_header(name: str) -> tuple[str, str | None]:
    """``"energy_per_atom (eV/atom)"`` → ``("energy_per_atom", "eV/atom")``; a bare name → ``(name, None)``."""
    m = _HEADER_UNIT.match(name.strip())
    if not m:
        return name.strip(), None
    unit = m.group("a") if m.group("a") is not None else m.group("b")
    return m.group("name"), (unit or "").strip()


def read_table(path: Path) -> Table:
    """Read a CSV: headers ``name (unit)`` are split; a first row whose first cell is ``unit``,
    ``units`` or ``#units`` is read as the units of the columns, not as data."""
    with path.open(newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            return Table(path, [], [])
        columns, units = [], {}
        for raw in header:
            name, unit = split_header(raw)
            columns.append(name)
            if unit is not None:
                units[name] = unit
        rows: list[dict[str, str]] = []
        truncated = False
        for k, cells in enumerate(reader):
            if k == 0 and cells and cells[0].strip().lstrip("#").strip().lower() in ("unit", "units"):
                for name, cell in zip(columns[1:], cells[1:]):
                    if cell.strip() or name not in units:
                        units[name] = cell.strip()
                continue
            if len(rows) >= _MAX_ROWS:
                truncated = True
                break
            rows.append({c: (cells[i] if i < len(cells) else "") for i, c in enumerate(columns)})
    return Table(path, columns, rows, units, truncated)


def _read_json(path: Path, notes: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        notes.append(f"{path.name}: not readable ({exc})")
        return None


def _try_table(path: Path, notes: list[str]) -> Table | None:
    if not path.is_file():
        return None
    try:
        return read_table(path)
    except (OSError, csv.Error) as exc:
        notes.append(f"{path.name}: not readable ({exc})")
        return None


def _unit_maps(data: Any) -> dict[str, str]:
    """Column → unit from the shapes a units record may have: ``{col: unit}``,
    ``{"units": {...}}``, ``{"columns": {col: {"unit": u}}}``, ``[{"name"/"column": c, "unit": u}]``,
    or ``{file: {col: unit}}``."""
    out: dict[str, str] = {}
    if isinstance(data, list):
        for item in data:
            if isinstance(item, dict) and isinstance(item.get("unit"), str | type(None)):
                name = item.get("name", item.get("column"))
                if isinstance(name, str):
                    out[name] = item.get("unit") or ""
        return out
    if not isinstance(data, dict):
        return out
    for key in ("units", "columns"):
        if key in data and isinstance(data[key], dict | list):
            out.update(_unit_maps(data[key]))
    for k, v in data.items():
        if k in ("units", "columns", "meaning", "description", "_meaning"):
            continue
        if isinstance(v, str) and isinstance(k, str):
            out[k] = v
        elif isinstance(v, dict) and isinstance(v.get("unit"), str):
            out[k] = v["unit"]
        elif isinstance(v, dict) and k.endswith((".csv", ".json")):
            out.update(_unit_maps(v))
    return out


def _registered_metric_units() -> dict[str, str]:
    """Units of the metrics registered through the ``register_metrics`` hook (no import of heavy code)."""
    from crystal.hooks import plugin_manager
    from crystal.hookspecs import MetricSpec

    found: dict[str, str] = {}

    def register(spec: MetricSpec) -> None:
        found[spec.name] = spec.unit

    with contextlib.suppress(Exception):  # a broken plugin's metrics must not stop the report
        plugin_manager().hook.register_metrics(register=register)
    return found


def _collect_units(run: RunData, tables: list[Table]) -> None:
    def add(mapping: dict[str, str], source: str) -> None:
        for col, unit in mapping.items():
            if col not in run.units:
                run.units[col] = unit
                run.unit_sources[col] = source

    for sidecar in sorted(run.run_dir.glob("*.units.csv")):  # the pipeline's sidecars: rows column,unit
        try:
            with sidecar.open(newline="", encoding="utf-8") as fh:
                rows = list(csv.reader(fh))
        except (OSError, csv.Error) as exc:
            run.notes.append(f"{sidecar.name}: not readable ({exc})")
            continue
        start = 1 if rows and [c.strip().lower() for c in rows[0][:2]] == ["column", "unit"] else 0
        add({r[0]: (r[1] if len(r) > 1 else "").strip() for r in rows[start:] if r}, sidecar.name)
    for sidecar in sorted(run.run_dir.glob("*.units.json")):
        data = _read_json(sidecar, run.notes)
        if data is not None:
            add(_unit_maps(data), sidecar.name)
    if run.manifest and "units" in run.manifest:
        add(_unit_maps(run.manifest["units"]), "manifest.json")
    for t in tables:
        add(t.units, t.path.name)
    if run.train_summary:
        targets = run.train_summary.get("targets") or []
        for spec in targets if isinstance(targets, list) else []:
            if isinstance(spec, dict) and isinstance(spec.get("name"), str) and isinstance(spec.get("unit"), str):
                name, unit = spec["name"], spec["unit"]
                add({name: unit, f"{name}_true": unit, f"{name}_pred": unit}, "summary.json (targets)")
    if run.kind == "train":
        add({"energy_true": "eV", "energy_pred": "eV"}, "crystal-train (potential predictions)")
    add(_registered_metric_units(), "register_metrics hook")
    add(KNOWN_UNITS, "crystal pipeline steps")


def _structure_sinks(manifest: dict[str, Any] | None) -> list[dict[str, Any]]:
    sinks = ((manifest or {}).get("config") or {}).get("sinks") or []
    return [s for s in sinks if isinstance(s, dict)]


def read_run(run_dir: str | Path) -> RunData:
    """Everything a report shows, from the files of ``run_dir`` (raises ``ConfigError`` when it is no directory)."""
    from crystal.errors import ConfigError

    root = Path(run_dir)
    if not root.is_dir():
        raise ConfigError(f"{root}: not a run directory (it does not exist or is not a folder)")
    notes: list[str] = []
    manifest = _read_json(root / "manifest.json", notes) if (root / "manifest.json").is_file() else None
    train_config = _read_json(root / "train-config.json", notes) if (root / "train-config.json").is_file() else None
    train_summary = None
    if (root / "summary.json").is_file() and (
        train_config is not None or (root / "metrics.csv").is_file() or (root / "model-card.md").is_file()
    ):
        train_summary = _read_json(root / "summary.json", notes)
    if isinstance(manifest, dict) and "config" in manifest:
        kind: Literal["pipeline", "train", "unknown"] = "pipeline"
    elif train_config is not None or train_summary is not None or (root / "metrics.csv").is_file():
        kind = "train"
    else:
        kind = "unknown"
    run = RunData(
        root,
        kind,
        manifest=manifest if isinstance(manifest, dict) else None,
        train_config=train_config if isinstance(train_config, dict) else None,
        train_summary=train_summary if isinstance(train_summary, dict) else None,
        notes=notes,
    )
    run.results = _try_table(root / "results.csv", notes)
    run.failures = _try_table(root / "failures.csv", notes)
    run.predictions = _try_table(root / "predictions.csv", notes)
    if kind == "train":
        run.metrics = _try_table(root / "metrics.csv", notes)
        parity = root / "parity.png"
        run.parity_png = parity if parity.is_file() else None
    else:
        for sink in _structure_sinks(run.manifest):
            if sink.get("type") == "csv" and isinstance(sink.get("path"), str):
                table = _try_table(root / sink["path"], notes)
                if table is not None:
                    run.ranked = table
                    break
        if run.ranked is None:
            for name in ("summary.csv", "predictions.csv"):
                table = _try_table(root / name, notes)
                if table is not None:
                    run.ranked = table
                    break
        if run.ranked is None and run.results is not None:
            ok = [r for r in run.results.rows if r.get("status", "ok") == "ok"]
            run.ranked = Table(run.results.path, run.results.columns, ok, run.results.units, run.results.truncated)
    tables = [t for t in (run.ranked, run.results, run.predictions, run.metrics, run.failures) if t is not None]
    _collect_units(run, tables)
    return run
