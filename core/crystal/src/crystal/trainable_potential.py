"""Trainable interatomic potentials: the contract between a potential plugin and crystal.

A plugin subclasses :class:`TrainablePotential`, declares its hyperparameters in a
:class:`PotentialConfig` subclass and implements one class method::

    @classmethod
    def build_model(cls, config) -> torch.nn.Module: ...

whose module maps a graph to per-atom energies::

    forward(species (N,) long, edge_index (2, E) long, vectors (E, 3), batch (N,) long,
            num_crystals: int) -> (N,) eV

``species`` indexes ``config.elements``; ``edge_index`` rows are (i receiver, j sender);
``vectors[e] = r_j + n·L - r_i`` (Å). The energy of a crystal is

.. math::  E = \\sum_i \\big(E^0_{s_i} + \\varepsilon_i\\big)

with per-element reference energies :math:`E^0` (fitted by least squares on the training
set) and the model's per-atom energies :math:`\\varepsilon_i`. Forces
:math:`F = -\\partial E/\\partial r` and stress :math:`\\sigma = V^{-1} \\partial E/\\partial
\\epsilon` (ASE sign) come from one ``autograd.grad`` through differentiable edge vectors
built from positions and a symmetric strain :math:`\\epsilon` applied to positions and cell.

Everything else lives here: radius graphs, element and geometry checks, chunked batched
evaluation (:meth:`~crystal.components.Potential.compute`), the training loss
(:meth:`PotentialNet.training_loss`) and the checkpoint format::

    {"format": "crystal-potential", "format_version": 1, "plugin": name, "plugin_version": v,
     "config": {<architecture, elements, e0s, cutoff, data statistics>},
     "state_dict": {...}, "metadata": {<data, split, metrics ...>}}

loaded with ``torch.load(weights_only=True)`` and checked by sha256.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from crystal.batch import CrystalBatch
from crystal.components import ComponentConfig, Potential, PotentialOutput
from crystal.errors import ConfigError, StructureError, WeightsError
from crystal.neighbors import radius_graph

__all__ = [
    "POTENTIAL_CHECKPOINT_FORMAT",
    "PotentialConfig",
    "PotentialNet",
    "TrainablePotential",
    "fit_reference_energies",
    "load_potential_checkpoint",
]

POTENTIAL_CHECKPOINT_FORMAT = "crystal-potential"
POTENTIAL_CHECKPOINT_VERSION = 1
_HEX64 = r"^[0-9a-f]{64}$"
#: config fields that say how to run or where weights come from, not what the model is
RUNTIME_FIELDS = frozenset({"weights", "checkpoint", "sha256", "dtype", "batch_size", "min_distance"})


class PotentialConfig(ComponentConfig):
    """Base config of trainable potentials; plugins add their architecture fields."""

    weights: str | None = Field(None, description="named weights shipped with the plugin (`crystal plugins info`)")
    checkpoint: Path | None = Field(None, description="a crystal potential checkpoint (.pt) written by training")
    sha256: str | None = Field(None, pattern=_HEX64, description="expected hex sha256 of `checkpoint`")
    elements: tuple[str, ...] = Field(
        (), description="chemical symbols the model covers, sorted by atomic number (set from the training data)"
    )
    cutoff: float = Field(5.0, gt=0, le=20, description="radius-graph cutoff, Å")
    e0s: dict[str, float] | None = Field(
        None, description="reference energy of each element, eV/atom (least-squares fit on the training set)"
    )
    seed: int = Field(0, description="seed of the random initialisation of a new model")
    dtype: Literal["float32", "float64"] = Field(
        "float64", description="precision of the model: float64 (smooth finite differences) or float32 (faster)"
    )
    batch_size: int = Field(16, ge=1, description="crystals per forward/backward pass in compute() (memory trade-off)")
    min_distance: float = Field(
        0.5, ge=0, description="interatomic distances below this raise an error (Å; 0 disables the check)"
    )

    @field_validator("elements")
    @classmethod
    def _known_sorted(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from crystal.elements import atomic_number

        try:
            zs = [atomic_number(el) for el in value]
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        if len(set(zs)) != len(zs):
            raise ValueError(f"elements {list(value)} contain duplicates")
        return tuple(el for _, el in sorted(zip(zs, value, strict=True)))


def fit_reference_energies(batch: CrystalBatch, energy: torch.Tensor, elements: tuple[str, ...]) -> dict[str, float]:
    """Per-element reference energies ``E0`` (eV/atom) minimising ``Σ_c (E_c - Σ_el n_c,el E0_el)²``.

    ``batch`` holds the training crystals and ``energy`` (B,) their total energies. With one
    element this is the mean energy per atom. Solved with ``torch.linalg.lstsq`` (minimum-norm
    when the compositions do not determine every E0, e.g. always the same stoichiometry).
    """
    from crystal.elements import atomic_number

    zs = torch.tensor([atomic_number(el) for el in elements], device=batch.device)
    onehot = (batch.atomic_numbers[:, None] == zs[None, :]).to(torch.float64)
    counts = torch.zeros((len(batch), len(elements)), dtype=torch.float64, device=batch.device)
    counts.index_add_(0, batch.batch, onehot)
    sol = torch.linalg.lstsq(counts.cpu(), energy.to(torch.float64).cpu()[:, None], driver="gelsd").solution
    return {el: float(v) for el, v in zip(elements, sol[:, 0].tolist(), strict=True)}


class PotentialNet(nn.Module):
    """A plugin's model plus reference energies: energy, forces and stress of a batch.

    Loss weights (``energy_weight``, ``forces_weight``, ``stress_weight``) are attributes set
    by the training engine; :meth:`training_loss` is the weighted sum of mean squared errors
    of energy per atom (eV/atom), force components (eV/Å) and stress components (eV/Å³).
    """

    needs_grad_in_eval: ClassVar[bool] = True
    species_of_z: torch.Tensor
    e0: torch.Tensor

    def __init__(self, model: nn.Module, elements: tuple[str, ...], e0s: Mapping[str, float] | None, cutoff: float):
        super().__init__()
        from crystal.elements import atomic_number

        self.model = model
        self.elements = elements
        self.cutoff = float(cutoff)
        zs = [atomic_number(el) for el in elements]
        table = torch.full((max(zs, default=0) + 1,), -1, dtype=torch.long)
        table[zs] = torch.arange(len(zs))
        self.register_buffer("species_of_z", table, persistent=False)
        e0 = torch.tensor([float((e0s or {}).get(el, 0.0)) for el in elements], dtype=torch.float64)
        self.register_buffer("e0", e0)
        self.energy_weight = 1.0
        self.forces_weight = 100.0
        self.stress_weight = 0.0

    def species(self, atomic_numbers: torch.Tensor) -> torch.Tensor:
        z = atomic_numbers.clamp(max=self.species_of_z.numel() - 1)
        s = self.species_of_z[z]
        return torch.where(atomic_numbers < self.species_of_z.numel(), s, torch.full_like(s, -1))

    def forward(
        self, batch: CrystalBatch, *, forces: bool = True, stress: bool = True, create_graph: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(B,) energies eV, (N, 3) forces eV/Å, (B, 3, 3) stress eV/Å³ of ``batch``.

        Energies keep their graph when ``create_graph`` (training: the loss differentiates
        forces with respect to the parameters).
        """
        pdtype = next((p.dtype for p in self.model.parameters()), torch.float64)
        B = len(batch)
        with torch.no_grad():
            graph = radius_graph(batch, self.cutoff)
            edge_index, shifts = graph.edge_index, graph.shifts
            if not bool(batch.pbc.all()):
                src_pbc = batch.pbc[batch.batch[edge_index[0]]]
                keep = ~((shifts != 0) & ~src_pbc).any(dim=1)
                edge_index, shifts = edge_index[:, keep], shifts[keep]
        with torch.set_grad_enabled(forces or stress or create_graph or torch.is_grad_enabled()):
            pos = batch.cart_coords.detach().to(pdtype).requires_grad_(forces)
            lat = batch.lattices.detach().to(pdtype)
            strain = torch.zeros((B, 3, 3), dtype=pdtype, device=pos.device, requires_grad=stress)
            if stress:
                sym = 0.5 * (strain + strain.transpose(1, 2))
                deform = torch.eye(3, dtype=pdtype, device=pos.device) + sym
                pos_s = torch.einsum("ni,nij->nj", pos, deform[batch.batch])
                lat_s = lat @ deform
            else:
                pos_s, lat_s = pos, lat
            i, j = edge_index
            vectors = pos_s[j] - pos_s[i] + torch.einsum("ei,eij->ej", shifts.to(pdtype), lat_s[batch.batch[i]])
            species = self.species(batch.atomic_numbers)
            atom_energy = self.model(species, edge_index, vectors, batch.batch, B)
            atom_energy = atom_energy.to(torch.float64) + self.e0[species]
            energy = torch.zeros(B, dtype=torch.float64, device=pos.device).index_add(0, batch.batch, atom_energy)
            inputs = [t for t, want in ((pos, forces), (strain, stress)) if want]
            grads: tuple[torch.Tensor | None, ...] = ()
            if inputs:
                grads = torch.autograd.grad(
                    energy.sum(), inputs, create_graph=create_graph, allow_unused=True, retain_graph=create_graph
                )
        full = [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads, strict=True)]
        f = -full[0] if forces else None
        s = full[-1] / batch.volumes.abs().to(full[-1].dtype)[:, None, None] if stress else None
        return energy, f, s

    def training_loss(self, batch: CrystalBatch) -> dict[str, torch.Tensor]:
        """Weighted MSE of energy/atom, forces and (when weighted) stress, plus MAE/RMSE metrics.

        Labels: ``crystal_properties["energy"]`` (B,) eV, ``atom_properties["forces"]`` (N, 3)
        eV/Å, ``crystal_properties["stress"]`` (B, 6) Voigt xx, yy, zz, yz, xz, xy in eV/Å³
        (ASE sign) — forces and stress only when their weights are non-zero.
        """
        want_f = self.forces_weight > 0 and "forces" in batch.atom_properties
        want_s = self.stress_weight > 0 and "stress" in batch.crystal_properties
        energy, forces, stress = self(batch, forces=want_f, stress=want_s, create_graph=self.training)
        n = batch.num_atoms.to(energy.dtype)
        de = (energy - batch.crystal_properties["energy"].to(energy.dtype)) / n
        loss = self.energy_weight * (de**2).mean()
        out = {"energy_mae": de.detach().abs().mean(), "energy_rmse": (de.detach() ** 2).mean().sqrt()}
        if want_f:
            assert forces is not None
            df = forces - batch.atom_properties["forces"].to(forces.dtype)
            loss = loss + self.forces_weight * (df**2).mean()
            out["forces_mae"] = df.detach().abs().mean()
            out["forces_rmse"] = (df.detach() ** 2).mean().sqrt()
        if want_s:
            assert stress is not None
            voigt = stress[:, [0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
            ds = voigt - batch.crystal_properties["stress"].to(voigt.dtype)
            loss = loss + self.stress_weight * (ds**2).mean()
            out["stress_mae"] = ds.detach().abs().mean()
        out["loss"] = loss
        return out


def load_potential_checkpoint(path: Path, sha256: str | None = None, *, who: str = "potential") -> tuple[dict, str]:
    """Verify (when ``sha256`` is given) and load a crystal potential checkpoint (weights-only)."""
    from crystal.weights import read_checkpoint

    return read_checkpoint(
        path,
        sha256,
        format=POTENTIAL_CHECKPOINT_FORMAT,
        version=POTENTIAL_CHECKPOINT_VERSION,
        kind="potential",
        who=who,
    )


class TrainablePotential(Potential):
    """Base of potentials trained by crystal (see the module docstring for the contract)."""

    __abstract_base__ = True
    Config: ClassVar[type[ComponentConfig]] = PotentialConfig

    def __init__(self, config: Any = None, *, device: str = "auto", **overrides: Any) -> None:
        super().__init__(config, device=device, **overrides)
        if not isinstance(self.config, PotentialConfig):
            raise TypeError(
                f"{type(self).__qualname__}.Config must subclass crystal.trainable_potential.PotentialConfig"
            )
        self.checkpoint_sha256: str | None = None
        self.metadata: dict[str, Any] = {}
        ckpt = self._read_checkpoint()
        self.trained = ckpt is not None
        if ckpt is not None:
            self.config = self._merge_config(ckpt)
            self.metadata = dict(ckpt.get("metadata") or {})
        cfg = self.config
        assert isinstance(cfg, PotentialConfig)
        if not cfg.elements:
            raise ConfigError(
                f"potential {self.name!r}: a new model needs `elements` (the chemical symbols it covers); "
                "training sets them from the data"
            )
        dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = self.build_model(cfg)
        self.net = PotentialNet(model, cfg.elements, cfg.e0s, cfg.cutoff)
        if ckpt is not None:
            try:
                self.net.load_state_dict(ckpt["state_dict"], strict=True)
            except (RuntimeError, KeyError) as exc:
                raise WeightsError(
                    f"potential {self.name!r}: checkpoint does not match the architecture: {exc}"
                ) from None
        self.net.model.to(dtype)
        self.net.to(self.device).eval()

    # ----------------------------------------------------------------- plugin API
    @classmethod
    @abc.abstractmethod
    def build_model(cls, config: Any) -> nn.Module:
        """A fresh model mapping (species, edge_index, vectors, batch, B) to (N,) atom energies."""

    @classmethod
    def statistics(cls, config: Any, data: CrystalBatch, energy_offsets: torch.Tensor, graph: Any) -> dict[str, Any]:
        """Config updates computed from the training data before a new model is built.

        ``data`` carries labels (``crystal_properties["energy"]``, ``atom_properties["forces"]``);
        ``energy_offsets`` (B,) is the sum of the fitted reference energies of each crystal;
        ``graph`` is the :class:`~crystal.neighbors.RadiusGraph` of ``data`` at the cutoff.
        """
        return {}

    @property
    def elements(self) -> frozenset[int]:  # type: ignore[override]
        from crystal.elements import atomic_number

        assert isinstance(self.config, PotentialConfig)
        return frozenset(atomic_number(el) for el in self.config.elements)

    @property
    def cutoff(self) -> float:
        """Graph cutoff, Å."""
        assert isinstance(self.config, PotentialConfig)
        return float(self.config.cutoff)

    # ------------------------------------------------------------------ loading
    def _read_checkpoint(self) -> dict[str, Any] | None:
        from crystal.weights import read_component_checkpoint

        found = read_component_checkpoint(
            self.config,
            type(self).weights,
            plugin=self.name,
            format=POTENTIAL_CHECKPOINT_FORMAT,
            version=POTENTIAL_CHECKPOINT_VERSION,
            kind="potential",
        )
        if found is None:
            return None
        ckpt, self.checkpoint_sha256 = found
        return ckpt

    def _merge_config(self, ckpt: Mapping[str, Any]) -> ComponentConfig:
        """The checkpoint's architecture + this instance's runtime fields; clashes are errors."""
        from crystal.weights import merge_checkpoint_config

        return merge_checkpoint_config(self, dict(ckpt.get("config") or {}), RUNTIME_FIELDS, kind="potential")  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ compute
    def check_elements(self, batch: CrystalBatch) -> None:
        present = set(torch.unique(batch.atomic_numbers).tolist())
        missing = sorted(present - set(self.elements))
        if missing:
            from crystal.elements import symbol

            assert isinstance(self.config, PotentialConfig)
            names = ", ".join(symbol(z) if 1 <= z <= 118 else f"Z={z}" for z in missing)
            raise StructureError(
                f"potential {self.name!r}: element(s) {names} are outside the model's elements "
                f"({', '.join(self.config.elements)})"
            )

    def check_distances(self, batch: CrystalBatch) -> None:
        """Raise :class:`StructureError` naming crystals with atoms closer than ``min_distance``."""
        assert isinstance(self.config, PotentialConfig)
        limit = self.config.min_distance
        if limit <= 0:
            return
        d = batch.min_distances()
        bad = torch.nonzero(d < limit).flatten().tolist()
        if bad:
            shown = ", ".join(f"{batch.ids[i]!r} ({float(d[i]):.3f} Å)" for i in bad[:5])
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            raise StructureError(
                f"potential {self.name!r}: crystal(s) {shown}{more} have atoms closer than min_distance = {limit} Å"
            )

    def compute(self, batch: CrystalBatch, *, forces: bool = True, stress: bool = True) -> PotentialOutput:
        """Energy (B,) eV, forces (N, 3) eV/Å, stress (B, 3, 3) eV/Å³, in chunks of ``batch_size``."""
        if len(batch) == 0:
            return PotentialOutput.empty(batch, forces=forces, stress=stress)
        self.check_geometry(batch)
        self.check_elements(batch)
        self.check_distances(batch)
        dtype, out_device = batch.dtype, batch.device
        work = batch if batch.device == self.device else batch.to(self.device)
        assert isinstance(self.config, PotentialConfig)
        size = self.config.batch_size
        parts: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]] = []
        self.net.eval()
        for start in range(0, len(work), size):
            chunk = work if size >= len(work) else work.select(list(range(start, min(start + size, len(work)))))
            e, f, s = self.net(chunk, forces=forces, stress=stress)
            parts.append((e.detach(), None if f is None else f.detach(), None if s is None else s.detach()))
        energy = torch.cat([p[0] for p in parts])
        if not bool(torch.isfinite(energy).all()):
            bad = torch.nonzero(~torch.isfinite(energy)).flatten().tolist()
            raise StructureError(
                f"potential {self.name!r}: non-finite energy for crystal(s) {[batch.ids[i] for i in bad]}"
            )
        out = PotentialOutput(energy=energy.to(device=out_device, dtype=dtype))
        if forces:
            out.forces = torch.cat([p[1] for p in parts if p[1] is not None]).to(device=out_device, dtype=dtype)
        if stress:
            out.stress = torch.cat([p[2] for p in parts if p[2] is not None]).to(device=out_device, dtype=dtype)
        return out

    # ------------------------------------------------------------------- saving
    def checkpoint(self, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The checkpoint dict of this potential (see the module docstring)."""
        arch = self.config.model_dump(mode="json", exclude=set(RUNTIME_FIELDS))
        return {
            "format": POTENTIAL_CHECKPOINT_FORMAT,
            "format_version": POTENTIAL_CHECKPOINT_VERSION,
            "plugin": self.name,
            "plugin_version": self.version,
            "config": arch,
            "state_dict": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            "metadata": dict(metadata if metadata is not None else self.metadata),
        }

    def save(self, path: str | os.PathLike[str], metadata: Mapping[str, Any] | None = None) -> str:
        """Write the checkpoint atomically (temporary file, then rename); returns its sha256."""
        from crystal.weights import save_checkpoint

        return save_checkpoint(self.checkpoint(metadata), path)
