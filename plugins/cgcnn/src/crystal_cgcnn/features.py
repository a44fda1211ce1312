"""Element feature vectors for CGCNN.

Two sources:

* :func:`load_atom_init` — the original ``atom_init.json`` (``{"Z": [92 floats]}``) that the
  published checkpoints were trained with (not shipped here; pass its path).
* :func:`crystal.element_features.derived_atom_features` — 93 categorical features
  computed from element data following Table I of Xie & Grossman (2018), for models we
  train (it is not the published ``atom_init.json``).

Both return ``(table, known)``: a ``(Zmax + 1, D)`` float64 tensor indexed by atomic number
and a ``(Zmax + 1,)`` bool mask of the elements that have features.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from crystal.element_features import derived_atom_features
from crystal.errors import ConfigError

__all__ = ["derived_atom_features", "load_atom_init"]


def load_atom_init(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read an original CGCNN ``atom_init.json``."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        table = {int(k): [float(x) for x in v] for k, v in raw.items()}
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(f"encoder 'cgcnn': cannot read atom_init file {str(path)!r}: {exc}") from None
    if not table:
        raise ConfigError(f"encoder 'cgcnn': atom_init file {str(path)!r} is empty")
    dims = {len(v) for v in table.values()}
    if len(dims) != 1 or min(table) < 1:
        raise ConfigError(
            f"encoder 'cgcnn': atom_init file {str(path)!r} must map atomic numbers >= 1 to equal-length lists"
        )
    zmax, dim = max(table), dims.pop()
    out = torch.zeros((zmax + 1, dim), dtype=torch.float64)
    known = torch.zeros(zmax + 1, dtype=torch.bool)
    for z, v in table.items():
        out[z] = torch.tensor(v, dtype=torch.float64)
        known[z] = True
    return out, known
