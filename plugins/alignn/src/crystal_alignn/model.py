"""The ALIGNN network: embeddings, ALIGNN layers, gated GCN layers, average pooling, heads."""

from __future__ import annotations

import torch
from torch import nn

from crystal.batch import CrystalBatch
from crystal.element_features import derived_atom_features
from crystal.targets import TargetSet
from crystal_alignn.graph import alignn_graph, reference_graph
from crystal_alignn.layers import ALIGNNConv, EdgeGatedGraphConv, MLPLayer, RBFExpansion
from crystal_alignn.layers.alignn_conv import LayerOrder

__all__ = ["ALIGNN"]

_LINKS = {"identity": None, "log": torch.exp, "logit": torch.sigmoid}


class ALIGNN(nn.Module):
    """Atomistic Line Graph Neural Network (Choudhary & DeCost 2021), batched.

    .. math::
        x^{(0)} &= \\mathrm{MLP}(f_{Z})
            && f_Z \\text{: 93-dim one-hot element features} \\\\
        y^{(0)} &= \\mathrm{MLP}_2(\\mathrm{MLP}_1(\\mathrm{RBF}_{0..d_{max}}(d_{ij})))
            && \\text{edge\\_input\\_features bins} \\\\
        z^{(0)} &= \\mathrm{MLP}_2(\\mathrm{MLP}_1(\\mathrm{RBF}_{-1..1}(\\cos\\theta_{ijk})))
            && \\text{triplet\\_input\\_features bins} \\\\
        x, y, z &\\leftarrow \\mathrm{ALIGNNConv}(x, y, z) && \\times\\ \\text{alignn\\_layers} \\\\
        x, y &\\leftarrow \\mathrm{EGGC}_g(x, y) && \\times\\ \\text{gcn\\_layers} \\\\
        \\text{structure} &= W \\tfrac{1}{N_b} \\textstyle\\sum_{i \\in b} x_i + c,
        \\qquad \\text{atom}_i = W_a x_i + c_a

    ``link`` (the reference's ``link``): ``"log"`` applies ``exp``, ``"logit"`` ``sigmoid`` to
    the structure outputs. ``element_features`` replaces the derived 93-dim table (e.g. the
    92-dim CGCNN features of the released JARVIS models); ``reference_graph`` builds the
    graph as the reference does (:func:`~crystal_alignn.graph.reference_graph`).

    ``MLP`` = Linear → BatchNorm → SiLU (the first embedding MLPs map to
    ``embedding_features``, the others to ``hidden_features``). The graph (see
    :mod:`crystal_alignn.graph`) is built inside ``forward`` in float64 from the batch;
    features are then cast to the parameters' dtype. The line graph is only built when
    ``alignn_layers > 0``.

    Shapes: ``forward(batch)`` → ``(structure (B, targets.structure_width) or None,
    atom (N, targets.atom_width) or None)``.
    """

    element_features: torch.Tensor  # (101, 93) buffer, row Z = features of element Z

    def __init__(
        self,
        targets: TargetSet,
        *,
        bond_rbf_max: float = 8.0,
        max_neighbors: int = 12,
        alignn_layers: int = 4,
        gcn_layers: int = 4,
        edge_input_features: int = 80,
        triplet_input_features: int = 40,
        embedding_features: int = 64,
        hidden_features: int = 256,
        layer_order: LayerOrder = "atom-then-line",
        normalize_gates: bool = True,
        element_features: torch.Tensor | None = None,
        link: str = "identity",
        reference_graph: bool = False,
    ) -> None:
        super().__init__()
        self.max_neighbors = int(max_neighbors)
        self.reference_graph = bool(reference_graph)
        if link not in _LINKS:
            raise ValueError(f"unknown link {link!r} (choose from {', '.join(_LINKS)})")
        self.link = link
        # (Zmax + 1, D) float64, row 0 unused: the derived 93-dim features unless given
        table = derived_atom_features()[0] if element_features is None else element_features
        self.register_buffer("element_features", table.to(torch.get_default_dtype()))
        self.atom_embedding = MLPLayer(table.shape[1], hidden_features)
        self.edge_embedding = nn.Sequential(
            RBFExpansion(0.0, bond_rbf_max, edge_input_features),
            MLPLayer(edge_input_features, embedding_features),
            MLPLayer(embedding_features, hidden_features),
        )
        self.angle_embedding = (
            nn.Sequential(
                RBFExpansion(-1.0, 1.0, triplet_input_features),
                MLPLayer(triplet_input_features, embedding_features),
                MLPLayer(embedding_features, hidden_features),
            )
            if alignn_layers > 0
            else None
        )
        self.alignn_layers = nn.ModuleList(
            [ALIGNNConv(hidden_features, layer_order, normalize_gates) for _ in range(alignn_layers)]
        )
        self.gcn_layers = nn.ModuleList(
            [
                EdgeGatedGraphConv(hidden_features, hidden_features, normalize_gates=normalize_gates)
                for _ in range(gcn_layers)
            ]
        )
        self.fc = nn.Linear(hidden_features, targets.structure_width) if targets.structure_width else None
        self.fc_atom = nn.Linear(hidden_features, targets.atom_width) if targets.atom_width else None

    def forward(self, batch: CrystalBatch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if batch.dtype != torch.float64:
            batch = batch.to(dtype=torch.float64)
        dtype = next(self.parameters()).dtype
        build = reference_graph if self.reference_graph else alignn_graph
        graph = build(batch, self.max_neighbors, with_line_graph=self.angle_embedding is not None)

        x = self.atom_embedding(self.element_features[batch.atomic_numbers].to(dtype))  # (N, F)
        y = self.edge_embedding[1:](self.edge_embedding[0](graph.distances).to(dtype))  # (E, F)
        if self.angle_embedding is not None:
            assert graph.line_index is not None and graph.cosines is not None
            z = self.angle_embedding[1:](self.angle_embedding[0](graph.cosines).to(dtype))  # (T, F)
            for layer in self.alignn_layers:
                x, y, z = layer(graph.edge_index, graph.line_index, x, y, z)
        for gcn in self.gcn_layers:
            x, y = gcn(graph.edge_index, x, y)

        structure = None
        if self.fc is not None:
            b = len(batch)
            summed = x.new_zeros((b, x.shape[1])).index_add_(0, batch.batch, x)
            pooled = summed / batch.num_atoms.clamp(min=1).to(x.dtype)[:, None]  # (B, F) average pooling
            structure = self.fc(pooled)
            link = _LINKS[self.link]
            if link is not None:
                structure = link(structure)
        atom = self.fc_atom(x) if self.fc_atom is not None else None
        return structure, atom
