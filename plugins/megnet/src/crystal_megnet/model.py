"""The MEGNet network for crystals (Chen, Ye, Zuo, Zheng & Ong, Chem. Mater. 31, 3564 (2019)).

Inputs built from a :class:`~crystal.batch.CrystalBatch` (float64 geometry, then cast to the
parameters' dtype):

* atoms: ``v⁰_i = Embedding(Z_i)`` (N, 16);
* bonds: every ordered pair ``(s_k, r_k)`` closer than ``cutoff`` (4 Å), periodic images
  included, ``e⁰_k = exp(-(d_k - μ_m)² / σ²)`` with 100 centres ``μ`` from 0 to 5 Å and
  ``σ = 0.5`` Å (E, 100);
* state: ``u⁰_b`` = the crystal's declared state inputs (``batch.crystal_properties``, e.g.
  temperature), or the reference code's default state ``[0, 0]`` when none is declared (B, S).

Network (``make_megnet_model`` of the reference code, n1/n2/n3 = 64/32/16)::

    v, e, u ← FF(v⁰), FF(e⁰), FF(u⁰)                    FF = Dense(64)·ssp → Dense(32)·ssp
    for block t = 1 … 3:
        (a, b, c) ← (v, e, u) if t = 1 else (FF_t(v), FF_t(e), FF_t(u))
        (v, e, u) ← (v, e, u) + Dropout(MEGNetLayer(a, b, c))       residual
    x_b = Set2Set_v({v_i}_{i∈b}) ⊕ Set2Set_e({e_k}_{k∈b}) ⊕ u_b     (B, 32 + 32 + 32)
    y_b = Dense(out)(ssp Dense(16)(ssp Dense(32)(Dropout(x_b))))    structure targets
    y_i = Dense(out)(ssp Dense(16)(ssp Dense(32)(v_i)))             atom targets (extension)

with ``ssp = softplus2``. Set2Set attention and the means of the MEGNet layer make every
output intensive: a supercell gives the same structure outputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from crystal.basis import gaussian_expansion
from crystal.batch import CrystalBatch
from crystal.errors import StructureError
from crystal.neighbors import radius_graph
from crystal.targets import TargetSet
from crystal_megnet.dense import DenseStack
from crystal_megnet.graph_network import MEGNetLayer
from crystal_megnet.set2set import Set2Set

__all__ = ["DEFAULT_STATE", "MEGNet", "state_inputs"]

#: the reference code's state input for crystals when no state attribute is given
DEFAULT_STATE = (0.0, 0.0)


def state_inputs(
    batch: CrystalBatch, names: Sequence[str], defaults: Mapping[str, float], dtype: torch.dtype
) -> torch.Tensor:
    """The global state input ``u⁰`` (B, S) of every crystal.

    Column ``j`` is ``batch.crystal_properties[names[j]]`` (shape (B,) or (B, 1)), or
    ``defaults[names[j]]`` for every crystal when the batch does not carry that property.
    Without declared names it is the reference code's default state ``[0, 0]`` (B, 2).
    Raises :class:`StructureError` naming a declared input that is absent and has no default.
    """
    b, device = len(batch), batch.device
    if not names:
        return torch.tensor(DEFAULT_STATE, dtype=dtype, device=device).expand(b, len(DEFAULT_STATE))
    columns = []
    for name in names:
        value = batch.crystal_properties.get(name)
        if value is None:
            if name not in defaults:
                available = ", ".join(sorted(batch.crystal_properties)) or "none"
                raise StructureError(
                    f"encoder 'megnet': state input {name!r} is missing from the batch's crystal properties "
                    f"(available: {available}) and has no state_default; provide it per crystal or set "
                    f"state_default={{{name!r}: value}}"
                )
            columns.append(torch.full((b,), float(defaults[name]), dtype=dtype, device=device))
            continue
        if value.shape[0] != b or value.reshape(b, -1).shape[1] != 1:
            raise StructureError(
                f"encoder 'megnet': state input {name!r} must hold one number per crystal, shape ({b},), "
                f"got {tuple(value.shape)}"
            )
        columns.append(value.reshape(b).to(device=device, dtype=dtype))
    return torch.stack(columns, dim=1)


class MEGNet(nn.Module):
    """MEGNet for crystals; ``forward(batch)`` returns ``(structure_block, atom_block)``.

    Args:
        targets: the :class:`TargetSet`; its widths size the heads.
        state_names / state_defaults: declared per-crystal state inputs and their defaults.
        max_atomic_number: largest Z of the element embedding (rows 0 … max Z).
        embedding_dim: atom embedding width (16).
        cutoff: bond cutoff radius, Å (4).
        gaussian_start / gaussian_stop / num_gaussians / gaussian_width: bond expansion (0, 5 Å, 100, 0.5 Å).
        hidden_dim / block_dim / readout_dim: the reference's n1 / n2 / n3 (64 / 32 / 16).
        num_blocks: MEGNet blocks (3).
        set2set_steps: Set2Set attention steps (3).
        dropout: dropout rate after every block and before the readout (training only).
    """

    def __init__(
        self,
        targets: TargetSet,
        *,
        state_names: Sequence[str] = (),
        state_defaults: Mapping[str, float] | None = None,
        max_atomic_number: int = 94,
        embedding_dim: int = 16,
        cutoff: float = 4.0,
        gaussian_start: float = 0.0,
        gaussian_stop: float = 5.0,
        num_gaussians: int = 100,
        gaussian_width: float = 0.5,
        hidden_dim: int = 64,
        block_dim: int = 32,
        readout_dim: int = 16,
        num_blocks: int = 3,
        set2set_steps: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.state_names = tuple(state_names)
        self.state_defaults = dict(state_defaults or {})
        self.cutoff = float(cutoff)
        self.gaussian = (float(gaussian_start), float(gaussian_stop), int(num_gaussians), float(gaussian_width))
        state_dim = len(self.state_names) or len(DEFAULT_STATE)

        self.embedding = nn.Embedding(max_atomic_number + 1, embedding_dim)
        nn.init.uniform_(self.embedding.weight, -0.05, 0.05)  # Keras Embedding default
        ff = [hidden_dim, block_dim]
        self.preblock_v = DenseStack([embedding_dim, *ff], activate_last=True)
        self.preblock_e = DenseStack([num_gaussians, *ff], activate_last=True)
        self.preblock_u = DenseStack([state_dim, *ff], activate_last=True)
        # block 0 reads the pre-block features directly; blocks 1 … have their own FF
        self.block_ff = nn.ModuleList(
            nn.ModuleList(DenseStack([block_dim, *ff], activate_last=True) for _ in range(3))
            for _ in range(num_blocks - 1)
        )
        self.blocks = nn.ModuleList(
            MEGNetLayer(block_dim, block_dim, block_dim, hidden_dim, block_dim) for _ in range(num_blocks)
        )
        self.dropout = nn.Dropout(dropout)
        self.set2set_v: Set2Set | None = None
        self.set2set_e: Set2Set | None = None
        self.structure_head: DenseStack | None = None
        if targets.structure_width:
            self.set2set_v = Set2Set(block_dim, readout_dim, set2set_steps)
            self.set2set_e = Set2Set(block_dim, readout_dim, set2set_steps)
            pooled = self.set2set_v.out_dim + self.set2set_e.out_dim + block_dim
            self.structure_head = DenseStack(
                [pooled, block_dim, readout_dim, targets.structure_width], activate_last=False
            )
        self.atom_head = (
            DenseStack([block_dim, block_dim, readout_dim, targets.atom_width], activate_last=False)
            if targets.atom_width
            else None
        )

    def forward(self, batch: CrystalBatch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        dtype = self.embedding.weight.dtype
        num_crystals = len(batch)
        atom_crystal = batch.batch
        geometry = batch if batch.dtype == torch.float64 else batch.to(dtype=torch.float64)
        graph = radius_graph(geometry, self.cutoff)
        edge_index = graph.edge_index
        bond_crystal = atom_crystal[edge_index[0]]
        start, stop, num, width = self.gaussian
        e0 = gaussian_expansion(graph.distances.to(dtype), start, stop, num=num, width=width)
        u0 = state_inputs(batch, self.state_names, self.state_defaults, dtype)

        v = self.preblock_v(self.embedding(batch.atomic_numbers))
        e = self.preblock_e(e0)
        u = self.preblock_u(u0)
        for t, layer in enumerate(self.blocks):
            if t == 0:
                a, b, c = v, e, u
            else:
                ff_v, ff_e, ff_u = self.block_ff[t - 1]
                a, b, c = ff_v(v), ff_e(e), ff_u(u)
            dv, de, du = layer(a, b, c, edge_index, atom_crystal, bond_crystal)
            v = v + self.dropout(dv)
            e = e + self.dropout(de)
            u = u + self.dropout(du)

        structure = None
        if self.structure_head is not None:
            assert self.set2set_v is not None and self.set2set_e is not None
            pooled = torch.cat(
                [
                    self.set2set_v(v, atom_crystal, num_crystals),
                    self.set2set_e(e, bond_crystal, num_crystals),
                    u,
                ],
                dim=-1,
            )
            structure = self.structure_head(self.dropout(pooled))
        atom = self.atom_head(v) if self.atom_head is not None else None
        return structure, atom
