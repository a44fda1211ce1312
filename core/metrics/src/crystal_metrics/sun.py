"""Stability, uniqueness and novelty (S.U.N.) of generated crystals with any Potential.

1. **Relax** the generated crystals and a hull reference set with the *same* potential
   (batched FIRE, :func:`crystal_sim.relax.relax`); structurally invalid crystals (atoms closer
   than 0.5 Å) and crystals that make the potential fail are reported, not relaxed.
2. **Energy above the hull**: for each generated crystal, a pymatgen ``PhaseDiagram`` of the
   reference entries whose elements lie in its chemical system (one per chemical system),
   ``E_hull = E/atom − E_hull(composition)`` (eV/atom, may be negative for a crystal below
   the reference hull). Without a reference entry for every element the value is ``None``.
   **Stable** means ``E_hull ≤ stability_threshold`` (default 0.1 eV/atom, MatterGen's).
3. **Unique**: not matched (``StructureMatcher``, pymatgen's default tolerances) by any
   *earlier* generated crystal of the same reduced formula (the first of each group counts).
4. **Novel**: not matched by any training crystal of the same reduced formula.

``sun_fraction`` is the fraction of all generated crystals that are stable, unique and novel.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from crystal.batch import CrystalBatch
from crystal.errors import ConfigError

if TYPE_CHECKING:
    from pymatgen.core import Structure

    from crystal.components import Potential

__all__ = ["UNIQUENESS_MATCHER", "energies_above_hull", "novelty", "relaxed_energies", "sun_metrics", "uniqueness"]

UNIQUENESS_MATCHER: dict[str, float] = {"ltol": 0.2, "stol": 0.3, "angle_tol": 5.0}  # pymatgen's defaults


def relaxed_energies(
    potential: Potential,
    structures: Sequence[Structure],
    *,
    relax_structures: bool = True,
    fmax: float = 0.1,
    max_steps: int = 500,
    chunk_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[Structure | None], list[float | None], list[str | None]]:
    """``(structures, total energies in eV, errors)``; a failing crystal is isolated by bisection."""
    from crystal_metrics.validity import structure_validity
    from crystal_sim.relax import RelaxConfig, relax

    n = len(structures)
    out_s: list[Structure | None] = [None] * n
    out_e: list[float | None] = [None] * n
    errors: list[str | None] = [None] * n
    if n == 0:
        return out_s, out_e, errors
    batch = CrystalBatch.from_structures(list(structures))
    ok = structure_validity(batch).cpu()
    for k in torch.nonzero(~ok).flatten().tolist():
        errors[k] = "structurally invalid (atoms closer than 0.5 Å or volume < 0.1 Å^3); not relaxed"
    cfg = RelaxConfig(fmax=fmax, max_steps=max_steps)

    def attempt(index: list[int]) -> None:
        sub = batch.select(torch.tensor(index, dtype=torch.long))
        try:
            if relax_structures:
                res = relax(potential, sub, cfg)
                relaxed, energy = res.batch, res.energy
            else:
                relaxed, energy = sub, potential.compute(sub.to(potential.device), forces=False, stress=False).energy
            energy = energy.detach().cpu().double()
            if not torch.isfinite(energy).all():
                raise FloatingPointError("the potential returned a non-finite energy")
        except Exception as exc:
            if len(index) == 1:
                errors[index[0]] = (
                    f"{'relaxation' if relax_structures else 'energy'} failed: {type(exc).__name__}: {exc}"
                )
                return
            half = len(index) // 2
            attempt(index[:half])
            attempt(index[half:])
            return
        for k, s, e in zip(index, relaxed.to_structures(), energy.tolist(), strict=True):
            out_s[k], out_e[k] = s, e

    todo = torch.nonzero(ok).flatten().tolist()
    for start in range(0, len(todo), chunk_size):
        attempt(todo[start : start + chunk_size])
        if progress is not None:
            progress(min(start + chunk_size, len(todo)), len(todo))
    return out_s, out_e, errors


def energies_above_hull(
    compositions: Sequence[Any],
    energies: Sequence[float | None],
    ref_compositions: Sequence[Any],
    ref_energies: Sequence[float | None],
) -> tuple[list[float | None], list[str | None]]:
    """``(E_hull in eV/atom, errors)`` of each (composition, total energy) against the reference entries."""
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram

    ref_entries = [PDEntry(c, e) for c, e in zip(ref_compositions, ref_energies, strict=True) if e is not None]
    elemental = {e.composition.elements[0] for e in ref_entries if len(e.composition.elements) == 1}
    diagrams: dict[frozenset[Any], Any] = {}
    out: list[float | None] = []
    errors: list[str | None] = []
    for comp, energy in zip(compositions, energies, strict=True):
        if energy is None:
            out.append(None)
            errors.append("no energy")
            continue
        system = frozenset(comp.elements)
        missing = sorted(str(el) for el in system if el not in elemental)
        if missing:
            out.append(None)
            errors.append(f"no hull reference entry for element(s) {', '.join(missing)}")
            continue
        if system not in diagrams:
            subset = [e for e in ref_entries if set(e.composition.elements) <= system]
            diagrams[system] = PhaseDiagram(subset)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, e_hull = diagrams[system].get_decomp_and_e_above_hull(PDEntry(comp, energy), allow_negative=True)
        out.append(float(e_hull))
        errors.append(None)
    return out, errors


def _unique_task(task: tuple[list[Structure], dict[str, float]]) -> list[int]:
    """Worker: for a group of same-formula structures, the index of the earlier match (or -1)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    group, params = task
    matcher = StructureMatcher(**params)
    first: list[int] = []
    reps: list[int] = []
    for k, s in enumerate(group):
        hit = -1
        for r in reps:
            try:
                if matcher.fit(group[r], s):
                    hit = r
                    break
            except Exception:  # a pair pymatgen cannot compare does not match
                continue
        if hit < 0:
            reps.append(k)
        first.append(hit)
    return first


def _novel_task(task: tuple[Structure, list[Structure], dict[str, float]]) -> bool:
    from pymatgen.analysis.structure_matcher import StructureMatcher

    s, candidates, params = task
    matcher = StructureMatcher(**params)
    for t in candidates:
        try:
            if matcher.fit(s, t):
                return False
        except Exception:
            continue
    return True


def uniqueness(
    structures: Sequence[Structure | None], *, matcher: dict[str, float] | None = None, workers: int = 0
) -> list[bool | None]:
    """Per structure: ``True`` unless an earlier structure of the same reduced formula matches it."""
    from crystal_metrics._parallel import guarded_map

    params = dict(UNIQUENESS_MATCHER if matcher is None else matcher)
    groups: dict[str, list[int]] = {}
    for k, s in enumerate(structures):
        if s is not None:
            groups.setdefault(s.composition.reduced_formula, []).append(k)
    keys = list(groups)
    results = guarded_map(_unique_task, [([structures[k] for k in groups[f]], params) for f in keys], workers=workers)
    out: list[bool | None] = [None] * len(structures)
    for f, (first, _error) in zip(keys, results, strict=True):
        for pos, k in enumerate(groups[f]):
            out[k] = None if first is None else first[pos] < 0
    return out


def novelty(
    structures: Sequence[Structure | None],
    train: Sequence[Structure],
    *,
    matcher: dict[str, float] | None = None,
    workers: int = 0,
) -> list[bool | None]:
    """Per structure: ``True`` when no training structure of the same reduced formula matches it."""
    from crystal_metrics._parallel import guarded_map

    params = dict(UNIQUENESS_MATCHER if matcher is None else matcher)
    by_formula: dict[str, list[Structure]] = {}
    for t in train:
        by_formula.setdefault(t.composition.reduced_formula, []).append(t)
    index = [k for k, s in enumerate(structures) if s is not None]
    tasks = []
    for k in index:
        s = structures[k]
        assert s is not None
        tasks.append((s, by_formula.get(s.composition.reduced_formula, []), params))
    results = guarded_map(_novel_task, tasks, workers=workers)
    out: list[bool | None] = [None] * len(structures)
    for k, (value, _error) in zip(index, results, strict=True):
        out[k] = value
    return out


def _per_atom(energy: float | None, n: int) -> float | None:
    return None if energy is None else energy / n


def sun_metrics(
    generated: Sequence[Structure],
    potential: Potential | str,
    hull_reference: Sequence[Structure],
    train: Sequence[Structure] | None = None,
    *,
    potential_config: dict[str, Any] | None = None,
    device: str = "auto",
    relax_generated: bool = True,
    relax_reference: bool = True,
    fmax: float = 0.1,
    max_steps: int = 500,
    stability_threshold: float = 0.1,
    matcher: dict[str, float] | None = None,
    chunk_size: int = 64,
    workers: int = 0,
    ids: Sequence[str] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """S.U.N. metrics of ``generated``; ``potential`` is a Potential or a plugin name.

    ``hull_reference`` (relaxed with the same potential unless ``relax_reference=False``)
    defines the convex hull and must contain every element as an elemental entry;
    ``train`` is the novelty reference (without it, ``novel_fraction`` and ``sun_fraction``
    are ``None``). Returns a JSON-ready dict with fractions over all generated crystals and
    per-structure values.
    """
    from crystal.components import Potential

    generated, hull_reference = list(generated), list(hull_reference)
    if not generated:
        raise ConfigError("sun_metrics: no generated structures")
    if not hull_reference:
        raise ConfigError("sun_metrics: no hull reference structures")
    if ids is not None and len(ids) != len(generated):
        raise ConfigError(f"sun_metrics: {len(ids)} ids for {len(generated)} generated structures")
    if isinstance(potential, str):
        from crystal.plugins import load

        loaded = load("potential", potential, potential_config, device=device)
    else:
        loaded = potential
    if not isinstance(loaded, Potential):
        raise ConfigError(f"sun_metrics: expected a Potential or a potential plugin name, got {type(loaded).__name__}")
    pot: Potential = loaded

    def report(stage: str) -> Callable[[int, int], None] | None:
        return None if progress is None else (lambda d, t: progress(stage, d, t))

    gen_s, gen_e, gen_err = relaxed_energies(
        pot,
        generated,
        relax_structures=relax_generated,
        fmax=fmax,
        max_steps=max_steps,
        chunk_size=chunk_size,
        progress=report("relax generated"),
    )
    _, ref_e, ref_err = relaxed_energies(
        pot,
        hull_reference,
        relax_structures=relax_reference,
        fmax=fmax,
        max_steps=max_steps,
        chunk_size=chunk_size,
        progress=report("relax reference"),
    )
    e_hull, hull_err = energies_above_hull(
        [s.composition for s in generated],
        gen_e,
        [s.composition for s in hull_reference],
        ref_e,
    )
    unique = uniqueness(gen_s, matcher=matcher, workers=workers)
    novel = novelty(gen_s, list(train), matcher=matcher, workers=workers) if train is not None else None
    n = len(generated)
    stable = [e is not None and e <= stability_threshold for e in e_hull]
    uniq = [bool(u) for u in unique]
    nov = [bool(v) for v in novel] if novel is not None else None
    sun = [s and u and v for s, u, v in zip(stable, uniq, nov, strict=True)] if nov is not None else None
    known = [e for e in e_hull if e is not None]
    id_list = [str(i) for i in ids] if ids is not None else [str(i) for i in range(n)]
    per = []
    for k in range(n):
        per.append(
            {
                "id": id_list[k],
                "energy_per_atom": _per_atom(gen_e[k], len(generated[k])),
                "e_above_hull": e_hull[k],
                "stable": stable[k],
                "unique": unique[k],
                "novel": None if novel is None else novel[k],
                "error": gen_err[k] or (hull_err[k] if gen_e[k] is not None else None),
            }
        )
    return {
        "task": "sun",
        "potential": pot.name,
        "num_generated": n,
        "num_hull_reference": len(hull_reference),
        "num_train": None if train is None else len(train),
        "stability_threshold": stability_threshold,
        "relaxed": {"generated": relax_generated, "reference": relax_reference, "fmax": fmax, "max_steps": max_steps},
        "matcher": dict(UNIQUENESS_MATCHER if matcher is None else matcher),
        "num_with_e_above_hull": len(known),
        "mean_e_above_hull": (sum(known) / len(known)) if known else None,
        "stable_fraction": sum(stable) / n,
        "unique_fraction": sum(uniq) / n,
        "novel_fraction": None if nov is None else sum(nov) / n,
        "sun_fraction": None if sun is None else sum(sun) / n,
        "errors": [{"id": id_list[k], "error": p["error"]} for k, p in enumerate(per) if p["error"]]
        + [{"id": f"hull_reference:{k}", "error": e} for k, e in enumerate(ref_err) if e],
        "per_structure": per,
    }
