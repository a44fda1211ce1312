"""Which columns every step adds, and their units: one registry for validation, tables and manifests.

A pipeline's crystals carry per-crystal numeric columns (``CrystalBatch.crystal_properties``);
sources add none, map steps add theirs, global steps add none. This module knows, for every
step type, the columns it adds and their units **without running it**:

================  ===================================================================
step              columns (unit)
================  ===================================================================
``relax``         ``energy`` (eV), ``energy_per_atom`` (eV/atom), ``converged`` (bool),
                  ``relax_steps`` (FIRE steps, no unit)
``md``            ``energy`` (eV), ``energy_per_atom`` (eV/atom), ``md_temperature_mean`` (K),
                  ``md_energy_drift_per_atom`` (eV/atom, NVE only)
``metrics``       each metric's name, in its ``MetricSpec.unit`` (``register_metrics`` hook)
``predict``       the encoder's structure-level targets in their ``TargetSpec.unit``
                  (``NAME_k`` per component of a vector target or class of a multi-class
                  one); known from the encoder's config for a new model, else from the
                  loaded encoder
``characterize``  ``HEAD_prob`` and ``HEAD_index`` per head of the characterizer (no unit),
                  known only once it runs
``hull``          ``formation_energy_per_atom`` (eV/atom), ``e_above_hull`` (eV/atom),
                  ``stable`` (bool)
================  ===================================================================

Unit strings: ``"eV/atom"`` etc. as everywhere in crystal; ``"bool"`` for a flag written as
1/0; ``""`` for a column without a physical unit: text, counts, indices, probabilities, or a
column whose producer declares no unit.

:func:`column_problems` checks every column a ``filter``, ``rank`` or ``csv`` sink names
against the columns available at that point of the pipeline; :func:`column_units` gives the
unit of every column of a run's tables.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BASE_UNITS",
    "HULL_COLUMNS",
    "MD_COLUMNS",
    "RELAX_COLUMNS",
    "UNITS_MEANING",
    "ColumnPlan",
    "column_plan",
    "column_problems",
    "column_units",
    "label_with_unit",
]

UNITS_MEANING = (
    "unit of each column; 'bool' = a 1/0 flag; empty = no physical unit (text, a count, an index, "
    "a probability) or none declared by the step that adds the column"
)

#: the fixed columns of results.csv and csv sinks
BASE_UNITS: dict[str, str] = {
    "rank": "",
    "id": "",
    "status": "",
    "step": "",
    "reason": "",
    "source": "",
    "formula": "",
    "num_atoms": "atoms",
}
RELAX_COLUMNS: dict[str, str] = {"energy": "eV", "energy_per_atom": "eV/atom", "converged": "bool", "relax_steps": ""}
MD_COLUMNS: dict[str, str] = {"energy": "eV", "energy_per_atom": "eV/atom", "md_temperature_mean": "K"}
MD_NVE_COLUMNS: dict[str, str] = {"md_energy_drift_per_atom": "eV/atom"}
HULL_COLUMNS: dict[str, str] = {"formation_energy_per_atom": "eV/atom", "e_above_hull": "eV/atom", "stable": "bool"}
#: steps that add no column
_NO_COLUMNS = frozenset({"validate", "filter", "rank", "deduplicate", "evaluate"})


def label_with_unit(column: str, unit: str) -> str:
    """``"energy_per_atom (eV/atom)"``, or the bare name for a column without a unit."""
    return f"{column} ({unit})" if unit else column


# ----------------------------------------------------------------------------- per step
def _target_columns(specs: Any) -> dict[str, str]:
    """Columns of an encoder's structure-level targets (what the predict step writes)."""
    out: dict[str, str] = {}
    for s in specs:
        get = s.get if isinstance(s, Mapping) else lambda k, d=None, _s=s: getattr(_s, k, d)
        if get("level", "structure") != "structure":
            continue  # per-atom targets go to atom_properties, not to the tables
        name, unit = str(get("name")), str(get("unit", "") or "")
        if get("task", "regression") == "classification":
            n = int(get("num_classes") or 2)
            width = 1 if n == 2 else n
            unit = ""  # class probabilities
        else:
            width = int(get("dim", 1) or 1)
        if width == 1:
            out[name] = unit
        else:
            out.update({f"{name}_{k}": unit for k in range(width)})
    return out


def encoder_columns(component: Any) -> dict[str, str]:
    """The columns a loaded encoder's predictions become."""
    target_set = getattr(component, "target_set", None)
    if target_set is not None:
        return _target_columns(target_set.specs)
    return dict.fromkeys(component.targets, "")


def static_encoder_columns(cls: Any, config: Any) -> dict[str, str] | None:
    """The columns of an encoder known from its class and validated config alone: a trainable
    encoder that loads no weights predicts its config's ``targets``; ``None`` otherwise."""
    from crystal.trainable import TrainableEncoder

    if not (isinstance(cls, type) and issubclass(cls, TrainableEncoder)):
        return None
    if getattr(config, "weights", None) is not None or getattr(config, "checkpoint", None) is not None:
        return None
    if cls.default_weights is not None:
        return None
    return _target_columns(getattr(config, "targets", ()))


def step_columns(
    step: Any, *, metric_units: Mapping[str, str] | None = None, encoder: Mapping[str, str] | None = None
) -> dict[str, str] | None:
    """Columns (name -> unit) that ``step`` adds; ``None`` when they are known only once it runs
    (a characterizer's heads, an encoder not yet loaded: pass ``encoder``, its columns)."""
    kind = step.type
    if kind in _NO_COLUMNS:
        return {}
    if kind == "relax":
        return dict(RELAX_COLUMNS)
    if kind == "md":
        return {**MD_COLUMNS, **(MD_NVE_COLUMNS if step.ensemble == "nve" else {})}
    if kind == "metrics":
        units = metric_units or {}
        return {n: units.get(n, "") for n in step.names}
    if kind == "hull":
        return dict(HULL_COLUMNS)
    if kind == "predict":
        return dict(encoder) if encoder is not None else None
    return None  # characterize, and step types this module does not know


# ----------------------------------------------------------------------------- the plan
@dataclass
class ColumnPlan:
    """Columns available before each step and after the last one."""

    before: list[dict[str, str]] = field(default_factory=list)
    """``before[i]``: name -> unit of the columns the crystals reaching step ``i`` have."""
    open_before: list[list[str]] = field(default_factory=list)
    """``open_before[i]``: ids of earlier steps whose columns are not known before running."""
    after: dict[str, str] = field(default_factory=dict)
    open_after: list[str] = field(default_factory=list)
    added_by: dict[str, str] = field(default_factory=dict)
    """column -> id of the (last) step that adds it."""


def column_plan(
    steps: list[Any],
    *,
    metric_units: Mapping[str, str] | None = None,
    encoders: Mapping[str, Mapping[str, str]] | None = None,
) -> ColumnPlan:
    """What columns exist where: ``encoders`` maps a predict step id to its columns when known
    (:func:`static_encoder_columns` or :func:`encoder_columns`)."""
    plan = ColumnPlan()
    cols: dict[str, str] = {}
    open_ids: list[str] = []
    for step in steps:
        plan.before.append(dict(cols))
        plan.open_before.append(list(open_ids))
        added = step_columns(step, metric_units=metric_units, encoder=(encoders or {}).get(step.id))
        if added is None:
            open_ids.append(step.id)
            continue
        cols.update(added)
        plan.added_by.update(dict.fromkeys(added, step.id))
    plan.after, plan.open_after = cols, open_ids
    return plan


def _unknown(where: str, field_name: str, name: str, cols: Mapping[str, str], added_by: Mapping[str, str]) -> str:
    close = difflib.get_close_matches(name, list(cols), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    listed = ", ".join(f"{c} ({added_by[c]})" if c in added_by else c for c in sorted(cols)) or "none"
    return (
        f"{where}: field {field_name!r}: unknown column {name!r}{hint} "
        f"(columns available at this point, with the step that adds them: {listed})"
    )


def column_problems(
    config: Any,
    origin: str,
    *,
    metric_units: Mapping[str, str] | None = None,
    encoders: Mapping[str, Mapping[str, str]] | None = None,
    resolve: Callable[[str], Mapping[str, str] | None] | None = None,
) -> list[str]:
    """Every column named by a ``filter`` (``where.column``), a ``rank`` (``by``) or a csv sink
    (``columns``) that the pipeline will not have at that point, as error lines naming the
    step or sink, the field, the column, a did-you-mean and the available columns.

    A name that only a step with columns unknown before running (a characterizer; an encoder
    whose targets come from weights) could add is looked up with ``resolve(step_id)`` (which
    may load that component) and otherwise not reported."""
    encoders = dict(encoders or {})
    plan = column_plan(config.steps, metric_units=metric_units, encoders=encoders)

    def needs(names: list[str], cols: Mapping[str, str], open_ids: list[str]) -> list[str]:
        nonlocal plan
        missing = [n for n in names if n not in cols]
        if not missing or not open_ids or resolve is None:
            return missing
        changed = False
        for sid in open_ids:  # load what can be loaded, once, then plan again
            if sid not in encoders:
                found = resolve(sid)
                if found is not None:
                    encoders[sid] = found
                    changed = True
        if changed:
            plan = column_plan(config.steps, metric_units=metric_units, encoders=encoders)
        return missing

    problems: list[str] = []
    for i, step in enumerate(config.steps):
        refs: list[tuple[str, str]] = []
        if step.type == "filter":
            refs = [(f"where[{k}].column", c.column) for k, c in enumerate(step.where)]
        elif step.type == "rank":
            refs = [("by", step.by)]
        if not refs:
            continue
        if needs([n for _, n in refs], plan.before[i], plan.open_before[i]):
            cols, open_ids = plan.before[i], plan.open_before[i]
            for fname, name in refs:
                if name not in cols and not open_ids:
                    problems.append(_unknown(f"{origin}: step {step.id!r}", fname, name, cols, plan.added_by))
    for j, sink in enumerate(config.sinks):
        names = list(getattr(sink, "columns", None) or [])
        if sink.type != "csv" or not names:
            continue
        if needs(names, plan.after, plan.open_after):
            for name in names:
                if name not in plan.after and not plan.open_after:
                    where = f"{origin}: sinks[{j}] (csv {sink.path!r})"
                    problems.append(_unknown(where, "columns", name, plan.after, plan.added_by))
    return problems


# ----------------------------------------------------------------------------- units
def column_units(
    config: Any,
    columns: list[str],
    *,
    plugins: list[dict[str, Any]] | None = None,
    metric_units: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The unit of each of ``columns`` (``""`` when it has none, see :data:`UNITS_MEANING`):
    fixed columns, then what the steps add, the encoders' targets read from the run's plugin
    records (``manifest["plugins"]``: the loaded config, with a checkpoint's targets)."""
    encoders: dict[str, dict[str, str]] = {}
    for rec in plugins or []:
        if rec.get("kind") == "encoder":
            targets = (rec.get("config") or {}).get("targets")
            encoders[str(rec.get("step"))] = _target_columns(targets) if targets else {}
    plan = column_plan(config.steps, metric_units=metric_units, encoders=encoders)
    known = {**BASE_UNITS, **plan.after}
    return {c: known.get(c, "") for c in columns}


def registered_metric_units() -> dict[str, str]:
    """name -> unit of every metric registered through the ``register_metrics`` hook."""
    from crystal.registries import metrics

    return {n: m.unit for n, m in metrics().items()}
