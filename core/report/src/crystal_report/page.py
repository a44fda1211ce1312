"""``report.html``: one self-contained page per run directory.

Everything is inline (CSS, SVG plots, the viewer's JavaScript, images as ``data:`` URIs); a
Content-Security-Policy forbids the page any network request. Every text that comes from
a file (ids, formulas, reasons, column names, the manifest) is escaped.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import math
import re
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

from crystal_report.rundir import RunData, Table, read_run
from crystal_report.svgplot import PALETTE, histogram, line_plot, scatter
from crystal_report.xrd import Simulator

__all__ = ["build_report", "write_report"]

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1d2330;background:#f4f5f7}
main{max-width:1240px;margin:0 auto;padding:18px 22px 40px}
h1{font-size:22px;margin:4px 0 2px}h2{font-size:17px;margin:26px 0 8px;border-bottom:2px solid #d9dce3;padding-bottom:3px}
.sub{color:#5b6275;font-size:13px}.note{color:#6b4e00;background:#fff6d6;padding:6px 10px;border-radius:4px;margin:6px 0}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.card{background:#fff;border:1px solid #d9dce3;border-radius:6px;padding:8px 14px;min-width:92px}
.card b{display:block;font-size:22px}.card.ok b{color:#1a7f37}.card.failed b{color:#c62828}
.card.filtered b,.card.duplicate b{color:#8a6d00}
table{border-collapse:collapse;background:#fff;font-size:13px}
th,td{border:1px solid #d9dce3;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#e9ecf2}th .unit{display:block;font-weight:normal;color:#4a5366;font-size:11px}
td.num{text-align:right;font-variant-numeric:tabular-nums}tr.top td{background:#eef7ee}
.scroll{overflow-x:auto;max-width:100%}
.grid{display:flex;flex-wrap:wrap;gap:12px}
.grid svg,.cand{background:#fff;border:1px solid #d9dce3;border-radius:6px}
svg text{font:11px system-ui,sans-serif;fill:#1d2330}svg text.t{font-weight:600}
.cand{padding:8px 10px}.cand h3{margin:0 0 4px;font-size:14px}
canvas.xtal{border:1px solid #c5cad6;cursor:grab;display:block;background:#fff}
.legend{display:flex;flex-wrap:wrap;gap:8px;font-size:12px;margin-top:4px}
.legend i{display:inline-block;width:11px;height:11px;border-radius:50%;border:1px solid #555;margin-right:3px;vertical-align:-1px}
pre{background:#fff;border:1px solid #d9dce3;padding:10px;overflow:auto;max-height:520px;font-size:12px}
details summary{cursor:pointer;font-weight:600;margin:6px 0}
#report-errors{color:#b00020}
"""

_ERRORS_JS = (
    "window.__reportErrors=[];window.__reportError=function(m){window.__reportErrors.push(String(m));"
    "var e=document.getElementById('report-errors');if(e){e.textContent=window.__reportErrors.join('\\n');"
    "e.hidden=false;}};window.addEventListener('error',function(e){window.__reportError(e.message||"
    "('could not load '+((e.target&&(e.target.src||e.target.href))||'a resource')));},true);"
    "document.addEventListener('securitypolicyviolation',function(e){window.__reportError("
    "'blocked by the page policy: '+e.blockedURI);});"
)
# positions of the parts, recorded for checks in a headless browser (tests/test_report_browser.py)
_LAYOUT_JS = (
    "(function(){var out={};function rect(sel,key){var e=document.querySelector(sel);if(e){"
    "var r=e.getBoundingClientRect();out[key]=[r.left+window.scrollX,r.top+window.scrollY,r.width,r.height];}}"
    "rect('#ranked-table','table');rect('svg.hist','histogram');rect('svg.xrd','xrd');rect('canvas.xtal','viewer');"
    "rect('svg.parity','parity');rect('svg.curves','curves');rect('#metrics-table','metrics');"
    "document.body.setAttribute('data-layout',JSON.stringify(out));"
    "var e=document.getElementById('report-errors');if(e&&window.__reportErrors.length){"
    "e.textContent=window.__reportErrors.join('\\n');e.hidden=false;}})();"
)
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
_NOT_PLOTTED = {"rank", "converged", "stable"}
_TEXT = {"id", "formula", "split", "status", "step", "reason", "source"}  # never formatted as numbers


def _json_script(data: Any) -> str:
    """JSON that is safe inside ``<script type="application/json">`` (no ``</script>``, no ``<!--``)."""
    return json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _fmt(cell: str, unit: str | None) -> tuple[str, bool]:
    """A table cell: numbers with 6 significant digits (flags as yes/no); whether it is a number."""
    s = (cell or "").strip()
    try:
        v = float(s)
    except ValueError:
        return escape(s), False
    if unit == "bool" and v in (0.0, 1.0):
        return ("yes" if v else "no"), True
    if math.isfinite(v) and v == int(v) and abs(v) < 1e15 and "e" not in s.lower():
        return str(int(v)), True
    return escape(f"{v:.6g}"), True


def _unit_label(run: RunData, column: str, numeric: bool) -> str:
    unit = run.unit(column)
    if unit is None:
        return (
            '<span class="unit" title="no unit recorded for this column">unit ?</span>'
            if numeric
            else '<span class="unit">&nbsp;</span>'
        )
    if unit == "":
        return '<span class="unit" title="no physical unit">–</span>'
    src = escape(run.unit_sources.get(column, ""))
    return f'<span class="unit" title="unit from {src}">{escape(unit)}</span>'


def _sorted_rows(table: Table) -> list[dict[str, str]]:
    if "rank" in table.columns and table.is_numeric("rank"):
        return sorted(table.rows, key=lambda r: float(r.get("rank") or "inf"))
    return list(table.rows)


def _table_html(run: RunData, table: Table, rows: list[dict[str, str]], *, ident: str, highlight: int = 0) -> str:
    hidden = {"source"} if "source" in table.columns else set()
    cols = [c for c in table.columns if c not in hidden]
    numeric = {c: table.is_numeric(c) for c in cols}
    head = "".join(f"<th>{escape(c)}{_unit_label(run, c, numeric[c])}</th>" for c in cols)
    body = []
    for k, r in enumerate(rows):
        cells = []
        for c in cols:
            if c in _TEXT:
                cells.append(f"<td>{escape(r.get(c, ''))}</td>")
                continue
            text, is_num = _fmt(r.get(c, ""), run.unit(c))
            cells.append(f'<td class="num">{text}</td>' if is_num else f"<td>{text}</td>")
        cls = ' class="top"' if k < highlight else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f'<div class="scroll"><table id="{escape(ident)}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _cards(counts: dict[str, int]) -> str:
    order = ["inputs", "ok", "failed", "filtered", "duplicate"]
    keys = [k for k in order if k in counts] + sorted(k for k in counts if k not in order)
    return (
        '<div class="cards">'
        + "".join(f'<div class="card {escape(k)}"><b>{counts[k]}</b>{escape(k)}</div>' for k in keys)
        + "</div>"
    )


def _header(run: RunData, title: str) -> list[str]:
    m = run.manifest or {}
    facts = [f"run directory <code>{escape(str(run.run_dir))}</code>"]
    if m.get("status"):
        facts.append(f"status <b>{escape(str(m['status']))}</b>")
    if m.get("started"):
        facts.append(f"started {escape(str(m['started']))}")
    total = (m.get("timings_s") or {}).get("total")
    if isinstance(total, int | float):
        facts.append(f"{total:.1f} s")
    if m.get("device"):
        facts.append(f"device {escape(str(m.get('device')))} ({escape(str(m.get('device_name', '')))})")
    return [f"<h1>{escape(title)}</h1>", f'<div class="sub">{" · ".join(facts)}</div>']


def _components(run: RunData) -> str:
    plugins = (run.manifest or {}).get("plugins") or []
    if not isinstance(plugins, list) or not plugins:
        return ""
    rows = []
    for p in plugins:
        if not isinstance(p, dict):
            continue
        weights = ", ".join(str(w.get("name", w)) if isinstance(w, dict) else str(w) for w in p.get("weights") or [])
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{escape(str(v))}</td>"
                for v in (
                    p.get("step", ""),
                    p.get("kind", ""),
                    p.get("name", ""),
                    f"{p.get('distribution', '')} {p.get('distribution_version', '')}".strip(),
                    weights or "–",
                )
            )
            + "</tr>"
        )
    head = "<tr><th>step</th><th>kind</th><th>component</th><th>distribution</th><th>weights</th></tr>"
    return f"<h2>Components</h2><table>{head}{''.join(rows)}</table>"


def _ranking_caption(run: RunData, table: Table, shown: int, total: int) -> str:
    rank = run.rank_step
    if rank:
        order = "descending" if rank.get("descending") else "ascending"
        by = str(rank.get("by", "?"))
        unit = run.unit(by)
        how = f"ranked by <b>{escape(by)}</b>" + (f" ({escape(unit)})" if unit else "") + f", {order}"
        if rank.get("top"):
            how += f"; the rank step kept the best {int(rank['top'])}"
    elif "rank" in table.columns:
        how = "in the order of its <b>rank</b> column"
    else:
        how = "in input order (the pipeline has no rank step)"
    more = f"; first {shown} of {total} rows, all in <code>{escape(table.path.name)}</code>" if shown < total else ""
    return f'<p class="sub">{how}{more}. Units under each column name.</p>'


def _atoms_in(row: dict[str, str]) -> float | None:
    """Atoms in the cell: the ``num_atoms`` column, else the sum of the formula's counts (``Na4Cl4`` → 8)."""
    try:
        return float(row["num_atoms"])
    except (KeyError, ValueError):
        pass
    parts = re.findall(r"([A-Z][a-z]?)(\d*\.?\d*)", row.get("formula") or "")
    total = sum(float(n) if n else 1.0 for _, n in parts)
    return total or None


def _volume_column(run: RunData, table: Table) -> tuple[str, list[float], str] | None:
    """A volume distribution: a volume column, else cell volumes from the structure files (per atom with num_atoms)."""
    for col in ("volume_per_atom", "volume"):
        if col in table.columns and table.numeric(col):
            return col, table.numeric(col), run.unit(col) or ""
    from crystal_report.volumes import cell_volumes

    volumes = cell_volumes(run)
    if not volumes:
        return None
    from crystal_report.structures import safe_name

    natoms: dict[str, float] = {}
    for t in (table, run.ranked):
        for r in t.rows if t is not None else []:
            n = _atoms_in(r)
            if n:
                natoms[r.get("id", "")] = natoms[safe_name(r.get("id", ""))] = n
    per_atom: list[float] = []
    for ident, v in volumes.items():
        if ident not in natoms:
            per_atom = []
            break
        per_atom.append(v / natoms[ident])
    if per_atom:
        return "volume_per_atom", per_atom, "Å^3/atom (from the structure files)"
    return "volume", list(volumes.values()), "Å^3 per cell (from the structure files)"


def _distributions(run: RunData) -> list[str]:
    if run.results is not None and "status" in run.results.columns:
        rows = [r for r in run.results.rows if r.get("status") != "failed"]
        table = Table(run.results.path, run.results.columns, rows, run.results.units)
        what = f"every crystal that was computed ({len(rows)} rows of results.csv that did not fail)"
    elif run.ranked is not None:
        table, what = run.ranked, f"the {len(run.ranked.rows)} rows of {run.ranked.path.name}"
    else:
        return []
    plots: list[str] = []
    done: set[str] = set()
    if "energy_per_atom" in table.columns:
        plots.append(histogram(table.numeric("energy_per_atom"), "energy_per_atom", run.unit("energy_per_atom")))
        done.add("energy_per_atom")
    vol = _volume_column(run, table)
    if vol is not None:
        plots.append(histogram(vol[1], vol[0], vol[2], PALETTE[2]))
        done.add(vol[0])
    else:
        plots.append("")
    for col in table.columns:
        if len(plots) >= 14:
            break
        if col in done or col in _NOT_PLOTTED or col.endswith("_index") or run.unit(col) == "bool":
            continue
        if col in ("id", "status", "step", "reason", "source", "formula") or not table.is_numeric(col):
            continue
        plots.append(histogram(table.numeric(col), col, run.unit(col), PALETTE[(len(plots) + 2) % len(PALETTE)]))
    plots = [p for p in plots if p]
    if not plots:
        return []
    if table.truncated:
        what += f" (the first {len(table.rows)} rows only)"
    return [
        "<h2>Distributions</h2>",
        f'<p class="sub">Of {escape(what)}.</p>',
        f'<div class="grid">{"".join(plots)}</div>',
    ]


def _candidates(run: RunData, table: Table, rows: list[dict[str, str]], top: int, xrd: Simulator) -> list[str]:
    from crystal_report.structures import find_structures, viewer_data
    from crystal_report.xrd import simulate_patterns

    ids = [r.get("id", "") for r in rows[:top] if r.get("id")]
    if not ids:
        return []
    out = ["<h2>Top candidates</h2>"]
    structures, notes = find_structures(run, ids)
    ordered = {i: structures[i] for i in ids if i in structures}
    missing = [i for i in ids if i not in structures]
    if missing:
        notes.append(
            f"no structure file in the run directory holds {', '.join(missing)} "
            "(add a cif or extxyz sink to the pipeline to see them here)"
        )
    if ordered:
        patterns, desc, xnotes = simulate_patterns(ordered, xrd)
        notes += xnotes
        if patterns:
            plot = line_plot(
                [(p.id, p.two_theta, p.intensity) for p in patterns],
                "simulated powder XRD (Cu Kα)",
                "2θ (degrees)",
                "intensity (strongest peak = 1, offset)",
                offset=1.1,
                yticks=False,
                cls="xrd",
            )
            out += [f'<div class="grid">{plot}</div>', f'<p class="sub">XRD simulated with {escape(desc)}.</p>']
        cards = []
        by_id = {r.get("id"): r for r in rows}
        for k, ident in enumerate(ordered):
            data = viewer_data(ordered[ident])
            row = by_id.get(ident, {})
            facts = []
            for col in ("formula", "energy_per_atom", "e_above_hull", "formation_energy_per_atom"):
                if row.get(col):
                    text, _ = _fmt(row[col], run.unit(col))
                    unit = run.unit(col)
                    facts.append(f"{escape(col)} {text}" + (f" {escape(unit)}" if unit and unit != "bool" else ""))
            legend = "".join(
                f'<span><i style="background:{c}"></i>{escape(el)}</span>'
                for el, c in zip(data["elements"], data["colors"])
            )
            trunc = '<div class="sub">first 2000 atoms shown</div>' if data["truncated"] else ""
            cards.append(
                f'<div class="cand"><h3>{k + 1}. {escape(ident)}</h3><div class="sub">{" · ".join(facts)}</div>'
                f'<canvas class="xtal" width="300" height="300" data-src="xtal-{k}" '
                f'aria-label="3-D view of {escape(ident)}"></canvas>'
                f'<script type="application/json" id="xtal-{k}">{_json_script(data)}</script>'
                f'<div class="legend">{legend}</div>{trunc}</div>'
            )
        out += [
            '<p class="sub">Drag a structure to rotate it, scroll to zoom; the lines are the unit cell.</p>',
            f'<div class="grid">{"".join(cards)}</div>',
        ]
    out += [f'<p class="note">{escape(n)}</p>' for n in notes]
    return out


def _failures(run: RunData) -> list[str]:
    f = run.failures
    if f is None or not f.rows:
        return []
    groups: dict[tuple[str, str], int] = {}
    for r in f.rows:
        reason = re.sub(r"\d+(\.\d+)?", "N", (r.get("reason") or "").split(":")[0])[:120]
        key = (r.get("step") or "", reason)
        groups[key] = groups.get(key, 0) + 1
    rows = "".join(
        f"<tr><td>{escape(step)}</td><td>{escape(reason)}</td><td class='num'>{n}</td></tr>"
        for (step, reason), n in sorted(groups.items(), key=lambda kv: -kv[1])[:20]
    )
    shown = f.rows[:20]
    detail = "".join(
        f"<tr><td>{escape(r.get('id', ''))}</td><td>{escape(r.get('step', ''))}</td><td>{escape(r.get('reason', ''))}</td></tr>"
        for r in shown
    )
    return [
        f"<h2>Failures ({len(f.rows)})</h2>",
        f"<table><tr><th>step</th><th>reason</th><th>crystals</th></tr>{rows}</table>",
        f"<details><summary>first {len(shown)} failures (all in failures.csv)</summary>"
        f"<table><tr><th>id</th><th>step</th><th>reason</th></tr>{detail}</table></details>",
    ]


def _json_block(name: str, data: Any, open_: bool = False) -> str:
    text = json.dumps(data, indent=2, default=str)
    return f"<details{' open' if open_ else ''}><summary>{escape(name)}</summary><pre>{escape(text)}</pre></details>"


def _metric_unit(run: RunData, name: str) -> str | None:
    low = name.lower()
    if "mev_per_atom" in low:
        return "meV/atom"
    if low.endswith(("accuracy", "_r2", "_auc", "_f1")) or low in ("loss",):
        return ""
    for suffix, power in (("_mae", 1), ("_rmse", 1), ("_mse", 2)):
        if low.endswith(suffix):
            base = name[: -len(suffix)]
            unit = run.unit(base) or {"forces": "eV/Å", "stress": "eV/Å^3", "energy": "eV"}.get(base)
            if unit is None:
                return None
            return unit if power == 1 or not unit else f"({unit})^2"
    return None


def _training(run: RunData, top: int) -> list[str]:
    s = run.train_summary or {}
    out: list[str] = []
    facts = []
    for key, label in (("sizes", "sizes"), ("epochs", "epochs"), ("best_epoch", "best epoch"), ("device", "device")):
        if key in s:
            v = s[key]
            facts.append(
                f"{label}: " + (", ".join(f"{k} {n}" for k, n in v.items()) if isinstance(v, dict) else str(v))
            )
    if "train_time_s" in s:
        facts.append(f"training time {s['train_time_s']} s")
    if "parameters" in s:
        facts.append(f"{s['parameters']} parameters")
    if facts:
        out.append(f'<p class="sub">{escape(" · ".join(facts))}</p>')
    metrics = s.get("metrics")
    if isinstance(metrics, dict) and metrics:
        names = list(dict.fromkeys(k for v in metrics.values() if isinstance(v, dict) for k in v))
        head = "".join(
            f"<th>{escape(n)}"
            + (
                f'<span class="unit">{escape(u)}</span>'
                if (u := _metric_unit(run, n))
                else ('<span class="unit">–</span>' if u == "" else '<span class="unit">unit ?</span>')
            )
            + "</th>"
            for n in names
        )
        body = "".join(
            f"<tr><td>{escape(str(split))}</td>"
            + "".join(f"<td class='num'>{_fmt(str(vals.get(n, '')), None)[0]}</td>" for n in names)
            + "</tr>"
            for split, vals in metrics.items()
            if isinstance(vals, dict)
        )
        out += ["<h2>Metrics</h2>", f'<table id="metrics-table"><tr><th>split</th>{head}</tr>{body}</table>']
    plots = []
    p = run.predictions
    if p is not None and p.rows:
        splits = {r.get("split", "") for r in p.rows}
        split = next((x for x in ("test", "val", "train") if x in splits), p.rows[0].get("split", ""))
        held_out = [r for r in p.rows if r.get("split", "") == split]  # the split the trainer reports
        for col in p.columns:
            if not col.endswith("_true") or f"{col[:-5]}_pred" not in p.columns:
                continue
            name = col[:-5]
            pairs = []
            for r in held_out:
                try:
                    t, v = float(r[col]), float(r[f"{name}_pred"])
                except (KeyError, ValueError):
                    continue
                if name == "energy" and "num_atoms" in p.columns:
                    try:
                        n = float(r["num_atoms"])
                        t, v = t / n, v / n
                    except (ValueError, ZeroDivisionError):
                        continue
                pairs.append((t, v))
            if not pairs:
                continue
            unit = "eV/atom" if name == "energy" and "num_atoms" in p.columns else run.unit(col)
            label = "energy per atom" if unit == "eV/atom" and name == "energy" else name
            mae = sum(abs(a - b) for a, b in pairs) / len(pairs)
            u = f" {unit}" if unit else ""
            plots.append(
                scatter(
                    [a for a, _ in pairs],
                    [b for _, b in pairs],
                    f"{label}: MAE {mae:.4g}{u} (n={len(pairs)})",
                    f"true {label}" + (f" ({unit})" if unit else ""),
                    f"predicted {label}" + (f" ({unit})" if unit else ""),
                    parity=True,
                    cls="parity",
                )
            )
        plots = [x for x in plots if x]
        if plots:
            where = f" ({escape(split)} split)" if split else ""
            out += [f"<h2>Parity{where}</h2>", f'<div class="grid">{"".join(plots)}</div>']
    if run.parity_png is not None:
        data = base64.b64encode(run.parity_png.read_bytes()).decode("ascii")
        heading = "<h2>Parity</h2>" if not plots else ""
        out.append(
            f"{heading}<details{' open' if not plots else ''}><summary>the trainer's parity plot (parity.png)</summary>"
            f'<img alt="parity plot" style="max-width:100%;background:#fff" src="data:image/png;base64,{data}"></details>'
        )
    m = run.metrics
    if m is not None and m.rows and "epoch" in m.columns:
        epochs = m.numeric("epoch")
        losses = [c for c in m.columns if c.endswith("loss") and m.is_numeric(c)]
        curves = []
        series = [(c, *_pairs(m, "epoch", c)) for c in losses]
        if series:
            curves.append(line_plot(series, "losses", "epoch", "loss", log_y=True, cls="curves"))
        others = [c for c in m.columns if c.startswith("val_") and not c.endswith("loss") and m.is_numeric(c)]
        if others:
            curves.append(
                line_plot([(c, *_pairs(m, "epoch", c)) for c in others[:6]], "validation metrics", "epoch", "value")
            )
        if "lr" in m.columns and m.is_numeric("lr"):
            curves.append(line_plot([("lr", *_pairs(m, "epoch", "lr"))], "learning rate", "epoch", "lr"))
        curves = [c for c in curves if c]
        if curves and epochs:
            out += [
                "<h2>Learning curves</h2>",
                f'<p class="sub">{len(m.rows)} epochs, from metrics.csv.</p>',
                f'<div class="grid">{"".join(curves)}</div>',
            ]
    if p is not None and p.rows:
        out += [
            "<h2>Predictions</h2>",
            f'<p class="sub">first {min(top * 10, len(p.rows))} of {len(p.rows)} rows, all in predictions.csv.</p>',
            _table_html(run, p, p.rows[: top * 10], ident="predictions-table"),
        ]
    return out


def _pairs(t: Table, xcol: str, ycol: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in t.rows:
        try:
            x, y = float(r[xcol]), float(r[ycol])
        except (KeyError, ValueError):
            continue
        xs.append(x)
        ys.append(y)
    return xs, ys


def build_report(run_dir: str | Path, *, top: int = 3, max_rows: int = 50, xrd: Simulator = "auto") -> str:
    """The HTML of ``run_dir``'s report: ``top`` candidates get an XRD pattern and a 3-D view,
    the ranked table shows ``max_rows`` rows; ``xrd`` chooses the XRD simulator
    (``auto``: crystal-xrd when installed, else pymatgen)."""
    run = read_run(run_dir)
    body: list[str] = []
    if run.kind == "train":
        s = run.train_summary or {}
        name = s.get("encoder") or s.get("potential") or s.get("model") or run.run_dir.name
        body += _header(run, f"crystal training report: {name}")
        body += _training(run, max(top, 2))
        failures = _failures(run)
        body += failures
        if run.train_config is not None:
            body += ["<h2>Configuration</h2>", _json_block("train-config.json", run.train_config)]
        if run.train_summary is not None:
            body.append(_json_block("summary.json", run.train_summary))
    else:
        name = str((run.manifest or {}).get("pipeline") or run.run_dir.name)
        body += _header(run, f"crystal run report: {name}")
        counts = run.counts
        if counts:
            body += ["<h2>Summary</h2>", _cards(counts)]
        ranked = run.ranked
        rows: list[dict[str, str]] = []
        if ranked is not None:
            rows = _sorted_rows(ranked)
            shown = rows[:max_rows]
            body += [
                f"<h2>{'Ranked candidates' if run.rank_step or 'rank' in ranked.columns else 'Candidates'} ({len(rows)})</h2>",
                _ranking_caption(run, ranked, len(shown), len(rows)),
                _table_html(run, ranked, shown, ident="ranked-table", highlight=top),
            ]
        else:
            body.append('<p class="note">no results table in this directory (results.csv, summary.csv)</p>')
        body += _distributions(run)
        if ranked is not None and top > 0:
            body += _candidates(run, ranked, rows, top, xrd)
        body += _failures(run)
        body.append(_components(run))
        if run.manifest is not None:
            body += ["<h2>Manifest</h2>", _json_block("manifest.json", run.manifest)]
    if run.notes:
        body += ["<h2>Notes</h2>", *[f'<p class="note">{escape(n)}</p>' for n in run.notes]]
    version = _version()
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    body.append(
        f'<p class="sub">written by crystal-report {escape(version)} at {stamp}; rebuild with '
        f"<code>crystal report {escape(str(run.run_dir))}</code></p>"
    )
    viewer = resources.files("crystal_report").joinpath("viewer.js").read_text(encoding="utf-8")
    title = escape(f"{name} - crystal report")
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>'
        f"<style>{_CSS}</style><script>{_ERRORS_JS}</script></head>"
        f'<body><main><pre id="report-errors" hidden></pre>{"".join(body)}</main>'
        f"<script>{viewer}</script><script>{_LAYOUT_JS}</script></body></html>\n"
    )


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("crystal-report")
    except Exception:
        return "?"


def write_report(
    run_dir: str | Path,
    output: str | Path | None = None,
    *,
    top: int = 3,
    max_rows: int = 50,
    xrd: Simulator = "auto",
) -> Path:
    """Build the report of ``run_dir`` and write it atomically to ``output`` (default
    ``RUN_DIR/report.html``; a directory gets ``report.html`` inside). Returns the file."""
    from crystal.io import atomic_write

    html = build_report(run_dir, top=top, max_rows=max_rows, xrd=xrd)
    target = Path(run_dir) / "report.html" if output is None else Path(output)
    if target.suffix.lower() not in (".html", ".htm"):
        target = target / "report.html"
    with atomic_write(target, encoding="utf-8") as fh:
        fh.write(html)
    return target
