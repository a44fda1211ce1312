"""The MEGNet graph-network layer: bond, then atom, then global-state update.

For a batch of crystals with atom features ``v`` (N, F_v), bond features ``e`` (E, F_e) and
state features ``u`` (B, F_u), bond ``k`` going from its sender atom ``s_k`` to its
receiver ``r_k`` in crystal ``b_k`` (eqs. 1–6 of Chen et al. 2019):

.. math::

    e'_k &= \\phi_e(v_{s_k} \\oplus v_{r_k} \\oplus e_k \\oplus u_{b_k})

    \\bar v^e_i &= \\frac{1}{|\\{k: s_k = i\\}|} \\sum_{k: s_k = i} e'_k

    v'_i &= \\phi_v(\\bar v^e_i \\oplus v_i \\oplus u_{b_i})

    \\bar u^e_b &= \\operatorname{mean}_{k \\in b} e'_k, \\quad
    \\bar u^v_b = \\operatorname{mean}_{i \\in b} v'_i

    u'_b &= \\phi_u(\\bar u^e_b \\oplus \\bar u^v_b \\oplus u_b)

Every φ is a dense stack ``[n1, n1, n2]`` (64, 64, 32) with softplus2 between layers and a
linear last layer, as ``MEGNetLayer._mlp`` of the reference code. Bonds are directed and
both directions of every pair are present, so the bonds "sent" by an atom are also all the
bonds it takes part in. An atom without bonds gets ``v̄^e_i = 0``, a crystal without bonds
``ū^e_b = 0``.
"""

from __future__ import annotations

import torch
from torch import nn

from crystal_megnet.dense import DenseStack
from crystal_megnet.scatter import segment_mean

__all__ = ["MEGNetLayer"]


class MEGNetLayer(nn.Module):
    """One graph-network update ``(v, e, u) → (v', e', u')``.

    Args:
        dim_v, dim_e, dim_u: input widths of atom, bond and state features.
        hidden_dim: width of the two hidden layers of every φ (``n1``, 64).
        out_dim: output width of every φ (``n2``, 32).

    Shapes: ``v`` (N, dim_v), ``e`` (E, dim_e), ``u`` (B, dim_u), ``edge_index`` (2, E) as
    (sender, receiver), ``atom_crystal`` (N,), ``bond_crystal`` (E,) → (N, out), (E, out), (B, out).
    """

    def __init__(self, dim_v: int, dim_e: int, dim_u: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        widths = [hidden_dim, hidden_dim, out_dim]
        self.phi_e = DenseStack([2 * dim_v + dim_e + dim_u, *widths], activate_last=False)
        self.phi_v = DenseStack([out_dim + dim_v + dim_u, *widths], activate_last=False)
        self.phi_u = DenseStack([out_dim + out_dim + dim_u, *widths], activate_last=False)

    def forward(
        self,
        v: torch.Tensor,
        e: torch.Tensor,
        u: torch.Tensor,
        edge_index: torch.Tensor,
        atom_crystal: torch.Tensor,
        bond_crystal: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sender, receiver = edge_index[0], edge_index[1]
        num_atoms, num_crystals = v.shape[0], u.shape[0]
        e_new = self.phi_e(torch.cat([v[sender], v[receiver], e, u[bond_crystal]], dim=-1))
        v_bar_e = segment_mean(e_new, sender, num_atoms)
        v_new = self.phi_v(torch.cat([v_bar_e, v, u[atom_crystal]], dim=-1))
        u_bar_e = segment_mean(e_new, bond_crystal, num_crystals)
        u_bar_v = segment_mean(v_new, atom_crystal, num_crystals)
        u_new = self.phi_u(torch.cat([u_bar_e, u_bar_v, u], dim=-1))
        return v_new, e_new, u_new
