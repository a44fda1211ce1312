"""MACE's product basis: the element-weighted symmetric contraction (Batatia et al. 2022, Eqs. 10-11).

For every node ``i``, channel ``k`` and output irrep ``L`` (component ``M``)::

    B_{i,k,LM} = Σ_{ν=1}^{correlation} Σ_η W^{(ν)}_{z_i, η, k} Σ_{l m} U^{(ν)}_{LM, (l m)_1 … (l m)_ν, η} Π_{ξ=1}^{ν} A_{i,k,(l m)_ξ}

``A_{i,k,lm}`` (N, K, D) are the node's atomic-basis features with ``D = Σ_l (2l+1)`` (one copy of every
coupling irrep ``l`` per channel), ``U^{(ν)}`` (2L+1, D, …, D, n_ν) is a basis of the equivariant maps
from the ν-fold *symmetric* tensor power ``Sym^ν(⊕_l V_l)`` to ``V_L`` (generalised Clebsch-Gordan
coefficients), and ``W^{(ν)}`` (num_elements, n_ν, K) are element-dependent weights, separate for every
channel (no channel mixing, as in the paper).

``U^{(ν)}`` is computed with :class:`e3nn.o3.ReducedTensorProducts` on the fully symmetric formula
``"ij…=ji…"``: its change of basis restricted to the copies of ``L`` is an orthogonal basis of
``Hom_{O(3)}(Sym^ν V, V_L)``. MACE's default ``U_matrix_real`` couples the ν copies along every
intermediate path without symmetrising; contracted with the symmetric ``A ⊗ … ⊗ A`` only its
symmetric part survives, so both bases span the same space of functions (ours has no redundant
weights; this is MACE's ``use_reduced_cg`` basis up to an invertible linear map).

The sum over ν is evaluated by MACE's nested (Horner-like) scheme: contract the highest order with
one copy of ``A``, add the next-lower order's weighted basis, contract again, …, so the ν-fold
product is never formed.
"""

from __future__ import annotations

import functools
import string
from typing import Any

import torch
from e3nn import o3
from torch import nn

__all__ = ["SymmetricContraction", "symmetric_coupling_basis"]


@functools.lru_cache(maxsize=64)
def _coupling_basis_cached(coupling_irreps: str, nu: int, ir_out: str) -> torch.Tensor:
    irreps = o3.Irreps(coupling_irreps)
    ir = o3.Irrep(ir_out)
    dim = irreps.dim
    if nu == 1:
        # the linear term: pick the components of every copy of L among the coupling irreps
        cols = []
        for (_, ir_in), sl in zip(irreps, irreps.slices(), strict=True):
            if ir_in == ir:
                u = torch.zeros(ir.dim, dim, dtype=torch.float64)
                u[:, sl] = torch.eye(ir.dim, dtype=torch.float64)
                cols.append(u)
        if not cols:
            return torch.zeros(ir.dim, dim, 0, dtype=torch.float64)
        return torch.stack(cols, dim=-1)
    letters = string.ascii_lowercase[:nu]
    # all transpositions of neighbours generate the symmetric group: "abc=bac=acb"
    perms = [letters[:k] + letters[k + 1] + letters[k] + letters[k + 2 :] for k in range(nu - 1)]
    formula = "=".join([letters, *perms])
    with torch.no_grad():
        prev = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            rtp = o3.ReducedTensorProducts(formula, filter_ir_out=[ir], **{letters[0]: irreps})
        finally:
            torch.set_default_dtype(prev)
        q = rtp.change_of_basis.to(torch.float64)  # (dim_out, D, ..., D)
    mul = rtp.irreps_out.count(ir)
    if mul == 0:
        return torch.zeros(ir.dim, *([dim] * nu), 0, dtype=torch.float64)
    # irreps_out is simplified and holds only ``ir``: rows are (copy η, component M)
    q = q.reshape(mul, ir.dim, *([dim] * nu))
    return q.movedim(0, -1).contiguous()  # (2L+1, D, ..., D, n_ν)


def symmetric_coupling_basis(coupling_irreps: o3.Irreps, nu: int, ir_out: o3.Irrep) -> torch.Tensor:
    """``U^{(ν)}`` of shape ``(2L+1, D, …(ν times)…, D, n_ν)`` in float64 (``n_ν`` may be 0).

    ``U[M, a_1, …, a_ν, η]`` is symmetric in ``a_1 … a_ν`` and, contracted with ``ν`` copies of a
    vector transforming as ``coupling_irreps``, gives the ``M`` component of copy ``η`` of ``ir_out``.
    """
    return _coupling_basis_cached(str(o3.Irreps(coupling_irreps)), int(nu), str(o3.Irrep(ir_out))).clone()


class _Contraction(nn.Module):
    """One output irrep ``L`` of :class:`SymmetricContraction`: (N, K, D) -> (N, K, 2L+1)."""

    def __init__(
        self, coupling_irreps: o3.Irreps, ir_out: o3.Irrep, correlation: int, num_channels: int, num_elements: int
    ) -> None:
        super().__init__()
        self.correlation = correlation
        self.coupling_irreps = str(coupling_irreps)
        self.ir_out = str(ir_out)
        self.dim_in = coupling_irreps.dim
        self.dim_out = ir_out.dim
        self.weights = nn.ParameterList()
        self.num_paths: list[int] = []
        for nu in range(1, correlation + 1):
            u = symmetric_coupling_basis(coupling_irreps, nu, ir_out).to(torch.get_default_dtype())
            self.register_buffer(f"U_{nu}", u)
            n = u.shape[-1]
            self.num_paths.append(n)
            # MACE's initialisation: randn / number of paths
            self.weights.append(nn.Parameter(torch.randn(num_elements, n, num_channels) / max(n, 1)))

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Keep the exact float64 coupling basis when the saved one equals it up to float32 round-off.

        ``U`` is saved with the weights (so a checkpoint records the basis its weights belong to), but a
        model trained in float32 saved a rounded ``U``; loading that into a float64 model would leave
        O(1e-7) equivariance errors. If the saved basis differs by more (another e3nn version's basis
        choice), the saved one is used, as the weights were fitted to it.
        """
        for nu in range(1, self.correlation + 1):
            key = f"{prefix}U_{nu}"
            saved = state_dict.get(key)
            if not isinstance(saved, torch.Tensor):
                continue
            exact = symmetric_coupling_basis(o3.Irreps(self.coupling_irreps), nu, o3.Irrep(self.ir_out))
            if saved.shape == exact.shape and torch.allclose(
                saved.detach().cpu().to(torch.float64), exact, rtol=1e-5, atol=1e-6
            ):
                state_dict[key] = exact
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _u(self, nu: int) -> torch.Tensor:
        return getattr(self, f"U_{nu}")

    def forward(self, x: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        n_nodes, n_ch, d = x.shape
        m = self.dim_out
        out: torch.Tensor | None = None  # (N, K, M, D^(ν)) carried from order ν+1
        for nu in range(self.correlation, 0, -1):
            u = self._u(nu).to(x.dtype)  # (M, D^ν, n)
            w = self.weights[nu - 1].to(x.dtype)  # (Z, n, K)
            n = u.shape[-1]
            if nu == self.correlation:
                # highest order, per element present (never forms the (N, K, M, D^ν) weighted basis):
                # out[i] = Σ_a (U·W)[z_i, k, M, …, a] x[i, k, a]
                uw = torch.einsum("mzn,enk->ekmz", u.reshape(m, -1, n), w).reshape(w.shape[0], n_ch, m, -1, d)
                present = torch.unique(species).tolist()
                if len(present) == 1:
                    out = torch.einsum("kmza,nka->nkmz", uw[present[0]], x)  # (N, K, M, D^(ν-1))
                else:
                    parts, order = [], []
                    for e in present:
                        idx = torch.nonzero(species == e).squeeze(1)
                        parts.append(torch.einsum("kmza,nka->nkmz", uw[e], x[idx]))  # (N_e, K, M, D^(ν-1))
                        order.append(idx)
                    out = torch.cat(parts)[torch.argsort(torch.cat(order))]
            else:
                assert out is not None
                uw = torch.einsum("mzn,enk->ekmz", u.reshape(m, -1, n), w)  # (Z, K, M, D^ν)
                c = uw[species] + out  # (N, K, M, D^ν)
                out = torch.einsum("nkmza,nka->nkmz", c.reshape(n_nodes, n_ch, m, -1, d), x)
        assert out is not None
        return out.reshape(n_nodes, n_ch, m)


class SymmetricContraction(nn.Module):
    """Product basis ``B`` of MACE (Eq. 10-11): node features (N, K, D) -> (N, irreps_out.dim).

    Args:
        coupling_irreps: the irreps ``l`` of one channel of the input ``A`` (e.g. ``0e+1o+2e+3o``),
            each at most once, D = their total dimension.
        irreps_out: output irreps, every one with multiplicity ``K`` (e.g. ``128x0e+128x1o``).
        correlation: the highest order ν of the product (body order ν+1).
        num_elements: number of chemical elements (weights depend on the centre atom's element).

    The output is laid out as e3nn's ``irreps_out`` (per irrep: channel-major ``(K, 2L+1)``).
    """

    def __init__(
        self, coupling_irreps: o3.Irreps | str, irreps_out: o3.Irreps | str, correlation: int, num_elements: int
    ) -> None:
        super().__init__()
        self.coupling_irreps = o3.Irreps(coupling_irreps)
        self.irreps_out = o3.Irreps(irreps_out)
        if correlation < 1:
            raise ValueError(f"correlation must be >= 1, got {correlation}")
        muls = {mul for mul, _ in self.irreps_out}
        if len(muls) != 1:
            raise ValueError(f"all output irreps need the same multiplicity (channels), got {self.irreps_out}")
        if any(mul != 1 for mul, _ in self.coupling_irreps):
            raise ValueError(f"coupling irreps must each appear once, got {self.coupling_irreps}")
        self.num_channels = muls.pop()
        self.correlation = correlation
        self.contractions = nn.ModuleList(
            _Contraction(self.coupling_irreps, ir, correlation, self.num_channels, num_elements)
            for _, ir in self.irreps_out
        )

    def forward(self, x: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """x: (N, K, D) atomic basis ``A``; species: (N,) element indices -> (N, irreps_out.dim)."""
        outs = [c(x, species).reshape(x.shape[0], -1) for c in self.contractions]
        return torch.cat(outs, dim=-1)
