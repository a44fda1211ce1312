"""The ``hull`` step: formation energy and energy above the convex hull of known phases.

Energies per atom of different compositions cannot be compared: a Mn-rich cell "wins" a
ranking by ``energy_per_atom`` only because Mn binds more strongly per atom than Li or O.
What a discovery pipeline ranks by is the energy of a crystal relative to the phases it
could decompose into, computed with the *same* potential:

1. **References.** The step assembles reference phases: elemental ground states (by default
   the 71 elemental crystals of the Delta test, ``ase.collections.dcdft``), plus any known
   phases from files (``references``) or registered datasets (``reference_datasets``).
   Only the references a chunk needs are used: an elemental reference for each of its
   elements and every reference whose elements are a subset of a crystal's chemical system.
2. **Relaxation, cached.** Each reference is relaxed (positions and cell, batched FIRE,
   :func:`crystal_sim.relax.relax`) with the step's potential, once: its energy per atom is
   cached in ``$CRYSTAL_CACHE/hull/<key>/references.json`` (else
   ``$XDG_CACHE_HOME/crystal/hull``, ``~/.cache/crystal/hull``), where ``<key>`` hashes the
   potential (name, version, validated config, sha256 of its named weights) and the
   reference relaxation settings (``fmax``, ``max_steps``): another potential, config or
   setting recomputes. Entries are keyed by the reference structure itself, so a changed
   reference file is relaxed again.
3. **Hull.** For each crystal, a pymatgen ``PhaseDiagram`` of the references whose elements
   lie in its chemical system gives ``e_above_hull`` =
   ``PhaseDiagram.get_decomp_and_e_above_hull(entry, allow_negative=True)`` (eV/atom; negative
   for a crystal below the reference hull: a new stable phase) and
   ``formation_energy_per_atom`` = (E − Σ nᵢ μᵢ)/N relative to the lowest elemental
   reference of each element (eV/atom); ``stable`` is 1 when ``e_above_hull`` ≤
   ``stable_threshold``. A crystal with an element that has no elemental reference is a
   failure row naming the element.

The crystal's own energy is the ``energy`` column of the relax step named by ``energy_from``
(same potential and config, checked when the pipeline is validated), or, without
``energy_from``, a single-point energy of the crystal as it reaches this step.

The values of a crystal depend only on its energy and the references, never on the other
crystals: the step is a map step (chunk by chunk, block by block on Ray).

**Approximation.** The Delta-test crystals of the gaseous elements (H, N, O, F, Cl and the
noble gases) are molecular crystals (e.g. α-O₂, α-N₂), not the gas phase that thermodynamic
tables use as the reference state; formation energies of oxides, nitrides, hydrides and
halides against them differ from tabulated ones by the sublimation energy and the potential's
error on the molecule (no fitted corrections as in the Materials Project's compatibility
scheme). Mn is the Delta test's simplified two-atom antiferromagnetic cell, not α-Mn (58
atoms). The ranking within one chemical system is what these references are for.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from crystal.batch import CrystalBatch
from crystal.components import Potential
from crystal.errors import ConfigError, PipelineError
from crystal.io import Failure, atomic_write
from crystal_pipeline.config import HullStep
from crystal_pipeline.state import StageOutput

if TYPE_CHECKING:
    from pymatgen.core import Structure

    from crystal_pipeline.steps import StepContext

__all__ = [
    "CACHE_FORMAT",
    "Reference",
    "cache_key",
    "check_hull_step",
    "hull_cache_dir",
    "manifest_record",
    "reference_energies",
    "run_hull",
]

CACHE_FORMAT = 1
"""Version of the cache layout and of the reference recipe: bumping it recomputes every cache."""


def hull_cache_dir() -> Path:
    """Where relaxed reference energies are cached: ``$CRYSTAL_CACHE/hull``, else
    ``$XDG_CACHE_HOME/crystal/hull`` (``~/.cache/crystal/hull``)."""
    if env := os.environ.get("CRYSTAL_CACHE"):
        return Path(env).expanduser() / "hull"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "crystal" / "hull"


# ----------------------------------------------------------------------------- references
@dataclass(frozen=True)
class Reference:
    """One reference phase: where it comes from, its structure and the structure's digest."""

    source: str
    """Where it comes from: ``ase.collections.dcdft``, a file path, or ``dataset <name>``."""
    ident: str
    """Its id there: the element (dcdft), the structure's id in the file, the dataset's id."""
    structure: Structure
    digest: str

    @property
    def composition(self) -> Any:
        """The composition in elements (oxidation states dropped)."""
        return self.structure.composition.element_composition

    @property
    def elements(self) -> frozenset[str]:
        return frozenset(str(el) for el in self.composition.elements)

    @property
    def formula(self) -> str:
        return str(self.composition.reduced_formula)


def _digest(structure: Structure) -> str:
    """sha256 (16 hex digits) of species, lattice and fractional coordinates (rounded to 1e-6)."""
    parts = [
        ",".join(str(sp) for sp in structure.species),
        ",".join(f"{x:.6f}" for x in structure.lattice.matrix.flatten()),
        ",".join(f"{x:.6f}" for x in structure.frac_coords.flatten()),
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


@lru_cache(maxsize=128)
def _dcdft_reference(symbol: str) -> Reference | None:
    from ase.collections import dcdft
    from pymatgen.io.ase import AseAtomsAdaptor

    if symbol not in dcdft.names:
        return None
    s = AseAtomsAdaptor.get_structure(dcdft[symbol])
    return Reference("ase.collections.dcdft", symbol, s, _digest(s))


def _package_path(path: str) -> str:
    """``package:<package>/<path>``: a folder or file shipped inside an installed package (as
    for weights files), e.g. ``package:crystal_cli/references/li-mn-o``."""
    import importlib.util

    package, _, rel = path.removeprefix("package:").partition("/")
    spec = importlib.util.find_spec(package) if package else None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"hull reference {path!r}: package {package!r} is not installed")
    for loc in spec.submodule_search_locations:
        candidate = Path(loc, rel)
        if candidate.exists():
            return str(candidate)
    raise ConfigError(f"hull reference {path!r}: {rel!r} is missing from package {package!r}")


def _resolve(paths: Sequence[str], base_dir: Path | None) -> list[str]:
    base = base_dir or Path.cwd()
    return [
        _package_path(p) if p.startswith("package:") else p if Path(p).is_absolute() else str(base / p) for p in paths
    ]


@lru_cache(maxsize=32)
def _file_references(files: tuple[tuple[str, int, int], ...]) -> tuple[Reference, ...]:
    """The structures of ``files`` (path, mtime, size: a changed file is read again)."""
    from crystal.io import read_structures

    refs: list[Reference] = []
    for path, _, _ in files:
        res = read_structures(path)
        if res.failures:
            f = res.failures[0]
            raise ConfigError(f"hull reference {path}: cannot read {f.id!r}: {f.reason}")
        for ident, s in zip(res.ids, res.structures, strict=True):
            if not s.is_ordered:
                raise ConfigError(f"hull reference {path}: {ident!r} is disordered; a reference phase must be ordered")
            refs.append(Reference(path, ident, s, _digest(s)))
    return tuple(refs)


@lru_cache(maxsize=32)
def _dataset_references(name: str) -> tuple[Reference, ...]:
    from crystal.registries import datasets

    known = datasets()
    if name not in known:
        raise ConfigError(f"no dataset {name!r}; allowed: {', '.join(sorted(known))}")
    ids, structures = known[name].load(None)
    return tuple(Reference(f"dataset {name}", str(i), s, _digest(s)) for i, s in zip(ids, structures, strict=True))


def _expand(step: HullStep, base_dir: Path | None) -> list[Path]:
    from crystal.io import expand_paths

    return expand_paths(_resolve(step.references, base_dir))


def _known_phases(step: HullStep, base_dir: Path | None) -> list[Reference]:
    """The references from ``references`` and ``reference_datasets`` (not the elemental ones)."""
    refs: list[Reference] = []
    if step.references:
        files = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in _expand(step, base_dir))
        refs += _file_references(files)
    for name in step.reference_datasets:
        refs += _dataset_references(name)
    return refs


def _needed(step: HullStep, base_dir: Path | None, systems: Iterable[frozenset[str]]) -> list[Reference]:
    """The references the chemical ``systems`` need: an elemental reference of each element
    and every known phase whose elements are a subset of one of the systems (no duplicates)."""
    systems = list(systems)
    refs: list[Reference] = []
    if step.elemental_references == "dcdft":
        for symbol in sorted(set().union(*systems)) if systems else []:
            ref = _dcdft_reference(symbol)
            if ref is not None:
                refs.append(ref)
    refs += [r for r in _known_phases(step, base_dir) if any(r.elements <= s for s in systems)]
    seen: set[str] = set()
    unique = []
    for r in refs:
        if r.digest not in seen:
            seen.add(r.digest)
            unique.append(r)
    return unique


# ----------------------------------------------------------------------------- cache
def _potential_identity(step: HullStep, potential: Potential | None = None) -> dict[str, Any]:
    """What makes the reference energies of ``step``: the potential's name, version, validated
    config and the sha256 of its named weights, and the reference relaxation settings (from the
    loaded ``potential`` when given, else from its class: the same record)."""
    if potential is not None:
        cls: Any = type(potential)
        config = potential.config
    else:
        from crystal.plugins import load_class

        cls = load_class("potential", step.potential)
        config = cls.make_config(step.config)
    weights = getattr(config, "weights", None)
    sha = None
    if isinstance(weights, str) and weights in getattr(cls, "weights", ()):
        from crystal.weights import find_weights

        sha = find_weights(weights).sha256
    files = {}  # a checkpoint given by path: its size and modification time
    for k, v in config.model_dump(mode="json").items():
        if isinstance(v, str) and len(v) < 4096 and os.path.isfile(v):
            st = os.stat(v)
            files[k] = [st.st_size, st.st_mtime_ns]
    return {
        "format": CACHE_FORMAT,
        "potential": step.potential,
        "version": getattr(cls, "version", None),
        "config": config.model_dump(mode="json"),
        "weights_sha256": sha,
        "files": files,
        "relax": {"fmax": step.fmax, "max_steps": step.max_steps, "relax_cell": True},
    }


def cache_key(step: HullStep, potential: Potential | None = None) -> tuple[str, dict[str, Any]]:
    """``(key, identity)``: the cache folder name (the potential's name and the sha256 of the
    identity, 16 hex digits) and what it hashes (:func:`_potential_identity`)."""
    identity = _potential_identity(step, potential)
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    return f"{step.potential}-{hashlib.sha256(blob).hexdigest()[:16]}", identity


def _cache_file(step: HullStep, potential: Potential | None = None) -> tuple[Path, dict[str, Any]]:
    key, identity = cache_key(step, potential)
    return hull_cache_dir() / key / "references.json", identity


def _read_cache(path: Path) -> dict[str, dict[str, Any]]:
    """The cached entries (digest -> {source, id, formula, num_atoms, energy_per_atom}); an
    unreadable or foreign file counts as empty (and is rewritten)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("entries"), dict):
        return {}
    return {str(k): v for k, v in data["entries"].items() if isinstance(v, dict) and "energy_per_atom" in v}


def _write_cache(path: Path, identity: dict[str, Any], new: dict[str, dict[str, Any]]) -> None:
    """Merge ``new`` into the cache file (re-read just before: another process may have added
    entries) and write it atomically."""
    entries = {**_read_cache(path), **new}
    data = {"format": CACHE_FORMAT, "identity": identity, "entries": dict(sorted(entries.items()))}
    with atomic_write(path) as fh:
        json.dump(data, fh, indent=1, sort_keys=False)


_FAILED: dict[tuple[str, str], str] = {}
"""(cache file, reference digest) -> why it could not be relaxed, for this process (a failure
is not cached on disk: a later run tries again)."""


def reference_energies(
    step: HullStep,
    potential: Potential,
    references: Sequence[Reference],
    *,
    emit: Any = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, str], Path]:
    """Energies per atom (eV/atom) of ``references`` relaxed with ``potential``: ``(entries by
    digest, errors by digest, cache file)``; the missing ones are relaxed (batched) and cached."""
    from crystal_metrics.sun import relaxed_energies

    path, identity = _cache_file(step, potential)
    cached = _read_cache(path)
    errors = {r.digest: _FAILED[(str(path), r.digest)] for r in references if (str(path), r.digest) in _FAILED}
    todo = [r for r in references if r.digest not in cached and r.digest not in errors]
    if todo:
        if emit is not None:
            formulas = ", ".join(r.formula for r in todo[:12]) + (", ..." if len(todo) > 12 else "")
            emit(
                "progress",
                step.id,
                f"relaxing {len(todo)} reference phase(s) with {step.potential} ({formulas}); cached in {path.parent}",
            )
        _, energies, errs = relaxed_energies(
            potential, [r.structure for r in todo], fmax=step.fmax, max_steps=step.max_steps
        )
        new: dict[str, dict[str, Any]] = {}
        for r, e, err in zip(todo, energies, errs, strict=True):
            if e is None or err is not None:
                _FAILED[(str(path), r.digest)] = errors[r.digest] = err or "no energy"
                continue
            n = len(r.structure)
            new[r.digest] = {
                "source": r.source,
                "id": r.ident,
                "formula": r.formula,
                "num_atoms": n,
                "energy_per_atom": e / n,
            }
        if new:
            _write_cache(path, identity, new)
        cached.update(new)
    return {r.digest: cached[r.digest] for r in references if r.digest in cached}, errors, path


# ----------------------------------------------------------------------------- the step
def _candidate_energies(step: HullStep, batch: CrystalBatch, ctx: StepContext) -> torch.Tensor:
    """(B,) total energies, eV: the ``energy`` column of ``energy_from``, or single points."""
    if step.energy_from is not None:
        if "energy" not in batch.crystal_properties:
            raise PipelineError(
                f"step {step.id!r}: no 'energy' column from step {step.energy_from!r} "
                f"(columns: {', '.join(sorted(batch.crystal_properties)) or 'none'})"
            )
        return batch.crystal_properties["energy"].detach().double().cpu()
    (potential,) = ctx.components[step.id]
    assert isinstance(potential, Potential)
    potential.check_elements(batch)
    out = potential.compute(batch.to(potential.device), forces=False, stress=False)
    return out.energy.detach().double().cpu()


def run_hull(step: HullStep, batch: CrystalBatch, ctx: StepContext) -> StageOutput:
    """The ``hull`` map step on one chunk: adds ``formation_energy_per_atom``, ``e_above_hull``
    (eV/atom) and ``stable`` (1/0); a crystal without an elemental reference for one of its
    elements, or with a non-finite energy, is a failure row."""
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Composition

    if len(batch) == 0:
        return StageOutput(batch)
    (potential,) = ctx.components[step.id]
    assert isinstance(potential, Potential)
    energies = _candidate_energies(step, batch, ctx)
    comps = [Composition(f) for f in batch.formulas()]
    systems = [frozenset(str(el) for el in c.elements) for c in comps]
    refs = _needed(step, ctx.base_dir, set(systems))
    entries, ref_errors, _ = reference_energies(step, potential, refs, emit=ctx.emit)
    by_digest = {r.digest: r for r in refs}
    elemental = {next(iter(by_digest[d].elements)) for d in entries if len(by_digest[d].elements) == 1}
    failed_elemental = {
        next(iter(by_digest[d].elements)): reason for d, reason in ref_errors.items() if len(by_digest[d].elements) == 1
    }

    diagrams: dict[frozenset[str], Any] = {}
    failures: list[Failure] = []
    keep: list[bool] = []
    e_form: list[float] = []
    e_hull: list[float] = []
    for k, (comp, system, energy) in enumerate(zip(comps, systems, energies.tolist(), strict=True)):
        reason = None
        if not torch.isfinite(torch.tensor(energy)):
            reason = f"non-finite energy ({energy}); no hull value"
        missing = sorted(system - elemental)
        if reason is None and missing:
            why = []
            for el in missing:
                if el in failed_elemental:
                    why.append(f"{el} (its reference failed: {failed_elemental[el]})")
                elif step.elemental_references == "dcdft":
                    why.append(f"{el} (not in ase.collections.dcdft, nor in the step's references)")
                else:
                    why.append(f"{el} (elemental_references = 'none' and no elemental {el} in the references)")
            reason = (
                f"no elemental reference for {', '.join(why)}: formation energy and energy above the hull "
                "need one per element; add a structure of the element to the step's references"
            )
        if reason is None:
            try:
                if system not in diagrams:
                    subset = [
                        PDEntry(by_digest[d].composition, e["energy_per_atom"] * e["num_atoms"])
                        for d, e in entries.items()
                        if by_digest[d].elements <= system
                    ]
                    diagrams[system] = PhaseDiagram(subset)
                pd = diagrams[system]
                entry = PDEntry(comp, energy)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    _, above = pd.get_decomp_and_e_above_hull(entry, allow_negative=True)
                    form = pd.get_form_energy_per_atom(entry)
            except Exception as exc:  # a pymatgen failure on one crystal is that crystal's failure
                reason = f"phase diagram failed: {type(exc).__name__}: {exc}"[:400]
        if reason is not None:
            failures.append(Failure(batch.ids[k], step.id, reason, str(batch.info[k].get("source", ""))))
            ctx.emit("failure", step.id, f"{batch.ids[k]}: {reason}", data={"id": batch.ids[k], "reason": reason})
            keep.append(False)
            continue
        keep.append(True)
        e_form.append(float(form))
        e_hull.append(float(above))
    out = batch.select(torch.tensor(keep, dtype=torch.bool, device=batch.device))
    dtype = out.dtype
    hull_t = torch.tensor(e_hull, dtype=dtype, device=out.device)
    out.crystal_properties["formation_energy_per_atom"] = torch.tensor(e_form, dtype=dtype, device=out.device)
    out.crystal_properties["e_above_hull"] = hull_t
    out.crystal_properties["stable"] = (hull_t <= step.stable_threshold).to(dtype)
    return StageOutput(out, failures)


# ----------------------------------------------------------------------------- checks, manifest
def check_hull_step(step: HullStep, base_dir: Path | None, origin: str) -> list[str]:
    """Problems found before running: reference paths that match nothing, unknown datasets."""
    from crystal.registries import datasets

    where = f"{origin}: step {step.id!r}"
    problems = []
    if step.references:
        try:
            _expand(step, base_dir)
        except ConfigError as exc:
            problems.append(f"{where}: field 'references': {exc}")
    if step.reference_datasets:
        known = datasets()
        for name in step.reference_datasets:
            if name not in known:
                problems.append(
                    f"{where}: field 'reference_datasets': no dataset {name!r}; allowed: {', '.join(sorted(known))}"
                )
    return problems


def manifest_record(step: HullStep, base_dir: Path | None, formulas: Iterable[str]) -> dict[str, Any]:
    """``manifest["hull"]``: the potential, the cache file and the references used for the
    chemical systems of ``formulas`` (the crystals that got hull values), read from the cache:
    ``references`` is a list of ``{formula, source, id, energy_per_atom}`` (eV/atom; source:
    ``ase.collections.dcdft``, a file path or ``dataset <name>``)."""
    from pymatgen.core import Composition

    record: dict[str, Any] = {
        "step": step.id,
        "potential": step.potential,
        "config": step.config,
        "energy_from": step.energy_from,
        "elemental_references": step.elemental_references,
        "stable_threshold": step.stable_threshold,
        "references": [],
    }
    with contextlib.suppress(Exception):  # the record must never fail a finished run
        path, _ = _cache_file(step)
        record["cache"] = str(path)
        systems = set()
        for f in formulas:
            with contextlib.suppress(Exception):
                systems.add(frozenset(str(el) for el in Composition(f).elements))
        cached = _read_cache(path)
        used = [r for r in _needed(step, base_dir, systems) if r.digest in cached]
        record["references"] = [
            {
                "formula": r.formula,
                "source": r.source,
                "id": r.ident,
                "energy_per_atom": round(float(cached[r.digest]["energy_per_atom"]), 6),
            }
            for r in used
        ]
    return record
