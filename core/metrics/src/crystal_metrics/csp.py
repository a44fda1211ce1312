"""Crystal structure prediction: match rate and RMSE over k samples per test structure.

The protocol of CDVAE (Xie et al., ICLR 2022) and DiffCSP (Jiao et al., NeurIPS 2023):

* a sample matches its test structure when pymatgen's
  ``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)`` fits them; its RMSE is
  ``get_rms_dist(sample, test)[0]``, the root-mean-square site displacement after the
  best superposition, normalised by ``(V/N)^(1/3)`` of the average lattice;
* only *valid* samples are matched (structurally and compositionally valid,
  :mod:`crystal_metrics.validity`), as in both papers' evaluation code;
* with ``k`` samples per test structure, the structure counts as matched when any of its
  first ``k`` samples matches, and its RMSE is the smallest RMSE over the matching samples:

.. math::  \\text{match rate}_k = \\frac{1}{M}\\sum_i [\\exists j<k: \\text{match}(g_{ij}, t_i)],
           \\qquad \\text{RMSE}_k = \\operatorname{mean}_{i\\ \\text{matched}}\\ \\min_{j<k,\\ \\text{match}} r_{ij}

An exception inside pymatgen for one pair is recorded in ``errors`` and that pair counts as
unmatched (CDVAE's ``process_one`` does the same silently); the matcher runs in ``workers``
processes when asked.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from crystal.errors import ConfigError

if TYPE_CHECKING:
    from pymatgen.core import Structure

    from crystal_metrics.validity import OxidationStates

__all__ = ["CSP_MATCHER", "csp_metrics", "rms_distances"]

CSP_MATCHER: dict[str, float] = {"stol": 0.5, "angle_tol": 10.0, "ltol": 0.3}


def _match_task(task: tuple[list[Structure], Structure, list[bool], dict[str, float]]) -> list[tuple[Any, Any]]:
    """Worker: ``[(rms or None, error or None)]`` for each sample of one test structure."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    samples, target, valid, params = task
    matcher = StructureMatcher(**params)
    out: list[tuple[Any, Any]] = []
    for sample, ok in zip(samples, valid, strict=True):
        if not ok:
            out.append((None, None))
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rms = matcher.get_rms_dist(sample, target)
            value = None if rms is None else float(rms[0])
            out.append((value, None if value is None or math.isfinite(value) else "non-finite RMS"))
        except Exception as exc:  # one bad pair must not stop the evaluation
            msg = str(exc).strip().splitlines()
            out.append((None, f"{type(exc).__name__}: {msg[0] if msg else ''}"[:300]))
    return out


def rms_distances(
    generated: Sequence[Sequence[Structure]],
    reference: Sequence[Structure],
    valid: Sequence[Sequence[bool]] | None = None,
    *,
    matcher: dict[str, float] | None = None,
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[list[float | None]], list[dict[str, Any]]]:
    """Normalised RMS distance of every (sample, test structure) pair, ``None`` when unmatched.

    Returns ``(rms[i][j], errors)``; ``errors`` lists ``{"reference", "sample", "error"}``
    for pairs where pymatgen raised (or the worker died).
    """
    from crystal_metrics._parallel import guarded_map

    params = dict(CSP_MATCHER if matcher is None else matcher)
    if valid is None:
        valid = [[True] * len(g) for g in generated]
    tasks = [(list(g), t, list(v), params) for g, t, v in zip(generated, reference, valid, strict=True)]
    results = guarded_map(_match_task, tasks, workers=workers, progress=progress)
    rms: list[list[float | None]] = []
    errors: list[dict[str, Any]] = []
    for i, (value, error) in enumerate(results):
        if value is None:
            rms.append([None] * len(generated[i]))
            errors.append({"reference": i, "sample": None, "error": error or "no result"})
            continue
        row: list[float | None] = []
        for j, (r, e) in enumerate(value):
            row.append(r if e is None else None)
            if e is not None:
                errors.append({"reference": i, "sample": j, "error": e})
        rms.append(row)
    return rms, errors


def _sample_validity(
    generated: Sequence[Sequence[Structure]], oxidation_states: OxidationStates = "smact14"
) -> list[list[bool]]:
    """Structural and SMACT validity of every sample, batched over all samples at once."""
    from crystal.batch import CrystalBatch
    from crystal_metrics.validity import composition_validity, structure_validity

    flat = [s for g in generated for s in g]
    if not flat:
        return [[] for _ in generated]
    batch = CrystalBatch.from_structures(flat)
    ok = (structure_validity(batch).cpu() & composition_validity(batch, oxidation_states)).tolist()
    out, k = [], 0
    for g in generated:
        out.append(ok[k : k + len(g)])
        k += len(g)
    return out


def csp_metrics(
    generated: Sequence[Sequence[Structure]],
    reference: Sequence[Structure],
    *,
    ks: Sequence[int] | None = None,
    stol: float = 0.5,
    angle_tol: float = 10.0,
    ltol: float = 0.3,
    require_valid: bool = True,
    oxidation_states: OxidationStates = "smact14",
    workers: int = 0,
    ids: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Match rate and RMSE of ``generated[i]`` (samples, in order) against ``reference[i]``.

    ``ks``: sample counts to report (default ``1`` and the largest number of samples any
    test structure has, e.g. ``(1, 20)``); a test structure with fewer than ``k`` samples
    uses the ones it has (``num_samples`` reports the range). ``require_valid`` (default,
    as CDVAE/DiffCSP) skips invalid samples (SMACT with ``oxidation_states``, see
    :func:`~crystal_metrics.validity.smact_validity`). ``workers`` > 1 runs the matcher in that many
    processes. Returns a JSON-ready dict: ``{"k": {"1": {"match_rate", "rmse",
    "num_matched"}, ...}, "num_reference", "num_samples", "valid_fraction", "errors",
    "per_reference"}``.
    """
    if len(generated) != len(reference):
        raise ConfigError(f"csp_metrics: {len(generated)} lists of samples for {len(reference)} reference structures")
    if not reference:
        raise ConfigError("csp_metrics: no reference structures")
    counts = [len(g) for g in generated]
    max_samples = max(counts)
    if max_samples == 0:
        raise ConfigError("csp_metrics: no generated samples for any reference structure")
    ks = sorted({1, max_samples}) if ks is None else sorted(set(ks))
    for k in ks:
        if k < 1:
            raise ConfigError(f"csp_metrics: k must be >= 1, got {k}")
        if k > max_samples:
            raise ConfigError(f"csp_metrics: k = {k} but no reference structure has more than {max_samples} samples")
    if ids is not None and len(ids) != len(reference):
        raise ConfigError(f"csp_metrics: {len(ids)} ids for {len(reference)} reference structures")
    id_list = [str(i) for i in ids] if ids is not None else [str(i) for i in range(len(reference))]
    n_use = max(ks)
    samples = [list(g)[:n_use] for g in generated]
    valid = _sample_validity(samples, oxidation_states) if require_valid else [[True] * len(g) for g in samples]
    rms, errors = rms_distances(
        samples,
        reference,
        valid,
        matcher={"stol": stol, "angle_tol": angle_tol, "ltol": ltol},
        workers=workers,
        progress=progress,
    )
    for e in errors:
        e["reference"] = id_list[e["reference"]]
    m = len(reference)
    by_k: dict[str, dict[str, Any]] = {}
    for k in ks:
        best = [min((r for r in row[:k] if r is not None), default=None) for row in rms]
        matched = [b for b in best if b is not None]
        by_k[str(k)] = {
            "match_rate": len(matched) / m,
            "rmse": (sum(matched) / len(matched)) if matched else None,
            "num_matched": len(matched),
        }
    flat_valid = [v for row in valid for v in row]
    per_reference = []
    for i, row in enumerate(rms):
        hits = [(r, j) for j, r in enumerate(row) if r is not None]
        r_best, j_best = min(hits) if hits else (None, None)
        per_reference.append(
            {
                "id": id_list[i],
                "num_samples": len(row),
                "num_valid": int(sum(valid[i])),
                "rmse": r_best,
                "best_sample": j_best,
                "first_match": min((j for _, j in hits), default=None),
            }
        )
    return {
        "task": "csp",
        "matcher": {"stol": stol, "angle_tol": angle_tol, "ltol": ltol},
        "require_valid": require_valid,
        "num_reference": m,
        "num_samples": {"min": min(counts), "max": max_samples, "used": n_use},
        "valid_fraction": (sum(flat_valid) / len(flat_valid)) if flat_valid else None,
        "k": by_k,
        "errors": errors,
        "per_reference": per_reference,
    }
