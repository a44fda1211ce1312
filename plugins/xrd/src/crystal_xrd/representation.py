"""The powder-XRD simulator as a ``Representation`` named ``"xrd"``."""

from __future__ import annotations

from typing import ClassVar

import torch

from crystal.batch import CrystalBatch
from crystal.components import Representation
from crystal_xrd.config import XRDConfig
from crystal_xrd.simulate import simulate

__all__ = ["XRDRepresentation"]


class XRDRepresentation(Representation):
    """Powder X-ray diffraction patterns of a batch on a fixed 2θ grid.

    ``represent(batch)`` returns

    ``signal``          (B, G) broadened, normalised patterns
    ``two_theta``       (G,) grid, degrees
    ``peak_two_theta``  (B, P) peak positions, degrees (padded)
    ``peak_intensity``  (B, P) peak intensities (0 where padded)
    ``peak_mask``       (B, P) bool
    """

    name: ClassVar[str] = "xrd"
    version: ClassVar[str] = "0.1.0"
    description = (
        "Batched powder X-ray diffraction (kinematic, pymatgen-parity intensities; "
        "Gaussian/Lorentzian/pseudo-Voigt broadening, Scherrer size, Debye-Waller, March-Dollase and other "
        "training augmentation) on a fixed 2-theta grid"
    )
    Config: ClassVar[type[XRDConfig]] = XRDConfig
    consumes: ClassVar[str] = "crystal"
    produces: ClassVar[str] = "signal"
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")

    config: XRDConfig

    def represent(self, batch: CrystalBatch, *, seed: int | None = None) -> dict[str, torch.Tensor]:
        result = simulate(batch.to(self.device), self.config, seed=seed)
        return {
            "signal": result.patterns,
            "two_theta": result.two_theta,
            "peak_two_theta": result.peaks.two_theta,
            "peak_intensity": result.peaks.intensity,
            "peak_mask": result.peaks.mask,
        }
