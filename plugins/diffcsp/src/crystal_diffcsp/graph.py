"""The fully connected graph within each crystal (CSPNet's ``edge_style="fc"``)."""

from __future__ import annotations

import torch

__all__ = ["fully_connected_edges"]


def fully_connected_edges(num_atoms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All ordered atom pairs ``(i, j)`` of the same crystal, self-pairs included (as the reference).

    ``num_atoms`` (B,) → ``(src, dst)``, each (E,) with ``E = Σ_b n_b²``, grouped by crystal and,
    within a crystal, ``src``-major. Vectorised (no loop over crystals).
    """
    pair_counts = num_atoms * num_atoms
    crystal = torch.repeat_interleave(torch.arange(num_atoms.shape[0], device=num_atoms.device), pair_counts)
    local = torch.arange(int(pair_counts.sum()), device=num_atoms.device) - torch.repeat_interleave(
        torch.cumsum(pair_counts, 0) - pair_counts, pair_counts
    )
    n = num_atoms[crystal]
    start = (torch.cumsum(num_atoms, 0) - num_atoms)[crystal]
    src = start + torch.div(local, n, rounding_mode="floor")
    dst = start + local % n
    return src, dst
