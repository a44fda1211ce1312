"""MACE's interaction block: equivariant atomic basis ``A`` (Batatia et al. 2022).

MACE's ``RealAgnosticResidualInteractionBlock`` (``residual=True``, the reference code's default for
every layer of its ``ScaleShiftMACE``)::

    sc_i            = Σ_{k'} W^{sc}_{z_i k k' L} h_{i,k'LM}                     element-dependent self-connection
    h̃_j             = Linear_up(h_j)                                           channel mixing per irrep
    R_{ij}          = MLP(RadialEmbedding(r_ij))                               (E, num_paths·K), SiLU MLP
    φ_{ij,k l3 m3}  = Σ R_{ij,k,path} C^{l3 m3}_{l1 m1, l2 m2} h̃_{j,k l1 m1} Y_{l2 m2}(r̂_ij)   ("uvu" tensor product)
    A_{i,k LM}      = Linear( Σ_{j ∈ N(i)} φ_{ij} ) / avg_num_neighbors

``residual=False`` is ``RealAgnosticInteractionBlock`` (what mace-torch's ``--model MACE`` uses for the
first layer): no ``sc``; instead ``A_i ← Σ_{k'} W_{z_i k k' L} A_{i,k'LM}`` (element-dependent linear map of
the message).

Shapes: node features (N, hidden.dim) -> A (N, K, D) with D = Σ_{l ≤ max_ell} (2l+1), and sc (N, out.dim).
Edges: ``edge_index[0]`` = receiver i, ``edge_index[1]`` = sender j.
"""

from __future__ import annotations

import torch
from e3nn import nn as enn
from e3nn import o3
from torch import nn

__all__ = ["InteractionBlock", "reshape_irreps", "tp_out_irreps_with_instructions"]


def tp_out_irreps_with_instructions(
    irreps_in: o3.Irreps, irreps_edge: o3.Irreps, target: o3.Irreps
) -> tuple[o3.Irreps, list[tuple[int, int, int, str, bool]]]:
    """Output irreps and "uvu" instructions of the node ⊗ spherical-harmonics product, restricted to
    the irreps present in ``target`` (one output block per path, sorted by irrep)."""
    out: list[tuple[int, o3.Irrep]] = []
    instructions: list[tuple[int, int, int, str, bool]] = []
    for i, (mul, ir_in) in enumerate(irreps_in):
        for j, (_, ir_edge) in enumerate(irreps_edge):
            for ir_out in ir_in * ir_edge:
                if ir_out in target:
                    instructions.append((i, j, len(out), "uvu", True))
                    out.append((mul, ir_out))
    irreps_out, perm, _ = o3.Irreps(out).sort()
    # ordered by output block, as the reference code: the radial MLP's outputs (the per-edge path weights)
    # are laid out in instruction order
    instructions = sorted(((i, j, perm[k], mode, train) for i, j, k, mode, train in instructions), key=lambda t: t[2])
    return irreps_out, instructions


def reshape_irreps(x: torch.Tensor, irreps: o3.Irreps) -> torch.Tensor:
    """(N, irreps.dim) with every irrep at multiplicity K -> (N, K, Σ (2l+1))."""
    parts = []
    for (mul, ir), sl in zip(irreps, irreps.slices(), strict=True):
        parts.append(x[:, sl].reshape(x.shape[0], mul, ir.dim))
    return torch.cat(parts, dim=-1)


class InteractionBlock(nn.Module):
    """One MACE interaction (message) layer; see the module docstring for the formulas.

    Args:
        node_irreps: irreps of the incoming node features ``h`` (layer 1: ``K x 0e``).
        num_elements: size of the one-hot element encoding (for the self-connection).
        sh_irreps: irreps of the spherical harmonics ``Y_l``, l ≤ max_ell.
        num_radial: number of radial features per edge.
        target_irreps: irreps of ``A`` (``K x (0e + 1o + … )``, every irrep at the same multiplicity).
        sc_irreps: irreps of the self-connection (= the product basis's output irreps).
        residual: return the self-connection ``sc`` (True) or apply the element-dependent linear map to
            the message instead and return ``sc = None`` (False).
        radial_mlp: hidden widths of the radial MLP (SiLU).
        avg_num_neighbors: normalisation of the neighbour sum.
    """

    def __init__(
        self,
        node_irreps: o3.Irreps,
        num_elements: int,
        sh_irreps: o3.Irreps,
        num_radial: int,
        target_irreps: o3.Irreps,
        sc_irreps: o3.Irreps,
        radial_mlp: list[int],
        avg_num_neighbors: float,
        residual: bool = True,
    ) -> None:
        super().__init__()
        self.residual = residual
        self.node_irreps = o3.Irreps(node_irreps)
        self.target_irreps = o3.Irreps(target_irreps)
        self.avg_num_neighbors = float(avg_num_neighbors)
        attr_irreps = o3.Irreps(f"{num_elements}x0e")
        if residual:
            self.skip_tp = o3.FullyConnectedTensorProduct(self.node_irreps, attr_irreps, o3.Irreps(sc_irreps))
        else:
            self.skip_tp = o3.FullyConnectedTensorProduct(self.target_irreps, attr_irreps, self.target_irreps)
        self.linear_up = o3.Linear(self.node_irreps, self.node_irreps)
        irreps_mid, instructions = tp_out_irreps_with_instructions(self.node_irreps, sh_irreps, self.target_irreps)
        self.conv_tp = o3.TensorProduct(
            self.node_irreps, sh_irreps, irreps_mid, instructions, shared_weights=False, internal_weights=False
        )
        self.radial = enn.FullyConnectedNet(
            [num_radial, *radial_mlp, self.conv_tp.weight_numel], torch.nn.functional.silu
        )
        self.linear = o3.Linear(irreps_mid, self.target_irreps)

    def forward(
        self,
        node_feats: torch.Tensor,
        node_attrs: torch.Tensor,
        edge_attrs: torch.Tensor,
        edge_feats: torch.Tensor,
        edge_index: torch.Tensor,
        cutoff: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """node_feats (N, node.dim), node_attrs (N, Z) one-hot, edge_attrs (E, sh.dim), edge_feats (E, R),
        edge_index (2, E), cutoff (E, 1) envelope applied to the radial MLP's output (models whose radial
        features carry no envelope, mace-torch's ``apply_cutoff=False``) or None
        -> (A (N, K, D), sc (N, sc.dim) or None)."""
        receiver, sender = edge_index[0], edge_index[1]
        sc = self.skip_tp(node_feats, node_attrs) if self.residual else None
        h = self.linear_up(node_feats)
        weights = self.radial(edge_feats)  # (E, weight_numel)
        if cutoff is not None:
            weights = weights * cutoff
        messages = self.conv_tp(h[sender], edge_attrs, weights)  # (E, mid.dim)
        summed = torch.zeros(node_feats.shape[0], messages.shape[1], dtype=messages.dtype, device=messages.device)
        summed = summed.index_add(0, receiver, messages)
        a = self.linear(summed) / self.avg_num_neighbors
        if not self.residual:
            a = self.skip_tp(a, node_attrs)
        return reshape_irreps(a, self.target_irreps), sc
