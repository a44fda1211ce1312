"""M3GNet (Chen & Ong, Nat. Comput. Sci. 2, 718 (2022)) as a batched PyTorch module.

The module follows crystal's trainable-potential contract
(:mod:`crystal.trainable_potential`): ``forward(species, edge_index, vectors, batch, B)`` maps a
radius graph to per-atom energies (eV). Edge ``e = (i, j)`` points from the centre atom ``i``
to its neighbour ``j``: ``vectors[e] = r_j + n·L - r_i`` (Å).

Architecture (matgl's ``M3GNet`` with the released universal potential's settings: spherical
Bessel radial basis, no smooth basis, no azimuthal angle, extensive weighted-atom readout):

* radial basis of every bond ``e_ij`` within ``cutoff`` ``r_c``:
  :math:`\\phi_{ln}(r) = \\sqrt{2/r_c^3}\\, j_l(z_{ln} r / r_c) / |j_{l+1}(z_{ln})|`, ``l < max_l``,
  ``n < max_n`` (:math:`z_{ln}` the n-th root of the spherical Bessel function :math:`j_l`),
  ``max_l·max_n`` features ordered l-major;
* embedding: atoms ``v_i = W_Z`` (one row per element), bonds ``e_ij = SiLU(W φ(r_ij) + b)``;
* per block, a three-body update of each bond ``i→j`` from every other bond ``i→k`` of the
  same centre with both bonds within ``threebody_cutoff`` ``r_3``:
  :math:`\\tilde e_{ij} = \\sum_k \\phi_{ln}(r_{ik})\\, Y_l^0(\\cos\\theta_{jik})\\,
  \\sigma(W v_k + b)\\, f_c(r_{ij}) f_c(r_{ik})`, :math:`e_{ij} \\mathrel{+}= \\mathrm{gMLP}(\\tilde e_{ij})`,
  with :math:`f_c(r) = 1 - 10x^3 + 15x^4 - 6x^5`, :math:`x = r/r_3` (zero beyond), followed by a
  graph convolution: :math:`e_{ij} \\mathrel{+}= \\mathrm{gMLP}_e(v_i \\| v_j \\| e_{ij})\\, W_e φ(r_{ij})`,
  :math:`v_i \\mathrel{+}= \\sum_j \\mathrm{gMLP}_v(v_i \\| v_j \\| e_{ij})\\, W_v φ(r_{ij})`
  (gated MLPs: ``SiLU-MLP(x) * sigmoid-gate(x)``);
* readout: per-atom energies ``ε_i = gMLP(v_i)`` scaled as in matgl's ``Potential``:
  ``E = data_std · Σ_i ε_i + data_mean`` (``data_mean`` is shared equally by the atoms of a
  crystal); the per-element reference energies are added by crystal's ``PotentialNet``.

Parameter names mirror matgl's ``state.pt`` keys (``embedding.layer_node_embedding.weight``,
``graph_layers.0.conv.edge_update_func.layers.0.weight`` ...), so a released state dict maps
onto this module by renaming only the wrapper's buffers (:mod:`crystal_m3gnet.matgl_format`).
Everything is batched tensor code: triplets come from the neighbour list by sorting and
``repeat_interleave`` (no per-crystal or per-atom Python loop).
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache

import torch
from torch import nn

__all__ = ["M3GNet", "polynomial_cutoff", "spherical_bessel_roots", "three_body_triplets"]

#: matgl clamps bond-angle cosines to [-1 + eps, 1 - eps]
COS_EPS = 1e-7


# ------------------------------------------------------------------ basis functions
@lru_cache(maxsize=32)
def _bessel_terms(order: int) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]:
    """Rayleigh form of the spherical Bessel function ``j_order``:
    ``j_l(x) = Σ_k a_k sin(x) / x^k + Σ_k b_k cos(x) / x^k`` with integer ``a_k``, ``b_k``.

    Built from ``j_0 = sin x / x``, ``j_1 = sin x / x² - cos x / x`` and the recurrence
    ``j_{l+1} = (2l+1)/x · j_l - j_{l-1}``; returns ``((k, a_k), ...), ((k, b_k), ...)``.
    """
    prev: tuple[dict[int, int], dict[int, int]] = ({1: 1}, {})
    cur: tuple[dict[int, int], dict[int, int]] = ({2: 1}, {1: -1})
    if order == 0:
        cur = prev
    for ell in range(1, order):
        nxt: tuple[dict[int, int], dict[int, int]] = ({}, {})
        for part in (0, 1):
            for k, c in cur[part].items():
                nxt[part][k + 1] = nxt[part].get(k + 1, 0) + (2 * ell + 1) * c
            for k, c in prev[part].items():
                nxt[part][k] = nxt[part].get(k, 0) - c
        prev, cur = cur, nxt
    return tuple(sorted((k, c) for k, c in cur[0].items() if c)), tuple(sorted((k, c) for k, c in cur[1].items() if c))


def _spherical_jn(order: int, x: torch.Tensor) -> torch.Tensor:
    """``j_order(x)`` (x > 0) from its Rayleigh form (as matgl's sympy-expanded functions)."""
    sin_terms, cos_terms = _bessel_terms(order)
    s = sum((c / x**k for k, c in sin_terms), torch.zeros_like(x))
    c_ = sum((c / x**k for k, c in cos_terms), torch.zeros_like(x))
    return s * torch.sin(x) + c_ * torch.cos(x)


def _jn_float(order: int, x: float) -> float:
    sin_terms, cos_terms = _bessel_terms(order)
    return sum(c * x**-k for k, c in sin_terms) * math.sin(x) + sum(c * x**-k for k, c in cos_terms) * math.cos(x)


@lru_cache(maxsize=32)
def spherical_bessel_roots(max_l: int, max_n: int) -> tuple[tuple[float, ...], ...]:
    """The first ``max_n`` positive roots of ``j_l`` for ``l < max_l`` (float64, bisection to
    machine precision on a 0.01 grid starting at ``x = l + 1``, below the first root)."""
    out = []
    for ell in range(max_l):
        roots: list[float] = []
        x0, f0 = ell + 1.0, _jn_float(ell, ell + 1.0)
        while len(roots) < max_n:
            x1 = x0 + 0.01
            f1 = _jn_float(ell, x1)
            if f0 == 0.0:
                roots.append(x0)
            elif f0 * f1 < 0:
                a, b, fa = x0, x1, f0
                for _ in range(200):
                    m = 0.5 * (a + b)
                    fm = _jn_float(ell, m)
                    if m in (a, b) or fm == 0.0:
                        break
                    if fa * fm < 0:
                        b = m
                    else:
                        a, fa = m, fm
                roots.append(0.5 * (a + b))
            x0, f0 = x1, f1
        out.append(tuple(roots))
    return tuple(out)


@lru_cache(maxsize=32)
def _legendre_monomials(max_l: int) -> tuple[tuple[tuple[int, float], ...], ...]:
    """``Y_l^0(θ) = Σ_p c_p cos^p θ`` for ``l < max_l`` (exact Legendre coefficients times
    ``√((2l+1)/4π)``)."""
    polys: list[list[Fraction]] = [[Fraction(1)], [Fraction(0), Fraction(1)]]
    for ell in range(1, max_l):
        nxt = [Fraction(0)] * (ell + 2)
        for p, c in enumerate(polys[ell]):
            nxt[p + 1] += Fraction(2 * ell + 1, ell + 1) * c
        for p, c in enumerate(polys[ell - 1]):
            nxt[p] -= Fraction(ell, ell + 1) * c
        polys.append(nxt)
    out = []
    for ell in range(max_l):
        norm = math.sqrt((2 * ell + 1) / (4 * math.pi))
        out.append(tuple((p, float(c) * norm) for p, c in enumerate(polys[ell]) if c != 0))
    return tuple(out)


def polynomial_cutoff(r: torch.Tensor, cutoff: float, exponent: int = 3) -> torch.Tensor:
    """Smooth envelope ``1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2)``, ``x = r/cutoff``,
    zero for ``r > cutoff``; value and first two derivatives vanish at the cutoff (p = 3)."""
    c1 = -(exponent + 1) * (exponent + 2) / 2
    c2 = exponent * (exponent + 2)
    c3 = -exponent * (exponent + 1) / 2
    x = r / cutoff
    env = 1 + c1 * x**exponent + c2 * x ** (exponent + 1) + c3 * x ** (exponent + 2)
    return torch.where(r <= cutoff, env, torch.zeros_like(env))


class SphericalBesselBasis(nn.Module):
    """``(R,) Å → (R, max_l·max_n)``: the normalised spherical Bessel radial basis, l-major.

    The roots are rounded to float32 and the normalisation is evaluated in float32 once, as in
    matgl (which stores both in float32), so that float64 evaluation reproduces the released
    model's basis."""

    roots: torch.Tensor
    inv_norm: torch.Tensor

    def __init__(self, max_l: int, max_n: int, cutoff: float) -> None:
        super().__init__()
        self.max_l, self.max_n, self.cutoff = max_l, max_n, float(cutoff)
        roots = torch.tensor(spherical_bessel_roots(max_l, max_n), dtype=torch.float32)
        factor = math.sqrt(2.0 / self.cutoff**3)
        inv_norm = torch.stack([factor / _spherical_jn(ell + 1, roots[ell]).abs() for ell in range(max_l)])
        roots, inv_norm = roots.to(torch.float64), inv_norm.to(torch.float64)
        self.register_buffer("roots", roots, persistent=False)
        self.register_buffer("inv_norm", inv_norm, persistent=False)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        scaled = r.clamp(max=self.cutoff).unsqueeze(-1) / self.cutoff  # (R, 1)
        parts = [_spherical_jn(ell, scaled * self.roots[ell]) * self.inv_norm[ell] for ell in range(self.max_l)]
        return torch.cat(parts, dim=1)


def spherical_harmonics_m0(cos_theta: torch.Tensor, max_l: int) -> torch.Tensor:
    """``(T,) → (T, max_l)``: real spherical harmonics ``Y_l^0`` of the bond angle, ``l < max_l``."""
    cols = []
    for terms in _legendre_monomials(max_l):
        if len(terms) == 1 and terms[0][0] == 0:
            cols.append(torch.full_like(cos_theta, terms[0][1]))
        else:
            cols.append(
                sum(
                    (c * cos_theta**p if p else torch.full_like(cos_theta, c) for p, c in terms),
                    torch.zeros_like(cos_theta),
                )
            )
    return torch.stack(cols, dim=1)


def three_body_triplets(center: torch.Tensor, keep: torch.Tensor, num_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All ordered pairs of distinct bonds ``(ij, ik)`` sharing their centre atom, both kept.

    ``center`` (E,) is each bond's centre atom, ``keep`` (E,) bool marks the bonds within the
    three-body cutoff. Returns bond indices ``ij`` (receives the message) and ``ik`` (supplies
    the neighbour ``k``), shape (T,) each; ``T = Σ_i n_i (n_i - 1)``. Vectorised: bonds are
    grouped by centre (CSR) and expanded with ``repeat_interleave``.
    """
    device = center.device
    bonds = torch.nonzero(keep).flatten()
    c = center[bonds]
    order = torch.argsort(c, stable=True)
    grouped = bonds[order]
    deg = torch.bincount(c, minlength=num_nodes)
    start = torch.cumsum(deg, 0) - deg
    reps = deg[c]
    ij = torch.repeat_interleave(bonds, reps)
    offset = torch.arange(int(reps.sum()), device=device) - torch.repeat_interleave(torch.cumsum(reps, 0) - reps, reps)
    ik = grouped[torch.repeat_interleave(start[c], reps) + offset]
    distinct = ij != ik
    return ij[distinct], ik[distinct]


# ------------------------------------------------------------------ building blocks
class _MLP(nn.Module):
    """Linear layers with an activation after each (``layers.{0,2,...}`` are the Linear layers)."""

    def __init__(self, dims: list[int], activation: type[nn.Module], activate_last: bool) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        for k in range(len(dims) - 1):
            mods.append(nn.Linear(dims[k], dims[k + 1]))
            if k < len(dims) - 2 or activate_last:
                mods.append(activation())
        self.layers = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.layers(x)
        return out


class _GatedMLP(nn.Module):
    """``SiLU-MLP(x) · gate(x)``: the gate is an MLP of the same widths with SiLU inside and a
    sigmoid at the end; ``activate_last`` applies SiLU to the value branch's last layer."""

    def __init__(self, dims: list[int], activate_last: bool = True, bias: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        gates: list[nn.Module] = []
        for k in range(len(dims) - 1):
            last = k == len(dims) - 2
            layers.append(nn.Linear(dims[k], dims[k + 1], bias=bias))
            gates.append(nn.Linear(dims[k], dims[k + 1], bias=bias))
            if not last:
                layers.append(nn.SiLU())
                gates.append(nn.SiLU())
            else:
                if activate_last:
                    layers.append(nn.SiLU())
                gates.append(nn.Sigmoid())
        self.layers = nn.Sequential(*layers)
        self.gates = nn.Sequential(*gates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.layers(x) * self.gates(x)
        return out


class _Embedding(nn.Module):
    def __init__(self, num_elements: int, degree_rbf: int, dim_node: int, dim_edge: int) -> None:
        super().__init__()
        self.layer_node_embedding = nn.Embedding(num_elements, dim_node)
        self.layer_edge_embedding = _MLP([degree_rbf, dim_edge], nn.SiLU, activate_last=True)


class _ThreeBody(nn.Module):
    def __init__(self, dim_node: int, dim_edge: int, degree: int) -> None:
        super().__init__()
        self.update_network_atom = _MLP([dim_node, degree], nn.Sigmoid, activate_last=True)
        self.update_network_bond = _GatedMLP([degree, dim_edge], activate_last=True, bias=False)


class _GraphConv(nn.Module):
    def __init__(self, degree_rbf: int, dim_node: int, dim_edge: int, units: int) -> None:
        super().__init__()
        dim_in = 2 * dim_node + dim_edge
        self.edge_update_func = _GatedMLP([dim_in, units, units, dim_edge])
        self.edge_weight_func = nn.Linear(degree_rbf, dim_edge, bias=False)
        self.node_update_func = _GatedMLP([dim_in, units, units, dim_node])
        self.node_weight_func = nn.Linear(degree_rbf, dim_node, bias=False)

    def forward(
        self, edge_index: torch.Tensor, edge_feat: torch.Tensor, node_feat: torch.Tensor, rbf: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        i, j = edge_index
        edge_feat = edge_feat + self.edge_update_func(
            torch.cat([node_feat[i], node_feat[j], edge_feat], dim=1)
        ) * self.edge_weight_func(rbf)
        message = self.node_update_func(torch.cat([node_feat[i], node_feat[j], edge_feat], dim=1))
        message = message * self.node_weight_func(rbf)
        node_feat = node_feat + torch.zeros_like(node_feat).index_add(0, i, message)
        return edge_feat, node_feat


class _Block(nn.Module):
    def __init__(self, degree_rbf: int, dim_node: int, dim_edge: int, units: int) -> None:
        super().__init__()
        self.conv = _GraphConv(degree_rbf, dim_node, dim_edge, units)


class _Readout(nn.Module):
    def __init__(self, dim_node: int, units: int) -> None:
        super().__init__()
        self.gated = _GatedMLP([dim_node, dim_node, units, units, 1], activate_last=False)


# ------------------------------------------------------------------ the model
class M3GNet(nn.Module):
    """M3GNet per-atom energies (eV) of a batched radius graph (see the module docstring).

    ``num_elements`` rows of the element embedding, indexed by ``species``; widths as in
    matgl (``dim_node_embedding``, ``dim_edge_embedding``, ``units``); ``max_n``/``max_l``
    radial/angular orders; ``nblocks`` three-body + convolution blocks; ``cutoff`` and
    ``threebody_cutoff`` in Å; ``data_mean`` (eV per crystal) and ``data_std`` (eV) scale the
    summed atom outputs.
    """

    def __init__(
        self,
        num_elements: int,
        *,
        dim_node_embedding: int = 64,
        dim_edge_embedding: int = 64,
        units: int = 64,
        max_n: int = 3,
        max_l: int = 3,
        nblocks: int = 3,
        cutoff: float = 5.0,
        threebody_cutoff: float = 4.0,
        data_mean: float = 0.0,
        data_std: float = 1.0,
    ) -> None:
        super().__init__()
        degree = max_n * max_l
        self.max_n, self.max_l = max_n, max_l
        self.cutoff, self.threebody_cutoff = float(cutoff), float(threebody_cutoff)
        self.data_mean, self.data_std = float(data_mean), float(data_std)
        self.rbf = SphericalBesselBasis(max_l, max_n, cutoff)
        self.embedding = _Embedding(num_elements, degree, dim_node_embedding, dim_edge_embedding)
        self.three_body_interactions = nn.ModuleList(
            _ThreeBody(dim_node_embedding, dim_edge_embedding, degree) for _ in range(nblocks)
        )
        self.graph_layers = nn.ModuleList(
            _Block(degree, dim_node_embedding, dim_edge_embedding, units) for _ in range(nblocks)
        )
        self.final_layer = _Readout(dim_node_embedding, units)

    def forward(
        self,
        species: torch.Tensor,
        edge_index: torch.Tensor,
        vectors: torch.Tensor,
        batch: torch.Tensor,
        num_crystals: int,
    ) -> torch.Tensor:
        """(N,) per-atom energies, eV, of atoms ``species`` (N,) with bonds ``edge_index`` (2, E)
        (centre, neighbour) and bond vectors ``vectors`` (E, 3) Å; ``batch`` (N,) crystal index."""
        num_nodes = species.shape[0]
        dist = vectors.norm(dim=-1)
        rbf = self.rbf(dist)  # (E, max_l·max_n)
        # three-body geometry: triplets (ij, ik) of bonds within the three-body cutoff
        ij, ik = three_body_triplets(edge_index[0], dist.detach() <= self.threebody_cutoff, num_nodes)
        cos = (vectors[ij] * vectors[ik]).sum(-1) / (dist[ij] * dist[ik])
        cos = cos.clamp(-1 + COS_EPS, 1 - COS_EPS)
        shf = spherical_harmonics_m0(cos, self.max_l)  # (T, max_l)
        basis = self.rbf(dist[ik]) * shf.repeat_interleave(self.max_n, dim=1)  # (T, max_l·max_n), l-major
        fc = polynomial_cutoff(dist, self.threebody_cutoff)
        basis = basis * (fc[ij] * fc[ik])[:, None]
        neighbour = edge_index[1][ik]

        node_feat = self.embedding.layer_node_embedding(species)
        edge_feat = self.embedding.layer_edge_embedding(rbf)
        for three_body, block in zip(self.three_body_interactions, self.graph_layers, strict=True):
            assert isinstance(three_body, _ThreeBody) and isinstance(block, _Block)
            atoms = three_body.update_network_atom(node_feat)  # (N, degree)
            triple = basis * atoms[neighbour]
            summed = torch.zeros((edge_feat.shape[0], triple.shape[1]), dtype=triple.dtype, device=triple.device)
            summed = summed.index_add(0, ij, triple)
            edge_feat = edge_feat + three_body.update_network_bond(summed)
            edge_feat, node_feat = block.conv(edge_index, edge_feat, node_feat, rbf)
        atomic = self.final_layer.gated(node_feat)[:, 0]  # (N,)
        counts = torch.bincount(batch, minlength=num_crystals).to(atomic.dtype)
        energy: torch.Tensor = self.data_std * atomic + self.data_mean / counts[batch]
        return energy
