"""MACE's readouts: per-layer site-energy heads (Batatia et al. 2022).

* :class:`LinearReadout` (layers 1 … T−1): ``E_i^{(t)} = Σ_k W_k h^{(t)}_{i,k00}`` (only the scalars).
* :class:`NonLinearReadout` (last layer): ``E_i^{(T)} = W_2 · SiLU(W_1 h^{(T)}_{i,:00})`` with a 16x0e
  hidden layer (e3nn's normalised SiLU, as in the reference code).

Both map (N, irreps.dim) -> (N,).
"""

from __future__ import annotations

import torch
from e3nn import nn as enn
from e3nn import o3
from torch import nn

__all__ = ["GATES", "LinearReadout", "NonLinearReadout"]


class LinearReadout(nn.Module):
    """(N, irreps_in.dim) -> (N,): a linear map onto one scalar."""

    def __init__(self, irreps_in: o3.Irreps) -> None:
        super().__init__()
        self.linear = o3.Linear(o3.Irreps(irreps_in), o3.Irreps("0e"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(-1)


#: the readout gates mace-torch offers (``--gate``), by name
GATES = {"silu": torch.nn.functional.silu, "tanh": torch.tanh, "abs": torch.abs, "none": None}


class NonLinearReadout(nn.Module):
    """(N, irreps_in.dim) -> (N,): Linear -> gate (SiLU by default; e3nn's normalised activation) on
    ``mlp_irreps`` (e.g. 16x0e) -> Linear."""

    def __init__(self, irreps_in: o3.Irreps, mlp_irreps: o3.Irreps, gate: str = "silu") -> None:
        super().__init__()
        if gate not in GATES:
            raise ValueError(f"gate must be one of {sorted(GATES)}, got {gate!r}")
        mlp_irreps = o3.Irreps(mlp_irreps)
        self.linear_1 = o3.Linear(o3.Irreps(irreps_in), mlp_irreps)
        self.act = enn.Activation(mlp_irreps, [GATES[gate]])
        self.linear_2 = o3.Linear(mlp_irreps, o3.Irreps("0e"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x))).squeeze(-1)
