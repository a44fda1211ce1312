"""The shifted softplus of the MEGNet reference code (``megnet.activations.softplus2``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SoftPlus2", "softplus2"]

LN2 = math.log(2.0)


def softplus2(x: torch.Tensor) -> torch.Tensor:
    """:math:`\\mathrm{ssp}(x) = \\ln(1 + e^x) - \\ln 2`, so that ``ssp(0) = 0``. Shapes: (*) → (*)."""
    # softplus' backward reads its input, not its output, so the shift can be in place
    return F.softplus(x).sub_(LN2)


class SoftPlus2(nn.Module):
    """Module form of :func:`softplus2`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return softplus2(x)
