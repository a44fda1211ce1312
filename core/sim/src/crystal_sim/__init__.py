"""Batched simulation with any crystal potential.

* :mod:`crystal_sim.relax` — FIRE with a Fréchet cell filter, many structures at once;
* :mod:`crystal_sim.md` — velocity Verlet (NVE), Langevin (NVT) and Berendsen (NPT) MD;
* :mod:`crystal_sim.calculator` — an ASE calculator backed by any ``Potential``.

Submodules are imported on use: ``from crystal_sim.relax import relax``.
"""

from __future__ import annotations

__all__: list[str] = []
