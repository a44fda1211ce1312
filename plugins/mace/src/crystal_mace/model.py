"""MACE (Batatia et al., NeurIPS 2022): higher-order equivariant message passing, on e3nn.

Per layer ``t = 1 … T`` (T = ``num_interactions``)::

    A^{(t)}_i, sc_i = Interaction(h^{(t-1)}, Y(r̂_ij), R(r_ij))       two-body atomic basis (interaction.py)
    h^{(t)}_i       = Linear(Σ_ν W_{z_i} U^{(ν)} (A^{(t)}_i)^{⊗ν}) + sc_i   (ν+1)-body product basis
    E^{(t)}_i       = Readout^{(t)}(h^{(t)}_i)                       linear for t < T, 16x0e MLP for t = T

with ``h^{(0)}_i = W z_i`` (a linear embedding of the one-hot element) and the per-atom energy
``e_i = scale · (V^{ZBL}_i + Σ_t E^{(t)}_i) + shift`` (reference energies e0 are added by core; the
ZBL pair repulsion V^{ZBL} only with ``pair_repulsion``). Layer T keeps only scalars (``K x 0e``), as in
the reference code.

Forward (crystal's trainable-potential contract): ``species (N,)`` element indices, ``edge_index
(2, E)`` rows (receiver i, sender j), ``vectors (E, 3) = r_j − r_i (+ shift)`` Å, ``batch (N,)``,
``num_crystals`` -> per-atom energies (N,) eV.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from e3nn import o3
from torch import nn

from crystal_mace.interaction import InteractionBlock
from crystal_mace.product_basis import ProductBasisBlock
from crystal_mace.radial import AgnesiTransform, PairRepulsion, RadialEmbedding, _default_covalent_radii
from crystal_mace.readout import LinearReadout, NonLinearReadout

__all__ = ["MACE"]


class MACE(nn.Module):
    """The MACE energy model; defaults are the paper's / reference code's (see the plugin README).

    Args:
        num_elements: number of chemical elements (species indices 0 … num_elements−1).
        r_max: cutoff radius, Å.
        num_bessel: number of Bessel radial functions.
        num_polynomial_cutoff: order p of the polynomial envelope.
        max_ell: highest degree of the spherical harmonics (and of the irreps in ``A``).
        hidden_irreps: node features between layers, e.g. ``"128x0e + 128x1o"``; every irrep with the
            same multiplicity K (the number of channels).
        correlation: highest order ν of the product basis (body order ν+1), one int or one per layer.
        num_interactions: number of layers T.
        radial_mlp: hidden widths of the radial MLP.
        mlp_irreps: hidden irreps of the last layer's readout MLP.
        avg_num_neighbors: neighbour-sum normalisation.
        scale, shift: ``e_i = scale · E_int,i + shift`` (eV); plain floats (set from the data, saved in the
            config), not parameters.
        gate: the readout MLP's activation (``"silu"``, ``"tanh"``, ``"abs"``, ``"none"``).
        pair_repulsion: add the ZBL screened nuclear repulsion (:class:`~crystal_mace.radial.PairRepulsion`)
            to the interaction energy before scale and shift (MACE-MP-0b, MACE-MPA-0).
        distance_transform: ``"none"`` or ``"agnesi"`` (:class:`~crystal_mace.radial.AgnesiTransform`: the
            Bessel basis sees a transformed distance, MACE-MP-0b, MACE-MPA-0).
        apply_cutoff: multiply the radial features by the envelope (True, MACE's default) or, instead,
            the radial MLP's output (False, mace-torch's ``apply_cutoff=False``).
        atomic_numbers: atomic number of every species index (needed with pair_repulsion or
            distance_transform; their covalent radii come from ``covalent_radii`` or ASE's table).
        covalent_radii: covalent radius (Å) of every species index (saved as buffers; a loaded model
            overwrites them with its own).
        interaction_first: ``"residual"`` (every layer, incl. the first, has the element-dependent
            self-connection, MACE's ``RealAgnosticResidualInteractionBlock``) or ``"non_residual"`` (the
            first layer uses ``RealAgnosticInteractionBlock``: element-dependent linear map of the message,
            no self-connection, as mace-torch's ``--model MACE``).
    """

    def __init__(
        self,
        num_elements: int,
        r_max: float = 5.0,
        num_bessel: int = 8,
        num_polynomial_cutoff: int = 5,
        max_ell: int = 3,
        hidden_irreps: str | o3.Irreps = "128x0e + 128x1o",
        correlation: int | Sequence[int] = 3,
        num_interactions: int = 2,
        radial_mlp: Sequence[int] = (64, 64, 64),
        mlp_irreps: str | o3.Irreps = "16x0e",
        avg_num_neighbors: float = 1.0,
        scale: float = 1.0,
        shift: float = 0.0,
        interaction_first: str = "residual",
        gate: str = "silu",
        pair_repulsion: bool = False,
        distance_transform: str = "none",
        apply_cutoff: bool = True,
        atomic_numbers: Sequence[int] | None = None,
        covalent_radii: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if num_elements < 1:
            raise ValueError(f"num_elements must be >= 1, got {num_elements}")
        if num_interactions < 1:
            raise ValueError(f"num_interactions must be >= 1, got {num_interactions}")
        hidden = o3.Irreps(hidden_irreps).simplify()
        muls = {mul for mul, _ in hidden}
        if len(muls) != 1 or hidden[0].ir != o3.Irrep("0e"):
            raise ValueError(
                f"hidden_irreps must start with 0e and give every irrep the same multiplicity, got {hidden}"
            )
        num_channels = muls.pop()
        corr = [int(correlation)] * num_interactions if isinstance(correlation, int) else [int(c) for c in correlation]
        if len(corr) != num_interactions:
            raise ValueError(f"correlation has {len(corr)} entries for {num_interactions} interactions")

        self.num_elements = int(num_elements)
        self.r_max = float(r_max)
        if interaction_first not in ("residual", "non_residual"):
            raise ValueError(f"interaction_first must be 'residual' or 'non_residual', got {interaction_first!r}")
        self.scale = float(scale)
        self.shift = float(shift)

        self.node_embedding = o3.Linear(o3.Irreps(f"{num_elements}x0e"), o3.Irreps(f"{num_channels}x0e"))
        self.radial_embedding = RadialEmbedding(r_max, num_bessel, num_polynomial_cutoff)
        if distance_transform not in ("none", "agnesi"):
            raise ValueError(f"distance_transform must be 'none' or 'agnesi', got {distance_transform!r}")
        self.apply_cutoff = bool(apply_cutoff)
        self.distance_transform: AgnesiTransform | None = None
        self.pair_repulsion: PairRepulsion | None = None
        if pair_repulsion or distance_transform != "none":
            if atomic_numbers is None or len(atomic_numbers) != num_elements:
                raise ValueError("pair_repulsion / distance_transform need the atomic number of every species")
            zs = [int(z) for z in atomic_numbers]
            radii = [float(r) for r in covalent_radii] if covalent_radii is not None else _default_covalent_radii(zs)
            if distance_transform == "agnesi":
                self.distance_transform = AgnesiTransform(radii)
            if pair_repulsion:
                self.pair_repulsion = PairRepulsion(zs, radii, num_polynomial_cutoff)
        sh_irreps = o3.Irreps.spherical_harmonics(max_ell)
        self.spherical_harmonics = o3.SphericalHarmonics(sh_irreps, normalize=True, normalization="component")
        # A carries K copies of every spherical-harmonic irrep: K x (0e + 1o + 2e + 3o)
        interaction_irreps = (sh_irreps * num_channels).sort()[0].simplify()
        coupling_irreps = o3.Irreps([(1, ir) for _, ir in interaction_irreps])

        self.interactions = nn.ModuleList()
        self.products = nn.ModuleList()
        self.readouts = nn.ModuleList()
        node_irreps = o3.Irreps(f"{num_channels}x0e")
        for t in range(num_interactions):
            last = t == num_interactions - 1
            residual = t > 0 or interaction_first == "residual"
            out_irreps = o3.Irreps(f"{num_channels}x0e") if last and num_interactions > 1 else hidden
            self.interactions.append(
                InteractionBlock(
                    node_irreps,
                    num_elements,
                    sh_irreps,
                    num_bessel,
                    interaction_irreps,
                    out_irreps,
                    list(radial_mlp),
                    avg_num_neighbors,
                    residual=residual,
                )
            )
            self.products.append(ProductBasisBlock(coupling_irreps, out_irreps, corr[t], num_elements, use_sc=residual))
            if last and num_interactions > 1:
                self.readouts.append(NonLinearReadout(out_irreps, o3.Irreps(mlp_irreps), gate))
            else:
                self.readouts.append(LinearReadout(out_irreps))
            node_irreps = out_irreps

    def forward(
        self,
        species: torch.Tensor,
        edge_index: torch.Tensor,
        vectors: torch.Tensor,
        batch: torch.Tensor,
        num_crystals: int,
    ) -> torch.Tensor:
        """Per-atom energies (N,) in eV, without reference energies; see the module docstring."""
        dtype = vectors.dtype
        node_attrs = torch.nn.functional.one_hot(species, self.num_elements).to(dtype)  # (N, Z)
        h = self.node_embedding(node_attrs)  # (N, K)
        lengths = torch.linalg.vector_norm(vectors, dim=-1)  # (E,)
        edge_attrs = self.spherical_harmonics(vectors)  # (E, (max_ell+1)^2)
        radial = self.radial_embedding
        envelope = radial.cutoff(lengths).unsqueeze(-1)  # (E, 1)
        x = lengths if self.distance_transform is None else self.distance_transform(lengths, species, edge_index)
        edge_feats = radial.bessel(x)  # (E, num_bessel)
        cutoff = None
        if self.apply_cutoff:
            edge_feats = edge_feats * envelope
        else:
            cutoff = envelope
        energy = torch.zeros(species.shape[0], dtype=dtype, device=vectors.device)
        if self.pair_repulsion is not None:
            energy = energy + self.pair_repulsion(lengths, species, edge_index)
        for interaction, product, readout in zip(self.interactions, self.products, self.readouts, strict=True):
            a, sc = interaction(h, node_attrs, edge_attrs, edge_feats, edge_index, cutoff)
            h = product(a, sc, species)
            energy = energy + readout(h)
        return self.scale * energy + self.shift
