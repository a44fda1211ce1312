"""Line graph (bond graph) of a directed atom graph, with bond-angle cosines (ALIGNN).

Nodes of the line graph are the edges of the atom graph. Following ALIGNN
(``g.line_graph(shared=True)`` in DGL, default ``backtracking=True``), there is a
line-graph edge ``e1 → e2`` for every pair of bonds ``e1 = (a → b)``, ``e2 = (b → c)``
that meet head-to-tail at the shared atom ``b`` (``dst(e1) = src(e2)``); the reverse bond
(``c = a``) and, for self-image bonds ``b → b``, the bond itself are included, so the
number of line-graph edges is :math:`T = \\sum_v \\mathrm{indeg}(v)\\,\\mathrm{outdeg}(v)`.
The feature is ALIGNN's ``compute_bond_cosines``:

.. math::  \\cos\\theta_{e_1 e_2} = \\frac{(-\\mathbf{r}_{e_1}) \\cdot \\mathbf{r}_{e_2}}
           {\\lVert \\mathbf{r}_{e_1} \\rVert \\, \\lVert \\mathbf{r}_{e_2} \\rVert}
           \\quad\\text{clamped to } [-1, 1]

i.e. the angle ``a–b–c`` at the shared atom, with ``r_e = r_dst + n L - r_src``.

Shapes: ``edge_index`` (2, E) as (source, destination), ``vectors`` (E, 3) →
line-graph ``edge_index`` (2, T) of bond indices (e1, e2) and ``cosines`` (T,).
Pairs never cross crystals since bonds do not.
"""

from __future__ import annotations

import torch

__all__ = ["line_graph"]


def line_graph(
    edge_index: torch.Tensor,
    vectors: torch.Tensor,
    num_nodes: int | None = None,
    cutoff: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bond graph of ``edge_index`` and the cosine of every bond angle (vectorised, CSR).

    ``cutoff`` (Å), when given, restricts the line graph to bonds shorter than it (both
    bonds of a pair), as for ALIGNN's shorter line-graph cutoff; indices still refer to the
    original bonds. ``num_nodes`` defaults to ``edge_index.max() + 1``. Cosines are
    differentiable with respect to ``vectors``.
    """
    device = edge_index.device
    bonds = torch.arange(edge_index.shape[1], device=device)
    if cutoff is not None:
        bonds = bonds[vectors.detach().norm(dim=-1) < cutoff]
    if num_nodes is None:
        num_nodes = int(edge_index.max()) + 1 if edge_index.numel() else 0
    src, dst = edge_index[0, bonds], edge_index[1, bonds]
    # CSR of outgoing bonds per atom
    order = torch.argsort(src, stable=True)
    out_bonds = bonds[order]
    out_deg = torch.bincount(src, minlength=num_nodes)
    out_start = torch.cumsum(out_deg, 0) - out_deg
    # every incoming bond e1 = (a -> b) pairs with all outgoing bonds e2 = (b -> c)
    reps = out_deg[dst]  # (E',)
    e1 = torch.repeat_interleave(bonds, reps)
    offset = torch.arange(int(reps.sum()), device=device) - torch.repeat_interleave(torch.cumsum(reps, 0) - reps, reps)
    e2 = out_bonds[torch.repeat_interleave(out_start[dst], reps) + offset]
    r1, r2 = -vectors[e1], vectors[e2]
    cosines = (r1 * r2).sum(-1) / (r1.norm(dim=-1) * r2.norm(dim=-1))
    return torch.stack([e1, e2]), cosines.clamp(-1.0, 1.0)
