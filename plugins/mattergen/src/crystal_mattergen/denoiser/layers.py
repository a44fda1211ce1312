"""GemNet-T building blocks used by MatterGen's denoiser (Gasteiger et al. 2021, as adapted in
MatterGen): dense layers with scaled SiLU, residual layers, radial and circular bases, the
"efficient" triplet bilinear layer, atom-update and output blocks, and the interaction block.

Written from the GemNet paper and the conventions of microsoft/mattergen's
``common/gemnet/layers`` (parameter layout identical, so the released state dicts load
one-to-one); no reference code is copied. Shapes: ``E`` edges, ``T`` triplets, ``N`` atoms.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "AtomUpdateBlock",
    "CircularBasis",
    "Dense",
    "EdgeEmbedding",
    "InteractionBlock",
    "OutputBlock",
    "RadialBasis",
    "ResidualLayer",
    "ScalingFactor",
    "TripletDownProjection",
    "TripletInteraction",
    "he_orthogonal_",
    "scatter_sum",
]

INV_SQRT_2 = 1.0 / math.sqrt(2.0)


def scatter_sum(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Sum rows of ``src`` (E, ...) into ``dim_size`` buckets given by ``index`` (E,)."""
    out = src.new_zeros((dim_size, *src.shape[1:]))
    return out.index_add_(0, index, src)


@torch.no_grad()
def he_orthogonal_(weight: torch.Tensor) -> torch.Tensor:
    """He-scaled (semi-)orthogonal init: orthogonal, standardised to zero mean and unit variance
    along the fan-in, then scaled by ``1/sqrt(fan_in)`` (GemNet's ``HeOrthogonal``). No-op on the
    meta device (shape-only models)."""
    if weight.is_meta:
        return weight
    nn.init.orthogonal_(weight)
    if weight.dim() == 3:
        axis: tuple[int, ...] = (0, 1)
        fan_in = weight.shape[0] * weight.shape[1]
    else:
        axis = (1,)
        fan_in = weight.shape[1]
    var, mean = torch.var_mean(weight, dim=axis, unbiased=True, keepdim=True)
    weight.copy_((weight - mean) / (var + 1e-6) ** 0.5 * (1.0 / fan_in) ** 0.5)
    return weight


class ScaledSiLU(nn.Module):
    """``silu(x) / 0.6`` (keeps the activations' variance near one)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(x) * (1.0 / 0.6)


class Dense(nn.Module):
    """Linear layer (no bias by default) followed by an optional scaled SiLU.

    State: ``linear.weight`` (out, in) [, ``linear.bias``].
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, activation: str | None = None):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        he_orthogonal_(self.linear.weight)
        if self.linear.bias is not None:
            nn.init.zeros_(self.linear.bias)
        if activation is None:
            self.act: nn.Module = nn.Identity()
        elif activation.lower() in ("swish", "silu"):
            self.act = ScaledSiLU()
        else:
            raise ValueError(f"unknown activation {activation!r}; allowed: swish, silu, None")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(x))


class ResidualLayer(nn.Module):
    """``(x + MLP(x)) / sqrt(2)`` with ``n_layers`` bias-free :class:`Dense` layers."""

    def __init__(self, units: int, n_layers: int = 2, activation: str | None = None):
        super().__init__()
        self.dense_mlp = nn.Sequential(*[Dense(units, units, activation=activation) for _ in range(n_layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.dense_mlp(x)) * INV_SQRT_2


class ScalingFactor(nn.Module):
    """A fixed (non-trained) scalar multiplying a layer's output; stored as ``scale_factor``."""

    def __init__(self, value: float = 1.0):
        super().__init__()
        self.scale_factor = nn.Parameter(torch.tensor(float(value)), requires_grad=False)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.scale_factor


# --------------------------------------------------------------------------------------- bases


class GaussianSmearing(nn.Module):
    """``exp(-(d - μ_k)² / (2 Δ²))`` on ``num`` centres ``μ_k`` evenly spaced in [start, stop],
    ``Δ`` their spacing. State: ``offset`` (num,) (a buffer, as in the released checkpoints)."""

    def __init__(self, start: float, stop: float, num: int):
        super().__init__()
        offset = torch.linspace(start, stop, num, device="cpu")
        self.coeff = -0.5 / (offset[1] - offset[0]).item() ** 2
        self.register_buffer("offset", offset)

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        diff = d.view(-1, 1) - self.offset.view(1, -1)
        return torch.exp(self.coeff * diff.pow(2))


class SphericalBessel(nn.Module):
    """``sqrt(2/c³) sin(k π d) / d`` with trainable frequencies (state ``frequencies``)."""

    def __init__(self, num_radial: int, cutoff: float):
        super().__init__()
        self.norm_const = math.sqrt(2.0 / cutoff**3)
        self.frequencies = nn.Parameter(math.pi * torch.arange(1, num_radial + 1, dtype=torch.float32))

    def forward(self, d_scaled: torch.Tensor) -> torch.Tensor:
        return self.norm_const / d_scaled[:, None] * torch.sin(self.frequencies * d_scaled[:, None])


class PolynomialEnvelope(nn.Module):
    """Smooth cutoff ``1 + a u^p + b u^(p+1) + c u^(p+2)`` for ``u = d/cutoff < 1``, else 0."""

    def __init__(self, exponent: int = 5):
        super().__init__()
        p = exponent
        self.p = p
        self.a = -(p + 1) * (p + 2) / 2
        self.b = p * (p + 2)
        self.c = -p * (p + 1) / 2

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        env = 1 + self.a * u**self.p + self.b * u ** (self.p + 1) + self.c * u ** (self.p + 2)
        return torch.where(u < 1, env, torch.zeros_like(u))


class RadialBasis(nn.Module):
    """Envelope × radial functions of the scaled distance ``d / cutoff`` → (E, num_radial).

    ``rbf``: ``"gaussian"`` (centres on [0, 1]) or ``"spherical_bessel"``; envelope: polynomial.
    """

    def __init__(self, num_radial: int, cutoff: float, rbf: str = "gaussian", envelope_exponent: int = 5):
        super().__init__()
        self.inv_cutoff = 1.0 / cutoff
        self.envelope = PolynomialEnvelope(envelope_exponent)
        if rbf == "gaussian":
            self.rbf: nn.Module = GaussianSmearing(0.0, 1.0, num_radial)
        elif rbf == "spherical_bessel":
            self.rbf = SphericalBessel(num_radial, cutoff)
        else:
            raise ValueError(f"unknown radial basis {rbf!r}; allowed: gaussian, spherical_bessel")

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        u = d * self.inv_cutoff
        return self.envelope(u)[:, None] * self.rbf(u)


def _sph_harm_m0_coefficients(num_spherical: int) -> list[list[float]]:
    """Monomial coefficients ``c[l][k]`` of ``Y_l^0(z) = sqrt((2l+1)/4π) P_l(z)`` (exact rationals
    from the Legendre recurrence, then scaled)."""
    from fractions import Fraction

    polys: list[list[Fraction]] = [[Fraction(1)], [Fraction(0), Fraction(1)]]
    for ell in range(2, num_spherical):
        prev, prev2 = polys[ell - 1], polys[ell - 2]
        new = [Fraction(0)] * (ell + 1)
        for k, c in enumerate(prev):
            new[k + 1] += Fraction(2 * ell - 1, ell) * c
        for k, c in enumerate(prev2):
            new[k] -= Fraction(ell - 1, ell) * c
        polys.append(new)
    return [[float(c) * math.sqrt((2 * ell + 1) / (4 * math.pi)) for c in polys[ell]] for ell in range(num_spherical)]


def legendre_sph_harm_m0(cos_angle: torch.Tensor, num_spherical: int) -> torch.Tensor:
    """Real spherical harmonics ``Y_l^0(θ) = sqrt((2l+1)/4π) P_l(cos θ)``, l < num_spherical → (T, L).

    Evaluated as the expanded polynomial (descending powers, ``z`` factored out for odd ``l``),
    the form the reference evaluates, so that float32 rounding matches it."""
    z = cos_angle
    out = []
    for ell, coeffs in enumerate(_sph_harm_m0_coefficients(num_spherical)):
        if ell == 0:
            out.append(torch.zeros_like(z) + coeffs[0])
            continue
        if ell == 1:
            out.append(coeffs[1] * z)
            continue
        powers = [k for k in range(ell, -1, -1) if coeffs[k] != 0.0]
        shift = ell % 2  # odd: z * (sum of even powers)
        acc: torch.Tensor | None = None
        for k in powers:
            e = k - shift
            term = coeffs[k] * z**e if e > 0 else None
            if acc is None:
                acc = term if term is not None else torch.full_like(z, coeffs[k])
            elif term is None:
                acc = acc + coeffs[k]
            else:
                acc = acc + term
        assert acc is not None
        out.append(z * acc if shift else acc)
    return torch.stack(out, dim=1)


class CircularBasis(nn.Module):
    """Radial basis of the edge length and ``Y_l^0`` of the triplet angle (GemNet's "efficient"
    order: returned separately as (1, E, R) and (T, L)). State: ``radial_basis.*``."""

    def __init__(self, num_spherical: int, radial_basis: RadialBasis):
        super().__init__()
        self.num_spherical = num_spherical
        self.radial_basis = radial_basis

    def forward(self, d_edge: torch.Tensor, cos_angle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.radial_basis(d_edge)[None], legendre_sph_harm_m0(cos_angle, self.num_spherical)


# ----------------------------------------------------------------------------- triplet layers


class TripletDownProjection(nn.Module):
    """Projects the radial basis with ``weight`` (L, R, I) and scatters the angular basis into a
    zero-padded (E, L, Kmax) matrix indexed by (output edge, rank among its triplets)."""

    def __init__(self, num_spherical: int, num_radial: int, emb_size_interm: int):
        super().__init__()
        self.num_spherical = num_spherical
        self.weight = nn.Parameter(torch.empty(num_spherical, num_radial, emb_size_interm))
        he_orthogonal_(self.weight)

    def forward(
        self, rbf: torch.Tensor, sph: torch.Tensor, id3_ca: torch.Tensor, id3_ragged: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n_edges = rbf.shape[1]
        rbf_w = torch.matmul(rbf, self.weight).permute(1, 2, 0)  # (E, I, L)
        kmax = int(id3_ragged.max().item()) + 1 if sph.shape[0] > 0 else 0
        sph2 = sph.new_zeros(n_edges, kmax, self.num_spherical)
        sph2[id3_ca, id3_ragged] = sph
        return rbf_w, sph2.transpose(1, 2)  # (E, I, L), (E, L, Kmax)


class TripletBilinear(nn.Module):
    """Sum over the triplets of each output edge of ``basis ⊗ m_ba`` contracted with ``weight``
    (emb_size, interm, units_out)."""

    def __init__(self, emb_size: int, emb_size_interm: int, units_out: int):
        super().__init__()
        self.emb_size = emb_size
        self.weight = nn.Parameter(torch.empty(emb_size, emb_size_interm, units_out))
        he_orthogonal_(self.weight)

    def forward(
        self,
        basis: tuple[torch.Tensor, torch.Tensor],
        m: torch.Tensor,
        id3_ca: torch.Tensor,
        id3_ragged: torch.Tensor,
    ) -> torch.Tensor:
        rbf_w, sph = basis
        n_edges = rbf_w.shape[0]
        kmax = int(id3_ragged.max().item()) + 1 if id3_ragged.numel() > 0 else 0
        m2 = m.new_zeros(n_edges, kmax, self.emb_size)
        m2[id3_ca, id3_ragged] = m
        sum_k = torch.matmul(sph, m2)  # (E, L, emb)
        rbf_w_sum_k = torch.matmul(rbf_w, sum_k)  # (E, I, emb)
        return torch.matmul(rbf_w_sum_k.permute(2, 0, 1), self.weight).sum(dim=0)  # (E, units_out)


class TripletInteraction(nn.Module):
    """Triplet message passing b→a→c; returns the symmetrised update of edge ``c→a`` (E, emb_edge)."""

    def __init__(
        self,
        emb_size_edge: int,
        emb_size_trip: int,
        emb_size_bilinear: int,
        emb_size_rbf: int,
        emb_size_cbf: int,
        activation: str | None,
        scale_rbf: float = 1.0,
        scale_cbf_sum: float = 1.0,
    ):
        super().__init__()
        self.dense_ba = Dense(emb_size_edge, emb_size_edge, activation=activation)
        self.mlp_rbf = Dense(emb_size_rbf, emb_size_edge)
        self.scale_rbf = ScalingFactor(scale_rbf)
        self.mlp_cbf = TripletBilinear(emb_size_trip, emb_size_cbf, emb_size_bilinear)
        self.scale_cbf_sum = ScalingFactor(scale_cbf_sum)
        self.down_projection = Dense(emb_size_edge, emb_size_trip, activation=activation)
        self.up_projection_ca = Dense(emb_size_bilinear, emb_size_edge, activation=activation)
        self.up_projection_ac = Dense(emb_size_bilinear, emb_size_edge, activation=activation)

    def forward(
        self,
        m: torch.Tensor,
        rbf3: torch.Tensor,
        cbf3: tuple[torch.Tensor, torch.Tensor],
        id3_ragged: torch.Tensor,
        id_swap: torch.Tensor,
        id3_ba: torch.Tensor,
        id3_ca: torch.Tensor,
    ) -> torch.Tensor:
        x_ba = self.dense_ba(m)
        x_ba = self.scale_rbf(x_ba * self.mlp_rbf(rbf3))
        x_ba = self.down_projection(x_ba)[id3_ba]
        x = self.scale_cbf_sum(self.mlp_cbf(cbf3, x_ba, id3_ca, id3_ragged))
        x_ca = self.up_projection_ca(x)
        x_ac = self.up_projection_ac(x)[id_swap]
        return (x_ca + x_ac) * INV_SQRT_2


class EdgeEmbedding(nn.Module):
    """``Dense([h_s, h_t, m])`` → (E, out) with scaled SiLU. State: ``dense.linear.weight``."""

    def __init__(self, atom_features: int, edge_features: int, out_features: int, activation: str | None):
        super().__init__()
        self.dense = Dense(2 * atom_features + edge_features, out_features, activation=activation)

    def forward(self, h: torch.Tensor, m: torch.Tensor, idx_s: torch.Tensor, idx_t: torch.Tensor) -> torch.Tensor:
        return self.dense(torch.cat([h[idx_s], h[idx_t], m], dim=-1))


def _mlp(units_in: int, units: int, n_hidden: int, activation: str | None) -> nn.ModuleList:
    return nn.ModuleList(
        [Dense(units_in, units, activation=activation)]
        + [ResidualLayer(units, n_layers=2, activation=activation) for _ in range(n_hidden)]
    )


class AtomUpdateBlock(nn.Module):
    """Aggregates ``m ⊙ Dense(rbf)`` onto the target atoms and applies an MLP → (N, emb_atom)."""

    def __init__(
        self,
        emb_size_atom: int,
        emb_size_edge: int,
        emb_size_rbf: int,
        n_hidden: int,
        activation: str | None,
        scale_sum: float = 1.0,
    ):
        super().__init__()
        self.dense_rbf = Dense(emb_size_rbf, emb_size_edge)
        self.scale_sum = ScalingFactor(scale_sum)
        self.layers = _mlp(emb_size_edge, emb_size_atom, n_hidden, activation)

    def _aggregate(self, h: torch.Tensor, m: torch.Tensor, rbf: torch.Tensor, idx_t: torch.Tensor) -> torch.Tensor:
        x = scatter_sum(m * self.dense_rbf(rbf), idx_t, h.shape[0])
        return self.scale_sum(x)

    def forward(self, h: torch.Tensor, m: torch.Tensor, rbf: torch.Tensor, idx_t: torch.Tensor) -> torch.Tensor:
        x = self._aggregate(h, m, rbf, idx_t)
        for layer in self.layers:
            x = layer(x)
        return x


class OutputBlock(AtomUpdateBlock):
    """Per-atom "energy" (N, targets) and per-edge "force" magnitude (E, targets) heads.

    ``seq_energy`` is the same module list as ``layers`` (both names appear in the state dict,
    as in the released checkpoints)."""

    def __init__(
        self,
        emb_size_atom: int,
        emb_size_edge: int,
        emb_size_rbf: int,
        n_hidden: int,
        num_targets: int,
        activation: str | None,
        scale_sum: float = 1.0,
        scale_rbf_f: float = 1.0,
    ):
        super().__init__(emb_size_atom, emb_size_edge, emb_size_rbf, n_hidden, activation, scale_sum)
        self.seq_energy = self.layers
        self.out_energy = Dense(emb_size_atom, num_targets)
        self.scale_rbf_F = ScalingFactor(scale_rbf_f)
        self.seq_forces = _mlp(emb_size_edge, emb_size_edge, n_hidden, activation)
        self.out_forces = Dense(emb_size_edge, num_targets)
        self.dense_rbf_F = Dense(emb_size_rbf, emb_size_edge)

    def forward(  # type: ignore[override]
        self, h: torch.Tensor, m: torch.Tensor, rbf: torch.Tensor, idx_t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x_e = self._aggregate(h, m, rbf, idx_t)
        for layer in self.seq_energy:
            x_e = layer(x_e)
        x_e = self.out_energy(x_e)
        x_f = m
        for layer in self.seq_forces:
            x_f = layer(x_f)
        x_f = self.scale_rbf_F(x_f * self.dense_rbf_F(rbf))
        return x_e, self.out_forces(x_f)


class InteractionBlock(nn.Module):
    """GemNet-T interaction block: triplet interaction, edge residuals, atom update, and the
    atom→edge concatenation update. Returns updated (h (N, emb_atom), m (E, emb_edge))."""

    def __init__(
        self,
        emb_size_atom: int,
        emb_size_edge: int,
        emb_size_trip: int,
        emb_size_rbf: int,
        emb_size_cbf: int,
        emb_size_bil_trip: int,
        num_before_skip: int,
        num_after_skip: int,
        num_concat: int,
        num_atom: int,
        activation: str | None,
        scales: dict[str, float] | None = None,
    ):
        super().__init__()
        scales = scales or {}
        self.dense_ca = Dense(emb_size_edge, emb_size_edge, activation=activation)
        self.trip_interaction = TripletInteraction(
            emb_size_edge,
            emb_size_trip,
            emb_size_bil_trip,
            emb_size_rbf,
            emb_size_cbf,
            activation,
            scale_rbf=scales.get("had_rbf", 1.0),
            scale_cbf_sum=scales.get("sum_cbf", 1.0),
        )
        self.layers_before_skip = nn.ModuleList(
            [ResidualLayer(emb_size_edge, activation=activation) for _ in range(num_before_skip)]
        )
        self.layers_after_skip = nn.ModuleList(
            [ResidualLayer(emb_size_edge, activation=activation) for _ in range(num_after_skip)]
        )
        self.atom_update = AtomUpdateBlock(
            emb_size_atom, emb_size_edge, emb_size_rbf, num_atom, activation, scale_sum=scales.get("atom_sum", 1.0)
        )
        self.concat_layer = EdgeEmbedding(emb_size_atom, emb_size_edge, emb_size_edge, activation)
        self.residual_m = nn.ModuleList(
            [ResidualLayer(emb_size_edge, activation=activation) for _ in range(num_concat)]
        )

    def forward(
        self,
        h: torch.Tensor,
        m: torch.Tensor,
        rbf3: torch.Tensor,
        cbf3: tuple[torch.Tensor, torch.Tensor],
        id3_ragged: torch.Tensor,
        id_swap: torch.Tensor,
        id3_ba: torch.Tensor,
        id3_ca: torch.Tensor,
        rbf_h: torch.Tensor,
        idx_s: torch.Tensor,
        idx_t: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.dense_ca(m)
        x3 = self.trip_interaction(m, rbf3, cbf3, id3_ragged, id_swap, id3_ba, id3_ca)
        x = (x + x3) * INV_SQRT_2
        for layer in self.layers_before_skip:
            x = layer(x)
        m = (m + x) * INV_SQRT_2
        for layer in self.layers_after_skip:
            m = layer(m)
        h = (h + self.atom_update(h, m, rbf_h, idx_t)) * INV_SQRT_2
        m2 = self.concat_layer(h, m, idx_s, idx_t)
        for layer in self.residual_m:
            m2 = layer(m2)
        return h, (m + m2) * INV_SQRT_2
