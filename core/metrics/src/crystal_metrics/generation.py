"""Ab initio generation metrics of CDVAE (Xie et al., ICLR 2022), as reported by DiffCSP.

For ``N`` generated crystals and a reference (test) set of ``M``:

* ``struct_valid``, ``comp_valid``, ``valid``: fractions of all ``N`` (see
  :mod:`crystal_metrics.validity`); a crystal whose CrystalNN fingerprint cannot be computed
  is invalid too, as in CDVAE;
* ``wdist_density`` (g/cm³) and ``wdist_num_elems``: 1-D Wasserstein distances
  (``scipy.stats.wasserstein_distance``) between the valid generated crystals (optionally a
  random subset of ``n_samples``, CDVAE uses 1000) and the reference set;
* ``cov_recall``, ``cov_precision``, ``amsd_*``, ``amcd_*``: :mod:`crystal_metrics.coverage`
  over all generated crystals.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from crystal.batch import CrystalBatch
from crystal.errors import ConfigError

if TYPE_CHECKING:
    from pymatgen.core import Structure

    from crystal_metrics.validity import OxidationStates

__all__ = ["densities", "fingerprints", "generation_metrics", "num_elements"]

_AMU_PER_A3_TO_G_CM3 = 1.66053906660


@lru_cache(maxsize=1)
def _pymatgen_masses() -> torch.Tensor:
    """(119,) pymatgen's atomic masses by Z (what ``Structure.density`` uses), amu."""
    from pymatgen.core.periodic_table import Element

    masses = [0.0] + [float(Element.from_Z(z).atomic_mass) for z in range(1, 119)]
    return torch.tensor(masses, dtype=torch.float64)


def densities(batch: CrystalBatch) -> torch.Tensor:
    """(B,) mass densities, g/cm³: ``Σ m_Z / V`` with pymatgen's masses (as ``Structure.density``)."""
    masses = _pymatgen_masses().to(batch.device, batch.dtype)[batch.atomic_numbers]
    total = torch.zeros(len(batch), dtype=batch.dtype, device=batch.device).index_add_(0, batch.batch, masses)
    return total / batch.volumes * _AMU_PER_A3_TO_G_CM3


def num_elements(batch: CrystalBatch) -> torch.Tensor:
    """(B,) number of distinct elements per crystal (one scatter over (crystal, Z) pairs)."""
    if len(batch) == 0:
        return torch.zeros(0, dtype=torch.long, device=batch.device)
    present = torch.zeros((len(batch), 119), dtype=torch.bool, device=batch.device)
    present[batch.batch, batch.atomic_numbers] = True
    return present.sum(dim=1)


def _fingerprint_task(structure: Structure) -> tuple[Any, Any]:
    from crystal_metrics.fingerprints import composition_fingerprint, structure_fingerprint

    return structure_fingerprint(structure), composition_fingerprint(structure.composition)


def fingerprints(
    structures: Sequence[Structure], *, workers: int = 0, progress: Callable[[int, int], None] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """``(struct_fps (N, 61), comp_fps (N, 132) unscaled, errors)``; rows of failures are NaN."""
    from crystal_metrics._parallel import guarded_map
    from crystal_metrics.fingerprints import COMPOSITION_FP_SIZE, STRUCTURE_FP_SIZE

    results = guarded_map(_fingerprint_task, list(structures), workers=workers, progress=progress)
    s = np.full((len(results), STRUCTURE_FP_SIZE), np.nan)
    c = np.full((len(results), COMPOSITION_FP_SIZE), np.nan)
    errors: list[str | None] = []
    for k, (value, error) in enumerate(results):
        if value is not None:
            s[k], c[k] = value
        errors.append(error)
    return s, c, errors


def generation_metrics(
    generated: Sequence[Structure],
    reference: Sequence[Structure],
    *,
    dataset: str | None = None,
    struc_cutoff: float | None = None,
    comp_cutoff: float | None = None,
    n_samples: int | None = None,
    seed: int = 0,
    oxidation_states: OxidationStates = "smact14",
    workers: int = 0,
    ids: Sequence[str] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Validity, Wasserstein distances and coverage of ``generated`` against ``reference``.

    ``dataset`` (perov_5, carbon_24, mp_20) picks CDVAE's coverage cut-offs; explicit
    ``struc_cutoff``/``comp_cutoff`` override them; with neither, COV values are ``None``
    (mean distances are still reported). ``n_samples`` draws that many valid crystals
    (seeded) for the Wasserstein distances, as CDVAE's ``GenEval`` (which uses 1000); by
    default all valid crystals are used. ``oxidation_states`` picks SMACT's lists for
    ``comp_valid`` (:func:`~crystal_metrics.validity.smact_validity`). Returns a JSON-ready dict.
    """
    from scipy.stats import wasserstein_distance

    from crystal_metrics.coverage import compute_coverage, coverage_cutoffs
    from crystal_metrics.fingerprints import scale_composition
    from crystal_metrics.validity import composition_validity, structure_validity

    generated, reference = list(generated), list(reference)
    if not generated:
        raise ConfigError("generation_metrics: no generated structures")
    if not reference:
        raise ConfigError("generation_metrics: no reference structures")
    if ids is not None and len(ids) != len(generated):
        raise ConfigError(f"generation_metrics: {len(ids)} ids for {len(generated)} generated structures")
    cut = coverage_cutoffs(dataset) if dataset is not None else {}
    struc_cutoff = cut.get("struc") if struc_cutoff is None else struc_cutoff
    comp_cutoff = cut.get("comp") if comp_cutoff is None else comp_cutoff
    if (struc_cutoff is None) != (comp_cutoff is None):
        raise ConfigError("generation_metrics: give both struc_cutoff and comp_cutoff (or a dataset)")

    def report(stage: str) -> Callable[[int, int], None] | None:
        return None if progress is None else (lambda d, t: progress(stage, d, t))

    gen_batch = CrystalBatch.from_structures(generated)
    ref_batch = CrystalBatch.from_structures(reference)
    struct_valid = structure_validity(gen_batch).cpu()
    comp_valid = composition_validity(gen_batch, oxidation_states)
    if n_samples is not None and n_samples > int((struct_valid & comp_valid).sum()):
        raise ConfigError(
            f"generation_metrics: n_samples = {n_samples} but only {int((struct_valid & comp_valid).sum())} of "
            f"{len(generated)} generated crystals are valid"
        )
    s_fp, c_fp, fp_errors = fingerprints(generated, workers=workers, progress=report("fingerprints"))
    fp_ok = torch.tensor([e is None for e in fp_errors], dtype=torch.bool)
    valid = struct_valid & comp_valid & fp_ok
    rs_fp, rc_fp, ref_errors = fingerprints(reference, workers=workers, progress=report("reference fingerprints"))
    ref_ok = np.asarray([e is None for e in ref_errors])

    valid_idx = torch.nonzero(valid).flatten()
    if n_samples is not None:
        if n_samples > len(valid_idx):
            raise ConfigError(
                f"generation_metrics: n_samples = {n_samples} but only {len(valid_idx)} of "
                f"{len(generated)} generated crystals are valid"
            )
        g = torch.Generator().manual_seed(seed)
        valid_idx = valid_idx[torch.randperm(len(valid_idx), generator=g)[:n_samples]]
    out: dict[str, Any] = {
        "task": "generation",
        "num_generated": len(generated),
        "num_reference": len(reference),
        "struct_valid": float(struct_valid.double().mean()),
        "comp_valid": float(comp_valid.double().mean()),
        "valid": float(valid.double().mean()),
        "wdist_samples": len(valid_idx),
        "wdist_density": None,
        "wdist_num_elems": None,
    }
    if len(valid_idx):
        sel = gen_batch.select(valid_idx)
        out["wdist_density"] = float(
            wasserstein_distance(densities(sel).cpu().numpy(), densities(ref_batch).cpu().numpy())
        )
        out["wdist_num_elems"] = float(
            wasserstein_distance(num_elements(sel).cpu().numpy(), num_elements(ref_batch).cpu().numpy())
        )
    keep = fp_ok.numpy()
    out.update(
        compute_coverage(
            s_fp[keep],
            scale_composition(c_fp[keep]),
            rs_fp[ref_ok],
            scale_composition(rc_fp[ref_ok]),
            struc_cutoff=struc_cutoff,
            comp_cutoff=comp_cutoff,
            num_generated=len(generated),
        )
    )
    out["coverage_cutoffs"] = {"struc": struc_cutoff, "comp": comp_cutoff, "dataset": dataset}
    id_list = [str(i) for i in ids] if ids is not None else [str(i) for i in range(len(generated))]
    out["errors"] = [
        {"id": id_list[k], "step": "fingerprint", "error": e} for k, e in enumerate(fp_errors) if e is not None
    ] + [{"id": f"reference:{k}", "step": "fingerprint", "error": e} for k, e in enumerate(ref_errors) if e]
    out["per_structure"] = [
        {"id": i, "struct_valid": bool(sv), "comp_valid": bool(cv), "valid": bool(v)}
        for i, sv, cv, v in zip(id_list, struct_valid.tolist(), comp_valid.tolist(), valid.tolist(), strict=True)
    ]
    return out
