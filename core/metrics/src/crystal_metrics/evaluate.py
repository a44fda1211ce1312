"""Evaluate generated structures read from files (``crystal evaluate``, the pipeline step).

:func:`evaluate` reads the reference files with :func:`crystal.io.read_structures`, pairs
generated samples with test structures for crystal structure prediction
(:func:`group_samples`), runs :func:`~crystal_metrics.csp_metrics`,
:func:`~crystal_metrics.generation_metrics` and optionally
:func:`~crystal_metrics.sun_metrics`, and returns one JSON-ready report;
:func:`write_report` writes it atomically and :func:`summary_rows` gives the headline
numbers for a table.

**Pairing samples with test structures (CSP).** ``group_by="id"``: a sample belongs to the
test structure whose id it carries, either exactly or followed by ``:N``, ``#N``, ``/N`` or
``_N`` (``mp-1234``, ``mp-1234:3``, ``mp-1234#3`` -- the pipeline suffixes repeated ids with
``#N``); when the file's id does not name one, the structure's own ``id`` or ``material_id``
property is tried (extxyz frames keep ``Atoms.info["id"]`` there). ``group_by="composition"``: every test structure gets the samples with its reduced
formula, in file order. ``"auto"`` (default) uses ids when every sample's id names a test
structure, compositions otherwise.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from crystal.errors import ConfigError

if TYPE_CHECKING:
    from pymatgen.core import Structure

    from crystal.components import Potential

__all__ = ["TASKS", "evaluate", "group_samples", "read_reference", "summary_rows", "write_report"]

TASKS = ("csp", "generation")
GroupBy = Literal["auto", "id", "composition"]
_SUFFIX = re.compile(r"^(.*)[:#/_](\d+)$")

Progress = Callable[[str, int, int], None]


def read_reference(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], what: str, limit: int | None = None
) -> tuple[list[str], list[Structure], list[dict[str, str]]]:
    """``(ids, structures, failures)`` from files; an empty result is a :class:`ConfigError` naming ``what``."""
    from crystal.io import read_structures

    res = read_structures(paths, limit=limit)
    if not res.structures:
        reasons = "; ".join(f"{f.id}: {f.reason}" for f in res.failures[:3])
        raise ConfigError(f"{what}: no readable structure in {paths}" + (f" ({reasons})" if reasons else ""))
    failures = [{"id": f.id, "reason": f.reason, "source": f.source} for f in res.failures]
    return list(res.ids), list(res.structures), failures


def group_samples(
    gen_ids: Sequence[str],
    generated: Sequence[Structure],
    ref_ids: Sequence[str],
    reference: Sequence[Structure],
    group_by: GroupBy = "auto",
) -> tuple[list[list[Structure]], list[str], str]:
    """``(samples per test structure, ids of unassigned samples, grouping used)``."""
    index = {r: k for k, r in enumerate(ref_ids)}

    def owner(ident: str) -> int | None:
        if ident in index:
            return index[ident]
        m = _SUFFIX.match(ident)
        return index.get(m.group(1)) if m else None

    def owner_of(ident: str, s: Structure) -> int | None:
        found = owner(ident)
        for key in ("id", "material_id"):  # e.g. extxyz frames carry their id in Atoms.info
            if found is None and isinstance(s.properties.get(key), str):
                found = owner(s.properties[key])
        return found

    owners = [owner_of(i, s) for i, s in zip(gen_ids, generated, strict=True)]
    if group_by == "auto":
        group_by = "id" if owners and all(o is not None for o in owners) else "composition"
    groups: list[list[Structure]] = [[] for _ in reference]
    unassigned: list[str] = []
    if group_by == "id":
        for ident, s, o in zip(gen_ids, generated, owners, strict=True):
            if o is None:
                unassigned.append(ident)
            else:
                groups[o].append(s)
    elif group_by == "composition":
        by_formula: dict[str, list[Structure]] = {}
        for s in generated:
            by_formula.setdefault(s.composition.reduced_formula, []).append(s)
        used: set[str] = set()
        for k, t in enumerate(reference):
            f = t.composition.reduced_formula
            groups[k] = list(by_formula.get(f, []))
            used.add(f)
        unassigned = [i for i, s in zip(gen_ids, generated, strict=True) if s.composition.reduced_formula not in used]
    else:
        raise ConfigError(f"group_by must be one of auto, id, composition; got {group_by!r}")
    return groups, unassigned, group_by


def evaluate(
    task: str,
    gen_ids: Sequence[str],
    generated: Sequence[Structure],
    *,
    reference: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    k: Sequence[int] | None = None,
    group_by: GroupBy = "auto",
    dataset: str | None = None,
    struc_cutoff: float | None = None,
    comp_cutoff: float | None = None,
    n_samples: int | None = None,
    train: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    sun: bool = False,
    potential: str | Potential | None = None,
    potential_config: dict[str, Any] | None = None,
    hull_reference: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    stability_threshold: float = 0.1,
    fmax: float = 0.1,
    max_steps: int = 500,
    device: str = "auto",
    reference_limit: int | None = None,
    workers: int = 0,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """One report for ``task`` ("csp" or "generation") on in-memory generated structures."""
    from crystal_metrics.csp import csp_metrics
    from crystal_metrics.generation import generation_metrics
    from crystal_metrics.sun import novelty, sun_metrics, uniqueness

    if task not in TASKS:
        raise ConfigError(f"unknown evaluation task {task!r}; allowed: {', '.join(TASKS)}")
    if k is not None and any(int(x) < 1 for x in k):
        raise ConfigError(f"k must be >= 1, got {list(k)}")
    if workers < 0:
        raise ConfigError(f"workers must be >= 0, got {workers}")
    if sun and task != "generation":
        raise ConfigError("S.U.N. metrics apply to the generation task (use task 'generation' with sun)")
    if sun and (potential is None or hull_reference is None):
        raise ConfigError("S.U.N. metrics need a potential and a hull reference set (potential, hull_reference)")
    if not generated:
        raise ConfigError("no generated structure to evaluate")
    ref_ids, ref_structs, ref_failures = read_reference(reference, "reference", reference_limit)

    def stage(name: str) -> Callable[[int, int], None] | None:
        return None if progress is None else (lambda d, t: progress(name, d, t))

    report: dict[str, Any] = {
        "task": task,
        "created": _dt.datetime.now(_dt.UTC).isoformat(),
        "num_generated": len(generated),
        "reference": [str(p) for p in ([reference] if isinstance(reference, (str, os.PathLike)) else reference)],
        "num_reference": len(ref_structs),
        "reference_read_failures": ref_failures,
    }
    if task == "csp":
        groups, unassigned, used = group_samples(gen_ids, generated, ref_ids, ref_structs, group_by)
        if not any(groups):
            raise ConfigError(
                "no generated structure could be paired with a reference structure "
                f"(grouping by {used}); give samples the test structure's id or its composition"
            )
        report["group_by"] = used
        report["unassigned_samples"] = unassigned
        report["csp"] = csp_metrics(groups, ref_structs, ks=k, workers=workers, ids=ref_ids, progress=stage("match"))
        return report
    report["generation"] = generation_metrics(
        generated,
        ref_structs,
        dataset=dataset,
        struc_cutoff=struc_cutoff,
        comp_cutoff=comp_cutoff,
        n_samples=n_samples,
        seed=seed,
        workers=workers,
        ids=list(gen_ids),
        progress=progress,
    )
    train_structs: list[Structure] | None = None
    if train is not None:
        _, train_structs, _ = read_reference(train, "train")
        uniq = uniqueness(list(generated), workers=workers)
        nov = novelty(list(generated), train_structs, workers=workers)
        report["generation"]["unique_fraction"] = sum(bool(u) for u in uniq) / len(generated)
        report["generation"]["novel_fraction"] = sum(bool(v) for v in nov) / len(generated)
        report["num_train"] = len(train_structs)
    if sun:
        assert potential is not None and hull_reference is not None
        _, hull_structs, _ = read_reference(hull_reference, "hull reference")
        report["sun"] = sun_metrics(
            generated,
            potential,
            hull_structs,
            train_structs,
            potential_config=potential_config,
            device=device,
            fmax=fmax,
            max_steps=max_steps,
            stability_threshold=stability_threshold,
            workers=workers,
            ids=list(gen_ids),
            progress=progress,
        )
    return report


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf become ``null`` (strict JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_report(path: str | os.PathLike[str], report: dict[str, Any]) -> Path:
    """Write ``report`` as JSON atomically (temporary file, then rename); returns the path."""
    from crystal.io import atomic_write

    target = Path(path)
    with atomic_write(target) as fh:
        json.dump(_clean(report), fh, indent=2, allow_nan=False)
        fh.write("\n")
    return target


def _fmt(v: Any, percent: bool = False) -> str:
    if v is None:
        return "–"
    if percent:
        return f"{100 * v:.2f} %"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """``(metric, value)`` pairs with the headline numbers of a report."""
    rows: list[tuple[str, str]] = [("generated structures", str(report["num_generated"]))]
    rows.append(("reference structures", str(report["num_reference"])))
    if "csp" in report:
        csp = report["csp"]
        rows.append(("samples per reference (min-max)", f"{csp['num_samples']['min']}-{csp['num_samples']['max']}"))
        rows.append(("valid samples", _fmt(csp["valid_fraction"], True)))
        for k, m in csp["k"].items():
            rows.append((f"match rate (k={k})", _fmt(m["match_rate"], True)))
            rows.append((f"RMSE (k={k})", _fmt(m["rmse"])))
        if csp["errors"]:
            rows.append(("matcher errors", str(len(csp["errors"]))))
    if "generation" in report:
        g = report["generation"]
        for key, label in (("struct_valid", "structural validity"), ("comp_valid", "compositional validity")):
            rows.append((label, _fmt(g[key], True)))
        rows.append(("valid (both)", _fmt(g["valid"], True)))
        rows.append(("COV-R", _fmt(g["cov_recall"], True)))
        rows.append(("COV-P", _fmt(g["cov_precision"], True)))
        rows.append(("wdist density (g/cm^3)", _fmt(g["wdist_density"])))
        rows.append(("wdist #elements", _fmt(g["wdist_num_elems"])))
        for key in ("unique_fraction", "novel_fraction"):
            if key in g:
                rows.append((key.replace("_fraction", ""), _fmt(g[key], True)))
    if "sun" in report:
        s = report["sun"]
        rows.append((f"stable (E_hull <= {s['stability_threshold']} eV/atom)", _fmt(s["stable_fraction"], True)))
        rows.append(("mean E_hull (eV/atom)", _fmt(s["mean_e_above_hull"])))
        rows.append(("S.U.N.", _fmt(s["sun_fraction"], True)))
    return rows
