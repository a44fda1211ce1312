"""Set2Set readout (Vinyals, Bengio & Kudlur, ICLR 2016) as used by MEGNet for atoms and bonds.

The set's features are first projected, :math:`m_i = x_i W + b` (width ``n``), then for
``t = 1 … T`` (``q^*_0 = 0``, ``c_0 = 0``):

.. math::

    (i, f, g, o) &= \\text{split}_4(q^*_{t-1} W_q + b_q)

    c_t &= \\sigma(f) \\odot c_{t-1} + \\sigma(i) \\odot \\tanh(g), \\quad
    q_t = \\sigma(o) \\odot \\tanh(c_t)

    a_{i,t} &= \\operatorname{softmax}_{i \\in \\text{set}}(m_i \\cdot q_t), \\quad
    r_t = \\sum_{i \\in \\text{set}} a_{i,t}\\, m_i

    q^*_t &= q_t \\oplus r_t

and the output is :math:`q^*_T` (width ``2n``). As in the reference code, the LSTM's only
input is :math:`q^*_{t-1}` (which already contains :math:`q_{t-1}`). A set with no members
(a crystal without bonds) reads out :math:`r_t = 0`.
"""

from __future__ import annotations

import torch
from torch import nn

from crystal_megnet.dense import glorot_linear
from crystal_megnet.scatter import segment_softmax, segment_sum

__all__ = ["Set2Set"]


class Set2Set(nn.Module):
    """Order-invariant readout of variable-size sets.

    Args:
        in_dim: feature width of the set members.
        hidden_dim: ``n``, the projection and LSTM width (``n3`` = 16); the output is ``2n``.
        steps: ``T``, the number of attention steps (3).

    Shapes: ``x`` (M, in_dim), ``index`` (M,) set of each member → (S, 2n).
    """

    def __init__(self, in_dim: int, hidden_dim: int, steps: int) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.steps = steps
        self.project = glorot_linear(in_dim, hidden_dim)
        self.lstm = nn.Linear(2 * hidden_dim, 4 * hidden_dim)
        # Keras LSTM defaults of the reference: orthogonal recurrent kernel, forget-gate bias 1
        nn.init.orthogonal_(self.lstm.weight)
        nn.init.zeros_(self.lstm.bias)
        with torch.no_grad():
            self.lstm.bias[hidden_dim : 2 * hidden_dim] = 1.0

    @property
    def out_dim(self) -> int:
        return 2 * self.hidden_dim

    def forward(self, x: torch.Tensor, index: torch.Tensor, num_sets: int) -> torch.Tensor:
        m = self.project(x)
        q_star = m.new_zeros((num_sets, 2 * self.hidden_dim))
        c = m.new_zeros((num_sets, self.hidden_dim))
        for _ in range(self.steps):
            i, f, g, o = self.lstm(q_star).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            q = torch.sigmoid(o) * torch.tanh(c)
            a = segment_softmax((m * q[index]).sum(dim=-1), index, num_sets)
            r = segment_sum(a[:, None] * m, index, num_sets)
            q_star = torch.cat([q, r], dim=-1)
        return q_star
