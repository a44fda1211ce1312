"""Merging reflections into powder peaks, and the padded peak container.

Reflections of one crystal are sorted by 2θ; a new peak starts wherever the gap to the
previous reflection exceeds ``tolerance`` (degrees).  A peak's 2θ and ``d`` are those of
its first (lowest-angle) reflection, its intensity the sum over members and its
multiplicity the number of members counting both Friedel mates (``2 × members``).
Vectorised over the batch with padded (B, K) tensors; no loop over crystals.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["XRDPeaks", "compact", "merge_reflections"]


@dataclass
class XRDPeaks:
    """Powder peaks of ``B`` crystals, padded to ``P`` peaks (invalid entries have ``mask`` False).

    ``two_theta``     (B, P) float  peak position, degrees
    ``intensity``     (B, P) float  integrated intensity (scaled per the config's normalisation)
    ``d_spacing``     (B, P) float  interplanar spacing, Å
    ``multiplicity``  (B, P) long   number of reflections (±hkl) merged into the peak
    ``hkl``           (B, P, 3) long one representative (h, k, l) in the crystal's own cell
    ``mask``          (B, P) bool   real peaks
    """

    two_theta: torch.Tensor
    intensity: torch.Tensor
    d_spacing: torch.Tensor
    multiplicity: torch.Tensor
    hkl: torch.Tensor
    mask: torch.Tensor

    @property
    def counts(self) -> torch.Tensor:
        """(B,) number of peaks per crystal."""
        return self.mask.sum(dim=1)

    def __len__(self) -> int:
        return int(self.two_theta.shape[0])

    def crystal(self, i: int) -> dict[str, list]:
        """Peaks of crystal ``i`` as plain lists (sorted by 2θ)."""
        m = self.mask[i]
        return {
            "two_theta": self.two_theta[i][m].tolist(),
            "intensity": self.intensity[i][m].tolist(),
            "d_spacing": self.d_spacing[i][m].tolist(),
            "multiplicity": self.multiplicity[i][m].tolist(),
            "hkl": self.hkl[i][m].tolist(),
        }

    def pad_to(self, p: int) -> XRDPeaks:
        """The same peaks padded with invalid entries to ``p`` columns."""
        extra = p - int(self.two_theta.shape[1])
        if extra <= 0:
            return self

        def pad(t: torch.Tensor) -> torch.Tensor:
            shape = (t.shape[0], extra, *t.shape[2:])
            return torch.cat([t, t.new_zeros(shape)], dim=1)

        return XRDPeaks(*(pad(t) for t in self._fields()))

    def _fields(self) -> tuple[torch.Tensor, ...]:
        return (self.two_theta, self.intensity, self.d_spacing, self.multiplicity, self.hkl, self.mask)

    def index(self, rows: torch.Tensor) -> XRDPeaks:
        """Rows ``rows`` (a (K,) long index) of every field."""
        return XRDPeaks(*(t[rows] for t in self._fields()))

    @staticmethod
    def concat(parts: list[XRDPeaks]) -> XRDPeaks:
        p = max((int(x.two_theta.shape[1]) for x in parts), default=0)
        padded = [x.pad_to(p) for x in parts]
        return XRDPeaks(*(torch.cat(ts, dim=0) for ts in zip(*(x._fields() for x in padded), strict=True)))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> XRDPeaks:
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype) if (dtype is not None and t.is_floating_point()) else t.to(device)

        return XRDPeaks(*(move(t) for t in self._fields()))


def compact(keep: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Move the True entries of ``keep`` (B, K) to the front of each row and truncate.

    Returns the new mask followed by each tensor (B, K, ...) gathered the same way.
    """
    count = keep.sum(dim=1)
    p = int(count.max()) if count.numel() else 0
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :p]
    out = [keep.gather(1, order)]
    for t in tensors:
        idx = order.reshape(*order.shape, *([1] * (t.dim() - 2))).expand(*order.shape, *t.shape[2:])
        out.append(t.gather(1, idx))
    return tuple(out)


def merge_reflections(
    two_theta: torch.Tensor,
    intensity: torch.Tensor,
    g2: torch.Tensor,
    hkl: torch.Tensor,
    valid: torch.Tensor,
    tolerance: float,
    min_intensity: float,
) -> XRDPeaks:
    """Merge reflections (B, K) into peaks (B, P); see the module docstring.

    ``two_theta`` degrees (float64 recommended), ``intensity`` (B, K) including the Friedel
    factor 2, ``g2`` |g|² in Å⁻², ``hkl`` (B, K, 3), ``valid`` (B, K).  Peaks weaker than
    ``min_intensity`` × the strongest of their crystal are dropped.  Intensities are raw.
    """
    b, k = two_theta.shape
    inf = torch.full_like(two_theta, float("inf"))
    tt = torch.where(valid, two_theta, inf)
    tt_sorted, order = torch.sort(tt, dim=1, stable=True)
    inten = torch.where(valid, intensity, torch.zeros_like(intensity)).gather(1, order)
    ok = valid.gather(1, order)
    g2s = g2.gather(1, order)
    hkls = hkl.gather(1, order[..., None].expand(b, k, 3))
    gap = torch.diff(tt_sorted, dim=1)
    new = torch.cat([torch.ones_like(ok[:, :1]), (gap > tolerance) | (ok[:, 1:] & ~ok[:, :-1])], dim=1)
    group = torch.cumsum(new.long(), dim=1) - 1  # (B, K)
    sums = torch.zeros_like(inten).scatter_add_(1, group, inten)
    members = torch.zeros_like(group).scatter_add_(1, group, ok.long())
    first = new & ok
    # each group's first reflection writes its position, g² and hkl to the group's slot
    slot = torch.where(first, group, torch.full_like(group, k))  # k = dump column
    pos = torch.zeros((b, k + 1), dtype=tt.dtype, device=tt.device).scatter_(1, slot, torch.where(first, tt_sorted, 0))
    gg = torch.zeros((b, k + 1), dtype=g2.dtype, device=g2.device).scatter_(1, slot, torch.where(first, g2s, 0))
    hh = torch.zeros((b, k + 1, 3), dtype=hkl.dtype, device=hkl.device).scatter_(
        1, slot[..., None].expand(b, k, 3), torch.where(first[..., None], hkls, 0)
    )
    exists = members > 0
    strongest = torch.where(exists, sums, torch.zeros_like(sums)).amax(dim=1, keepdim=True) if k else sums
    keep = exists & (sums > min_intensity * strongest) if k else exists
    mask, tt_p, i_p, g2_p, m_p, hkl_p = compact(keep, pos[:, :k], sums, gg[:, :k], members, hh[:, :k])
    d = torch.where(mask, 1.0 / torch.sqrt(torch.where(mask, g2_p, torch.ones_like(g2_p))), torch.zeros_like(g2_p))
    return XRDPeaks(
        two_theta=tt_p,
        intensity=torch.where(mask, i_p, torch.zeros_like(i_p)),
        d_spacing=d,
        multiplicity=2 * m_p,
        hkl=hkl_p,
        mask=mask,
    )
