"""Element feature vectors derived from element data (no copied data file).

:func:`derived_atom_features` is a categorical (one-hot) encoding computed from element
data in pymatgen and ASE, following Table I of Xie & Grossman, PRL 120, 145301 (2018) —
the CGCNN atom features that ALIGNN (Choudhary & DeCost 2021) also uses: group (18),
period (9: rows 1–7, lanthanides, actinides), electronegativity (10 bins, 0.5–4.0),
covalent radius (10 bins, 25–250 pm), valence electrons (12), first ionisation energy
(10 bins, log10 kJ/mol 1.3–3.3), electron affinity (10 bins, −3–3.7 eV), block (4) and
atomic volume (10 bins, log10 cm³/mol 1.5–4.3) = 93 features, for Z = 1–100.

It is NOT the published CGCNN ``atom_init.json`` (whose exact source data are not public):
models trained with it cannot use the published checkpoints and vice versa.

Returns ``(table, known)``: a ``(101, 93)`` float64 tensor indexed by atomic number and a
``(101,)`` bool mask of the elements that have features (all but Z = 0).
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache

import torch

__all__ = ["DERIVED_MAX_Z", "derived_atom_features"]

DERIVED_MAX_Z = 100


def _one_hot(index: int | None, n: int) -> list[float]:
    v = [0.0] * n
    if index is not None:
        v[min(max(index, 0), n - 1)] = 1.0
    return v


def _binned(value: float | None, lo: float, hi: float, n: int = 10) -> list[float]:
    if value is None or not math.isfinite(value):
        return [0.0] * n
    return _one_hot(int((value - lo) / (hi - lo) * n), n)


def _safe(fn):  # type: ignore[no-untyped-def]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            v = fn()
        return None if v is None else float(v)
    except Exception:
        return None


def _valence_electrons(group: int, block: str) -> int | None:
    if block == "f":
        return None
    if group <= 12:
        return group
    return group - 10  # p block: 3 (B) ... 8 (Ne)


@lru_cache(maxsize=1)
def derived_atom_features() -> tuple[torch.Tensor, torch.Tensor]:
    """93-dim categorical element features for Z = 1–100 (see the module docstring)."""
    from ase.data import covalent_radii
    from pymatgen.core import Element

    rows = [[0.0] * 93]
    for z in range(1, DERIVED_MAX_Z + 1):
        el = Element.from_Z(z)
        block = el.block
        group = int(el.group)
        if el.is_lanthanoid:
            period = 7
        elif el.is_actinoid:
            period = 8
        else:
            period = int(el.row) - 1
        ie = _safe(lambda el=el: el.ionization_energies[0])  # eV
        ie_log = math.log10(ie * 96.485) if ie and ie > 0 else None
        vol = _safe(lambda el=el: el.molar_volume)  # cm^3/mol
        vol_log = math.log10(vol) if vol and vol > 0 else None
        valence = _valence_electrons(group, block)
        feat = (
            _one_hot(group - 1, 18)
            + _one_hot(period, 9)
            + _binned(_safe(lambda el=el: el.X), 0.5, 4.0)
            + _binned(float(covalent_radii[z]) * 100.0, 25.0, 250.0)
            + _one_hot(None if valence is None else valence - 1, 12)
            + _binned(ie_log, 1.3, 3.3)
            + _binned(_safe(lambda el=el: el.electron_affinity), -3.0, 3.7)
            + _one_hot("spdf".index(block) if block in "spdf" else None, 4)
            + _binned(vol_log, 1.5, 4.3)
        )
        rows.append(feat)
    table = torch.tensor(rows, dtype=torch.float64)
    known = torch.ones(DERIVED_MAX_Z + 1, dtype=torch.bool)
    known[0] = False
    return table, known
