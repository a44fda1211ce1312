"""Structure and composition fingerprints of CDVAE's coverage metric, without matminer.

**Structure** (matminer's ``CrystalNNFingerprint.from_preset("ops")``, averaged over sites as
CDVAE does): for every site, :class:`pymatgen.analysis.local_env.CrystalNN` gives a weight
``w_cn`` for each coordination number ``cn = 1..24``; the site vector is, for each ``cn``,

* ``w_cn`` ("wt"), then
* ``w_cn · q_m`` for each target motif ``m`` of that ``cn`` (``q_m`` a
  :class:`~pymatgen.analysis.local_env.LocalStructOrderParams` order parameter computed on the
  ``cn`` neighbours CrystalNN assigns to that coordination number, with pymatgen's
  ``CN_OPT_PARAMS`` motif parameters; an undefined parameter counts as 0).

That is 61 numbers per site; the crystal fingerprint is the site mean, shape ``(61,)``.

**Composition** (matminer's ``ElementProperty.from_preset("magpie")``): for 22 Magpie
elemental properties, the fraction-weighted minimum, maximum, range, mean, mean absolute
deviation and mode (smallest value among the most abundant elements), shape ``(132,)``.
Missing elemental data give NaN (matminer before 0.9, as used by CDVAE, did not impute);
:func:`scale_composition` then maps NaN to 0 after standardising with CDVAE's constants,
exactly like CDVAE's ``CompScaler``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pymatgen.core import Composition, Structure

__all__ = [
    "COMPOSITION_FP_SIZE",
    "STRUCTURE_FP_SIZE",
    "TARGET_MOTIFS",
    "composition_fingerprint",
    "scale_composition",
    "site_fingerprint",
    "structure_fingerprint",
]

# matminer's load_cn_target_motif_op(): the order parameters per coordination number
TARGET_MOTIFS: dict[int, tuple[str, ...]] = {
    1: ("sgl_bd",),
    2: ("L-shaped", "water-like", "bent 120 degrees", "bent 150 degrees", "linear"),
    3: ("trigonal planar", "trigonal non-coplanar", "T-shaped"),
    4: ("square co-planar", "tetrahedral", "rectangular see-saw-like", "see-saw-like", "trigonal pyramidal"),
    5: ("pentagonal planar", "square pyramidal", "trigonal bipyramidal"),
    6: ("hexagonal planar", "octahedral", "pentagonal pyramidal"),
    7: ("hexagonal pyramidal", "pentagonal bipyramidal"),
    8: ("body-centered cubic", "hexagonal bipyramidal"),
    9: ("q2", "q4", "q6"),
    10: ("q2", "q4", "q6"),
    11: ("q2", "q4", "q6"),
    12: ("cuboctahedral", "q2", "q4", "q6"),
}
MAX_CN = 24
STRUCTURE_FP_SIZE = MAX_CN + sum(len(v) for v in TARGET_MOTIFS.values())  # 61
_STATS = ("minimum", "maximum", "range", "mean", "avg_dev", "mode")
COMPOSITION_FP_SIZE = 22 * len(_STATS)  # 132


@lru_cache(maxsize=1)
def _order_params() -> dict[int, list[Any]]:
    """One single-motif ``LocalStructOrderParams`` per (cn, motif), parametrised as matminer does."""
    from pymatgen.analysis.local_env import CN_OPT_PARAMS, LocalStructOrderParams

    ops: dict[int, list[Any]] = {}
    for cn, motifs in TARGET_MOTIFS.items():
        ops[cn] = []
        for motif in motifs:
            op_type, params = motif, None
            spec = CN_OPT_PARAMS.get(cn, {}).get(motif)
            if spec:
                op_type = spec[0]
                params = spec[1] if len(spec) > 1 else None
            ops[cn].append(LocalStructOrderParams([op_type], parameters=[params]))
    return ops


@lru_cache(maxsize=1)
def _crystal_nn() -> Any:
    from pymatgen.analysis.local_env import CrystalNN

    return CrystalNN()  # matminer's preset passes no options: CrystalNN's defaults


def site_fingerprint(structure: Structure, index: int) -> np.ndarray:
    """(61,) CrystalNN order-parameter fingerprint of site ``index`` (see the module docstring)."""
    nndata = _crystal_nn().get_nn_data(structure, index)
    ops = _order_params()
    out: list[float] = []
    for cn in range(1, MAX_CN + 1):
        weight = float(nndata.cn_weights.get(cn, 0.0))
        out.append(weight)
        for op in ops.get(cn, []):
            if weight == 0.0:
                out.append(0.0)
                continue
            neighbours = [d["site"] for d in nndata.cn_nninfo[cn]]
            value = op.get_order_parameters(
                [structure[index], *neighbours], 0, indices_neighs=list(range(1, len(neighbours) + 1))
            )[0]
            out.append(weight * float(value or 0.0))
    return np.asarray(out, dtype=np.float64)


def structure_fingerprint(structure: Structure) -> np.ndarray:
    """(61,) site-averaged CrystalNN fingerprint; raises whatever CrystalNN raises on bad input."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sites = [site_fingerprint(structure, i) for i in range(len(structure))]
    mean: np.ndarray = np.mean(np.stack(sites), axis=0)
    return mean


@lru_cache(maxsize=1)
def _magpie_table() -> np.ndarray:
    """(119, 22) Magpie values by Z (row 0 unused), NaN where missing."""
    from crystal_metrics._magpie_data import MAGPIE_DATA, MAGPIE_FEATURES

    table = np.full((119, len(MAGPIE_FEATURES)), np.nan)
    for k, name in enumerate(MAGPIE_FEATURES):
        values = MAGPIE_DATA[name]
        table[1 : len(values) + 1, k] = [math.nan if v is None else v for v in values]
    return table


def composition_fingerprint(composition: Composition | dict[int, float]) -> np.ndarray:
    """(132,) Magpie statistics of a composition (pymatgen ``Composition`` or ``{Z: amount}``).

    For property values ``x_e`` and amounts ``a_e`` (weights ``a_e / Σa``): minimum,
    maximum, range (NaN if any ``x_e`` is NaN), mean ``Σ w x``, avg_dev ``Σ w |x − mean|``,
    mode (smallest ``x_e`` among the elements with the largest amount).
    """
    if isinstance(composition, dict):
        amounts = {int(z): float(a) for z, a in composition.items() if a > 0}
    else:
        amounts = {el.Z: float(a) for el, a in composition.element_composition.items() if a > 0}
    zs = np.asarray(sorted(amounts), dtype=np.int64)
    w = np.asarray([amounts[z] for z in zs.tolist()], dtype=np.float64)
    x = _magpie_table()[zs]  # (E, 22)
    wn = w / w.sum()
    any_nan = np.isnan(x).any(axis=0)
    with np.errstate(invalid="ignore"):
        mn = np.where(any_nan, np.nan, np.nanmin(np.where(np.isnan(x), np.inf, x), axis=0))
        mx = np.where(any_nan, np.nan, np.nanmax(np.where(np.isnan(x), -np.inf, x), axis=0))
        mean = wn @ x
        avg_dev = wn @ np.abs(x - mean)
    top = np.isclose(w, w.max())
    mode = np.min(np.where(top[:, None], x, np.inf), axis=0)  # NaN propagates through min
    stats = np.stack([mn, mx, mx - mn, mean, avg_dev, mode], axis=1)  # (22, 6)
    return stats.reshape(-1)


def scale_composition(fps: np.ndarray | Sequence[np.ndarray], scaler: str = "cdvae") -> np.ndarray:
    """(M, 132) standardised composition fingerprints, NaN → 0 (CDVAE's ``CompScaler``).

    ``scaler="cdvae"`` uses CDVAE's published means and standard deviations (what the
    coverage cut-offs were calibrated with).
    """
    from crystal_metrics._cdvae_scaler import CDVAE_COMP_MEANS, CDVAE_COMP_STDS

    if scaler != "cdvae":
        raise ValueError(f"unknown composition scaler {scaler!r}; allowed: cdvae")
    arr = np.asarray(fps, dtype=np.float64).reshape(-1, COMPOSITION_FP_SIZE)
    scaled = (arr - np.asarray(CDVAE_COMP_MEANS)) / np.asarray(CDVAE_COMP_STDS)
    return np.where(np.isnan(scaled), 0.0, scaled)
