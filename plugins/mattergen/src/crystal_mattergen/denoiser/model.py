"""MatterGen's score network: a GemNet-T on the periodic graph with a time embedding, property
conditions (base-model embeddings concatenated to the time embedding; adapter conditions mixed
into every interaction block) and three heads — fractional-coordinate score, lattice score and
atom-type logits (Zeni et al., Nature 2025, Methods "Score network" and "Fine-tuning").

Semantics and parameter layout follow microsoft/mattergen's ``GemNetTDenoiser`` /
``GemNetTAdapter`` (``GemNetT`` / ``GemNetTCtrl``), so a released state dict (prefix
``diffusion_module.model.`` stripped) loads with ``strict=True``. Written independently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from crystal.config import StrictModel
from crystal_mattergen.denoiser.graph import build_interaction_graph
from crystal_mattergen.denoiser.layers import (
    CircularBasis,
    Dense,
    EdgeEmbedding,
    InteractionBlock,
    OutputBlock,
    RadialBasis,
    TripletDownProjection,
    scatter_sum,
)
from crystal_mattergen.denoiser.properties import (
    MAX_ATOMIC_NUM,
    PROPERTY_NAMES,
    NoiseLevelEncoding,
    PropertyEmbedding,
    mask_disallowed_elements,
)

__all__ = [
    "GEMNET_DT_SCALES",
    "MASK_TOKEN",
    "NUM_ATOM_CLASSES",
    "DenoiserConfig",
    "DenoiserOutput",
    "MatterGenDenoiser",
    "PropertyEmbeddingConfig",
]

MASK_TOKEN = MAX_ATOMIC_NUM + 1
NUM_ATOM_CLASSES = MAX_ATOMIC_NUM + 1

#: Fixed scaling factors used at initialisation (GemNet-dT, fitted on OC20 by the GemNet
#: authors; the values microsoft/mattergen ships in ``gemnet-dT.json``). Released checkpoints
#: store their own copies (``*.scale_factor``); blocks not listed start at 1.
GEMNET_DT_SCALES: dict[str, float] = {
    "TripInteraction_1_had_rbf": 18.873615264892578,
    "TripInteraction_1_sum_cbf": 7.996850490570068,
    "AtomUpdate_1_sum": 1.220463752746582,
    "TripInteraction_2_had_rbf": 16.10817527770996,
    "TripInteraction_2_sum_cbf": 7.614634037017822,
    "AtomUpdate_2_sum": 0.9690994620323181,
    "TripInteraction_3_had_rbf": 15.01930046081543,
    "TripInteraction_3_sum_cbf": 7.025179862976074,
    "AtomUpdate_3_sum": 0.8903237581253052,
    "OutBlock_0_sum": 1.6437848806381226,
    "OutBlock_0_had": 16.161039352416992,
    "OutBlock_1_sum": 1.1077653169631958,
    "OutBlock_1_had": 13.54678726196289,
    "OutBlock_2_sum": 0.9477927684783936,
    "OutBlock_2_had": 12.754337310791016,
    "OutBlock_3_sum": 0.9059251546859741,
    "OutBlock_3_had": 13.484951972961426,
}


class PropertyEmbeddingConfig(StrictModel):
    """One condition of the model."""

    kind: Literal["scalar", "space_group", "chemical_system"] = Field(
        description="scalar: sinusoidal encoding of the standardised value; space_group: 230 learnt "
        "vectors; chemical_system: linear map of the 101-long multi-hot element vector"
    )
    hidden_dim: int = Field(512, ge=2, description="embedding width (reference: 512)")
    scaler: bool = Field(True, description="standardise the value with the stored mean/std (scalar properties)")
    log10_transform: bool = Field(False, description="standardise log10(value) instead of the value")


class DenoiserConfig(StrictModel):
    """Architecture of the MatterGen denoiser. Defaults are the released models' (Alex-MP-20)."""

    hidden_dim: int = Field(512, ge=2, description="width of the time embedding (reference: 512)")
    latent_dim: int = Field(
        512, ge=2, description="per-crystal latent width: hidden_dim + widths of the base property embeddings"
    )
    atom_embedding_size: int = Field(512, ge=1, description="atom-type embedding width")
    emb_size_atom: int = Field(512, ge=1, description="GemNet atom embedding width")
    emb_size_edge: int = Field(512, ge=1, description="GemNet edge embedding width")
    emb_size_trip: int = Field(64, ge=1, description="down-projected triplet width")
    emb_size_rbf: int = Field(16, ge=1, description="radial basis projection width")
    emb_size_cbf: int = Field(16, ge=1, description="circular basis projection width")
    emb_size_bil_trip: int = Field(64, ge=1, description="bilinear triplet output width")
    num_blocks: int = Field(4, ge=1, description="interaction blocks")
    num_before_skip: int = Field(1, ge=0, description="edge residual layers before the skip")
    num_after_skip: int = Field(2, ge=0, description="edge residual layers after the skip")
    num_concat: int = Field(1, ge=0, description="residual layers after the atom→edge update")
    num_atom: int = Field(3, ge=0, description="residual layers in atom-update/output MLPs")
    num_radial: int = Field(128, ge=2, description="radial basis functions")
    num_spherical: int = Field(7, ge=1, description="Legendre degrees of the angular basis")
    num_targets: int = Field(1, ge=1, description="outputs of the edge 'force' head")
    cutoff: float = Field(7.0, gt=0, description="graph cutoff, Å")
    max_neighbors: int = Field(50, ge=1, description="nearest neighbours kept per atom")
    max_cell_images_per_dim: int = Field(5, ge=1, description="largest image shift per lattice vector")
    rbf: Literal["gaussian", "spherical_bessel"] = Field("gaussian", description="radial basis")
    envelope_exponent: int = Field(5, ge=1, description="polynomial envelope exponent")
    with_mask_type: bool = Field(True, description="atom types include the D3PM mask class (101 classes)")
    property_embeddings: dict[str, PropertyEmbeddingConfig] = Field(
        default_factory=dict, description="conditions of the base model (concatenated to the time embedding)"
    )
    property_embeddings_adapt: dict[str, PropertyEmbeddingConfig] = Field(
        default_factory=dict,
        description="conditions added by adapter fine-tuning (mixed into every block, summed in this order)",
    )


@dataclass
class DenoiserOutput:
    """Raw model outputs (the reference's model targets)."""

    frac_score: torch.Tensor  # (N, 3) score × std of the fractional coordinates
    lattice_score: torch.Tensor  # (B, 3, 3) score × std of the lattice
    type_logits: torch.Tensor  # (N, 101) logits of p(type_0 | x_t), index Z - 1, mask at 100


class LatticeUpdateBlock(nn.Module):
    """Per-edge scalar ``s_e`` → lattice score ``Σ_e s_e û_e û_eᵀ / E_b`` per crystal (B, 3, 3)."""

    def __init__(self, emb_size_edge: int, emb_size_rbf: int, activation: str):
        super().__init__()
        self.mlp = nn.Sequential(
            Dense(emb_size_edge, emb_size_edge, activation=activation), Dense(emb_size_edge, emb_size_edge)
        )
        self.dense_rbf_F = Dense(emb_size_rbf, emb_size_edge)
        self.out_forces = Dense(emb_size_edge, 1)

    def forward(
        self, m: torch.Tensor, rbf: torch.Tensor, unit_vec: torch.Tensor, edge_crystal: torch.Tensor, n_crystals: int
    ) -> torch.Tensor:
        score = self.out_forces(self.mlp(m) * self.dense_rbf_F(rbf))[:, 0]
        n_edges = scatter_sum(torch.ones_like(score), edge_crystal, n_crystals)
        score = score / n_edges[edge_crystal]
        outer = unit_vec[:, :, None] * unit_vec[:, None, :]
        return scatter_sum(score[:, None, None] * outer, edge_crystal, n_crystals).transpose(-1, -2)


class AtomEmbedding(nn.Module):
    """Atomic number (1-based, 101 = mask) → vector. State: ``embeddings.weight`` (101, d)."""

    def __init__(self, n_types: int, emb_size: int):
        super().__init__()
        self.embeddings = nn.Embedding(n_types, emb_size)
        nn.init.uniform_(self.embeddings.weight, -(3**0.5), 3**0.5)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.embeddings(z - 1)


class GemNetT(nn.Module):
    """GemNet-T trunk with MatterGen's lattice head and optional adapter layers."""

    def __init__(self, cfg: DenoiserConfig):
        super().__init__()
        c = cfg
        act = "swish"
        self.cfg = cfg
        self.angle_edge_emb = nn.Sequential(
            nn.Linear(c.emb_size_edge + 3, c.emb_size_edge), nn.ReLU(), nn.Linear(c.emb_size_edge, c.emb_size_edge)
        )
        self.radial_basis = RadialBasis(c.num_radial, c.cutoff, c.rbf, c.envelope_exponent)
        self.cbf_basis3 = CircularBasis(
            c.num_spherical, RadialBasis(c.num_radial, c.cutoff, c.rbf, c.envelope_exponent)
        )
        self.lattice_out_blocks = nn.ModuleList(
            [LatticeUpdateBlock(c.emb_size_edge, c.emb_size_rbf, act) for _ in range(c.num_blocks + 1)]
        )
        self.mlp_rbf_lattice = Dense(c.num_radial, c.emb_size_rbf)
        self.mlp_rbf3 = Dense(c.num_radial, c.emb_size_rbf)
        self.mlp_cbf3 = TripletDownProjection(c.num_spherical, c.num_radial, c.emb_size_cbf)
        self.mlp_rbf_h = Dense(c.num_radial, c.emb_size_rbf)
        self.mlp_rbf_out = Dense(c.num_radial, c.emb_size_rbf)
        n_types = MAX_ATOMIC_NUM + int(c.with_mask_type)
        self.atom_emb = AtomEmbedding(n_types, c.atom_embedding_size)
        self.atom_latent_emb = nn.Linear(c.atom_embedding_size + c.latent_dim, c.emb_size_atom)
        self.edge_emb = EdgeEmbedding(c.emb_size_atom, c.num_radial, c.emb_size_edge, act)
        s = GEMNET_DT_SCALES
        self.int_blocks = nn.ModuleList(
            [
                InteractionBlock(
                    c.emb_size_atom,
                    c.emb_size_edge,
                    c.emb_size_trip,
                    c.emb_size_rbf,
                    c.emb_size_cbf,
                    c.emb_size_bil_trip,
                    c.num_before_skip,
                    c.num_after_skip,
                    c.num_concat,
                    c.num_atom,
                    act,
                    scales={
                        "had_rbf": s.get(f"TripInteraction_{i + 1}_had_rbf", 1.0),
                        "sum_cbf": s.get(f"TripInteraction_{i + 1}_sum_cbf", 1.0),
                        "atom_sum": s.get(f"AtomUpdate_{i + 1}_sum", 1.0),
                    },
                )
                for i in range(c.num_blocks)
            ]
        )
        self.out_blocks = nn.ModuleList(
            [
                OutputBlock(
                    c.emb_size_atom,
                    c.emb_size_edge,
                    c.emb_size_rbf,
                    c.num_atom,
                    c.num_targets,
                    act,
                    scale_sum=s.get(f"OutBlock_{i}_sum", 1.0),
                    scale_rbf_f=s.get(f"OutBlock_{i}_had", 1.0),
                )
                for i in range(c.num_blocks + 1)
            ]
        )
        if c.property_embeddings_adapt:
            self.cond_adapt_layers = nn.ModuleDict()
            self.cond_mixin_layers = nn.ModuleDict()
            d = c.emb_size_atom
            for name in c.property_embeddings_adapt:
                self.cond_adapt_layers[name] = nn.ModuleList(
                    [nn.Sequential(nn.Linear(2 * d, d), nn.ReLU(), nn.Linear(d, d)) for _ in range(c.num_blocks)]
                )
                mixins = [nn.Linear(d, d, bias=False) for _ in range(c.num_blocks)]
                for layer in mixins:
                    nn.init.zeros_(layer.weight)
                self.cond_mixin_layers[name] = nn.ModuleList(mixins)

    def forward(
        self,
        z: torch.Tensor,
        frac_coords: torch.Tensor,
        atom_types: torch.Tensor,
        num_atoms: torch.Tensor,
        batch: torch.Tensor,
        lattice: torch.Tensor,
        cond_adapt: dict[str, torch.Tensor] | None = None,
        cond_adapt_on: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns node embeddings (N, emb_atom), cartesian "forces" (N, 3), lattice score (B, 3, 3)."""
        c = self.cfg
        n_crystals = lattice.shape[0]
        lat_atoms = torch.repeat_interleave(lattice, num_atoms, dim=0)
        cart = torch.einsum("ni,nij->nj", frac_coords, lat_atoms)
        g = build_interaction_graph(cart, lattice, num_atoms, c.cutoff, c.max_neighbors, c.max_cell_images_per_dim)
        idx_s, idx_t = g.edge_index
        d_st, v_st = g.distance, g.unit_vec

        cos_cab = torch.sum(v_st[g.id3_ca] * v_st[g.id3_ba], dim=-1).clamp(-1, 1)
        rad_cbf3, cbf3 = self.cbf_basis3(d_st, cos_cab)
        rbf = self.radial_basis(d_st)

        h = self.atom_latent_emb(torch.cat([self.atom_emb(atom_types), z[batch]], dim=1))
        m = self.edge_emb(h, rbf, idx_s, idx_t)
        edge_crystal = batch[idx_s]
        cosines = torch.cosine_similarity(v_st[:, None], lattice[edge_crystal], dim=-1)  # (E, 3)
        m = self.angle_edge_emb(torch.cat([m, cosines], dim=-1))

        rbf3 = self.mlp_rbf3(rbf)
        cbf3_proj = self.mlp_cbf3(rad_cbf3, cbf3, g.id3_ca, g.id3_ragged)
        rbf_h = self.mlp_rbf_h(rbf)
        rbf_out = self.mlp_rbf_out(rbf)

        _, f_st = self.out_blocks[0](h, m, rbf_out, idx_t)
        rbf_lattice = self.mlp_rbf_lattice(rbf)
        lattice_score = self.lattice_out_blocks[0](m, rbf_lattice, v_st, edge_crystal, n_crystals)

        adapt: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        if c.property_embeddings_adapt:
            assert cond_adapt is not None and cond_adapt_on is not None
            for name in c.property_embeddings_adapt:
                adapt.append((name, cond_adapt[name][batch], cond_adapt_on[name].float().view(-1, 1)[batch]))

        for i in range(c.num_blocks):
            if adapt:
                h_adapt = torch.zeros_like(h)
                for name, emb, on in adapt:
                    x = self.cond_adapt_layers[name][i](torch.cat([h, emb], dim=-1))
                    h_adapt = h_adapt + on * self.cond_mixin_layers[name][i](x)
                h = h + h_adapt
            h, m = self.int_blocks[i](
                h, m, rbf3, cbf3_proj, g.id3_ragged, g.id_swap, g.id3_ba, g.id3_ca, rbf_h, idx_s, idx_t
            )
            _, f = self.out_blocks[i + 1](h, m, rbf_out, idx_t)
            f_st = f_st + f
            lattice_score = lattice_score + self.lattice_out_blocks[i + 1](
                m, rbf_lattice, v_st, edge_crystal, n_crystals
            )

        forces = scatter_sum(f_st[:, :, None] * v_st[:, None, :], idx_t, frac_coords.shape[0])[:, 0]
        return h, forces, lattice_score


class MatterGenDenoiser(nn.Module):
    """``(x_t, t, conditions) → (frac score, lattice score, type logits)``; see INTERFACE.md.

    State-dict layout = the reference's ``diffusion_module.model`` (``noise_level_encoding``,
    ``property_embeddings``, ``property_embeddings_adapt``, ``fc_atom``, ``gemnet``).
    """

    def __init__(self, config: DenoiserConfig | None = None):
        super().__init__()
        self.config = config = config or DenoiserConfig()
        unknown = [
            n for n in (*config.property_embeddings, *config.property_embeddings_adapt) if n not in PROPERTY_NAMES
        ]
        if unknown:
            raise ValueError(f"unknown properties {unknown}; allowed: {', '.join(PROPERTY_NAMES)}")
        clash = set(config.property_embeddings) & set(config.property_embeddings_adapt)
        if clash:
            raise ValueError(f"properties {sorted(clash)} are both base and adapter conditions")
        base_width = config.hidden_dim + sum(p.hidden_dim for p in config.property_embeddings.values())
        if base_width != config.latent_dim:
            raise ValueError(
                f"latent_dim {config.latent_dim} must equal hidden_dim + base property widths = {base_width}"
            )
        for name, p in config.property_embeddings_adapt.items():
            if p.hidden_dim != config.emb_size_atom:
                raise ValueError(
                    f"adapter property {name!r}: hidden_dim must equal emb_size_atom ({config.emb_size_atom})"
                )
        self.gemnet = GemNetT(config)
        self.noise_level_encoding = NoiseLevelEncoding(config.hidden_dim)
        self.property_embeddings = nn.ModuleDict(
            {n: _make_embedding(n, p, zero_unconditional=False) for n, p in config.property_embeddings.items()}
        )
        self.property_embeddings_adapt = nn.ModuleDict(
            {n: _make_embedding(n, p, zero_unconditional=True) for n, p in config.property_embeddings_adapt.items()}
        )
        self.fc_atom = nn.Linear(config.emb_size_atom, MAX_ATOMIC_NUM + int(config.with_mask_type))

    @property
    def property_names(self) -> list[str]:
        """All properties the model can be conditioned on."""
        return [*self.property_embeddings, *self.property_embeddings_adapt]

    def forward(
        self,
        frac_coords: torch.Tensor,
        lattice: torch.Tensor,
        atom_types: torch.Tensor,
        num_atoms: torch.Tensor,
        batch: torch.Tensor,
        t: torch.Tensor,
        conditions: dict[str, Any] | None = None,
        unconditional: dict[str, torch.Tensor] | None = None,
        mask_elements: bool = False,
    ) -> DenoiserOutput:
        conditions = conditions or {}
        unconditional = unconditional or {}
        unknown = [k for k in conditions if k not in self.property_names]
        if unknown:
            raise ValueError(
                f"conditions {unknown} not known to this model; it conditions on: {self.property_names or 'nothing'}"
            )
        device = lattice.device
        n_crystals = lattice.shape[0]
        num_atoms = num_atoms.long()

        def use_uncond(name: str) -> torch.Tensor:
            if name not in conditions:
                return torch.ones(n_crystals, dtype=torch.bool, device=device)
            mask = unconditional.get(name)
            if mask is None:
                return torch.zeros(n_crystals, dtype=torch.bool, device=device)
            return mask.to(device=device, dtype=torch.bool).reshape(-1)

        z = self.noise_level_encoding(t.to(device)).to(device)
        base = [
            self.property_embeddings[k](conditions.get(k), n_crystals, use_uncond(k), device)
            for k in sorted(self.property_embeddings)
        ]
        if base:
            z = torch.cat([z, *base], dim=-1)
        cond_adapt = {}
        cond_on = {}
        for k, emb in self.property_embeddings_adapt.items():
            u = use_uncond(k)
            cond_adapt[k] = emb(conditions.get(k), n_crystals, u, device)
            cond_on[k] = ~u
        h, forces, lattice_score = self.gemnet(
            z, frac_coords, atom_types.long(), num_atoms, batch, lattice, cond_adapt or None, cond_on or None
        )
        logits = self.fc_atom(h)
        if mask_elements:
            chem = conditions.get("chemical_system") if "chemical_system" in self.property_names else None
            logits = mask_disallowed_elements(logits, batch, chem, use_uncond("chemical_system") if chem else None)
        inv_t = torch.linalg.inv(lattice).transpose(1, 2)[batch]
        frac_score = (inv_t @ forces.unsqueeze(-1)).squeeze(-1)
        return DenoiserOutput(frac_score, lattice_score, logits)


def _make_embedding(name: str, p: PropertyEmbeddingConfig, zero_unconditional: bool) -> PropertyEmbedding:
    return PropertyEmbedding(
        name,
        p.kind,
        p.hidden_dim,
        zero_unconditional=zero_unconditional,
        scaler=p.scaler,
        log10_transform=p.log10_transform,
    )
