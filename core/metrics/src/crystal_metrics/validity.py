"""Structural and compositional validity of generated crystals (CDVAE's definitions).

* **Structural** (CDVAE ``structure_validity``): every pair of *distinct* atoms is at least
  ``cutoff`` = 0.5 Å apart at its minimum-image (periodic) distance, and the cell volume is
  at least 0.1 Å³. An atom's own periodic images are not counted, as in CDVAE (pymatgen's
  distance matrix with a padded diagonal). Batched: one periodic radius search
  (:func:`crystal.neighbors.radius_graph`) with radius ``cutoff`` over the whole batch; a
  crystal is invalid when any edge ``i ≠ j`` is found.
* **Compositional** (CDVAE ``smact_validity``, SMACT charge neutrality plus Pauling
  electronegativity test): the reduced composition ``{element: count / gcd}`` is valid when
  it has a single element, or only metals (alloys), or when some combination of one
  oxidation state per element (SMACT's default ``oxidation_states`` lists) balances charge
  with the reduced counts and passes the Pauling test (anions more electronegative than
  cations; elements without electronegativity data pass). More than 10⁷ oxidation-state
  combinations count as invalid, as in CDVAE/DiffCSP. The oxidation states are SMACT's
  original lists by default (what CDVAE/DiffCSP ran with; SMACT ≥ 3 changed its default):
  on the Perov-5 test set they give 98.60 % valid compositions, SMACT 4's new default 98.31 %.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from crystal.batch import CrystalBatch

if TYPE_CHECKING:
    from pymatgen.core import Structure

__all__ = ["composition_validity", "smact_validity", "structure_validity"]

MIN_VOLUME = 0.1  # Å³, CDVAE's "unrealistically small lattice"


def structure_validity(
    crystals: CrystalBatch | Sequence[Structure], cutoff: float = 0.5, min_volume: float = MIN_VOLUME
) -> torch.Tensor:
    """(B,) bool: no two distinct atoms closer than ``cutoff`` Å and volume ≥ ``min_volume`` Å³.

    NaN/inf coordinates or lattices count as invalid. Shapes: the batch's ``N`` atoms in
    ``B`` crystals; the result lives on the batch's device.
    """
    batch = crystals if isinstance(crystals, CrystalBatch) else CrystalBatch.from_structures(list(crystals))
    if len(batch) == 0:
        return torch.zeros(0, dtype=torch.bool, device=batch.device)
    finite_atom = torch.isfinite(batch.frac_coords).all(dim=1)
    bad_atoms = torch.zeros(len(batch), dtype=torch.long, device=batch.device).index_add_(
        0, batch.batch, (~finite_atom).long()
    )
    finite = (bad_atoms == 0) & torch.isfinite(batch.lattices).flatten(1).all(dim=1)
    volumes = torch.where(finite, batch.volumes, torch.zeros_like(batch.volumes))
    valid = finite & (volumes >= min_volume) & (batch.num_atoms > 0)
    if not bool(valid.any()):
        return valid
    from crystal.neighbors import radius_graph

    sub_index = torch.nonzero(valid).flatten()
    sub = batch.select(sub_index)
    graph = radius_graph(sub, cutoff)
    src, dst = graph.edge_index
    close = (src != dst) & (graph.distances < cutoff)
    n_close = torch.zeros(len(sub), dtype=torch.long, device=sub.device).index_add_(0, sub.batch[src], close.long())
    valid[sub_index] = n_close == 0
    return valid


OxidationStates = Literal["smact14", "icsd24"]


@lru_cache(maxsize=4096)
def smact_validity(
    elements: tuple[str, ...],
    counts: tuple[int, ...],
    use_pauling_test: bool = True,
    include_alloys: bool = True,
    oxidation_states: OxidationStates = "smact14",
) -> bool:
    """CDVAE's SMACT test for a reduced composition given as element symbols and counts.

    ``oxidation_states="smact14"`` uses SMACT's original oxidation-state lists (the default
    ``Element.oxidation_states`` of SMACT 2.x, which CDVAE and DiffCSP ran with;
    ``Element.oxidation_states_smact14`` in SMACT ≥ 3); ``"icsd24"`` uses SMACT ≥ 3's new
    default (states seen in the 2024 ICSD).
    """
    import smact
    from smact.screening import pauling_test

    if len(set(elements)) == 1:
        return True
    if include_alloys and all(e in smact.metals for e in elements):
        return True
    space = smact.element_dictionary(elements)
    smact_elements = [space[e] for e in elements]
    electronegativities = [e.pauling_eneg for e in smact_elements]
    if oxidation_states not in ("smact14", "icsd24"):
        raise ValueError(f"oxidation_states must be 'smact14' or 'icsd24', got {oxidation_states!r}")
    attribute = "oxidation_states" if oxidation_states == "icsd24" else "oxidation_states_smact14"
    if not hasattr(smact_elements[0], "oxidation_states_smact14"):  # SMACT 2.x: the original lists are the default
        attribute = "oxidation_states"
    ox_combos: list[list[int]] = [list(getattr(e, attribute) or []) for e in smact_elements]
    if math.prod(len(ox) for ox in ox_combos) > 1e7:
        return False
    threshold = max(counts)
    stoichs = [(c,) for c in counts]
    for ox_states in itertools.product(*ox_combos):
        ratios = smact.neutral_ratios(ox_states, stoichs=stoichs, threshold=threshold)
        # SMACT < 3 returns (is_neutral, ratios); SMACT >= 3 returns the list of ratios
        neutral = ratios[0] if isinstance(ratios, tuple) and ratios and isinstance(ratios[0], bool) else bool(ratios)
        if not neutral:
            continue
        if not use_pauling_test:
            return True
        try:
            electronegativity_ok = pauling_test(ox_states, electronegativities)
        except TypeError:  # no electronegativity data: accepted, as in CDVAE
            electronegativity_ok = True
        if electronegativity_ok:
            return True
    return False


def _reduced(atomic_numbers: Sequence[int]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    from pymatgen.core.periodic_table import Element

    zs, counts = np.unique(np.asarray(atomic_numbers, dtype=np.int64), return_counts=True)
    counts = counts // np.gcd.reduce(counts)
    return tuple(Element.from_Z(int(z)).symbol for z in zs), tuple(int(c) for c in counts)


def composition_validity(
    crystals: CrystalBatch | Sequence[Structure], oxidation_states: OxidationStates = "smact14"
) -> torch.Tensor:
    """(B,) bool: SMACT validity of every crystal's reduced composition (cached per composition)."""
    if isinstance(crystals, CrystalBatch):
        ptr = crystals.ptr.tolist()
        zs = crystals.atomic_numbers.tolist()
        groups = [zs[ptr[b] : ptr[b + 1]] for b in range(len(crystals))]
    else:
        groups = [[site.specie.Z for site in s] for s in crystals]
    out = [bool(len(g) > 0 and smact_validity(*_reduced(g), oxidation_states=oxidation_states)) for g in groups]
    return torch.tensor(out, dtype=torch.bool)
