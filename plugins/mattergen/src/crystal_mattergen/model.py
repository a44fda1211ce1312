"""A MatterGen model as crystal trains and ships it: the denoiser + the diffusion settings +
the training set's atom-count histogram, saved weights-only.

``model.pt`` (written by :func:`save_model`, read by :func:`load_model`, never unpickling
objects) is a dict::

    {"format": "crystal-mattergen", "version": 1,
     "denoiser": "gemnet" | "toy", "denoiser_config": {...}, "state_dict": {...},
     "diffusion": {...DiffusionConfig...}, "num_atoms_distribution": {n: p}, "meta": {...}}

``denoiser="gemnet"`` is MatterGen's GemNet-T denoiser (:mod:`crystal_mattergen.denoiser`);
``"toy"`` is :class:`ToyDenoiser`, a tiny non-equivariant network used by the tests and for
smoke runs only (it is not MatterGen's architecture).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crystal.errors import WeightsError
from crystal_mattergen.diffusion import (
    NUM_CLASSES,
    Corruption,
    DiffusionConfig,
    GeneratorNoise,
    State,
)

__all__ = ["FORMAT", "MatterGenModel", "ToyDenoiser", "load_model", "save_model"]

FORMAT = "crystal-mattergen"

#: atom-count distribution of Alex-MP-20 (the released models' training set), from the reference
#: (mattergen/common/data/num_atoms_distribution.py, ALEX_MP_20); used for the released weights
ALEX_MP_20_NUM_ATOMS: dict[int, float] = {
    1: 0.0002303828963737732,
    2: 0.002804088967292211,
    3: 0.019342289742695216,
    4: 0.1636343889258233,
    5: 0.04668051158167732,
    6: 0.07808005476530565,
    7: 0.027247714272549548,
    8: 0.1150400537121267,
    9: 0.048984340545415055,
    10: 0.12620539622566992,
    11: 0.03577352703049611,
    12: 0.14591300741832927,
    13: 0.0060031200426537475,
    14: 0.028628366058675234,
    15: 0.02022761830161729,
    16: 0.04473213051520198,
    17: 0.0013033089566287742,
    18: 0.038699389814443035,
    19: 0.0070135136024644384,
    20: 0.04345679662456145,
}


class ToyDenoiser(nn.Module):
    """A small MLP with the denoiser's call signature (tests, smoke runs; NOT MatterGen's GemNet).

    Per atom: sin/cos features of the fractional coordinates, the atom type embedding, the time
    and the crystal's mean features; outputs the model targets of each field. Conditions: an
    optional learned vector per scalar property (value × vector) and per space group.
    """

    def __init__(self, hidden_dim: int = 64, properties: Sequence[str] = ()) -> None:
        super().__init__()
        self.config = {"hidden_dim": hidden_dim, "properties": list(properties)}
        self.property_names = list(properties)
        h = hidden_dim
        self.type_embedding = nn.Embedding(NUM_CLASSES + 1, h)
        self.inp = nn.Linear(12 + h + 2 + 9, h)
        self.mix = nn.Sequential(nn.SiLU(), nn.Linear(2 * h, h), nn.SiLU())
        self.pos_head = nn.Linear(h, 3)
        self.cell_head = nn.Linear(h, 9)
        self.type_head = nn.Linear(h, NUM_CLASSES)
        self.cond = nn.ParameterDict({p: nn.Parameter(torch.zeros(h)) for p in properties})
        self.uncond = nn.ParameterDict({p: nn.Parameter(torch.zeros(h)) for p in properties})

    def forward(
        self,
        frac_coords: torch.Tensor,
        lattice: torch.Tensor,
        atom_types: torch.Tensor,
        num_atoms: torch.Tensor,
        batch: torch.Tensor,
        t: torch.Tensor,
        conditions: Mapping[str, Any] | None = None,
        unconditional: Mapping[str, torch.Tensor] | None = None,
        mask_elements: bool = False,
    ) -> Any:
        two_pi = 2 * math.pi
        x = frac_coords
        feats = torch.cat(
            [torch.sin(two_pi * x), torch.cos(two_pi * x), torch.sin(4 * math.pi * x), torch.cos(4 * math.pi * x)], -1
        )
        nb = len(num_atoms)
        cellf = (lattice / (num_atoms.to(lattice.dtype) ** (1 / 3))[:, None, None]).reshape(nb, 9)
        per_atom = torch.cat(
            [
                feats,
                self.type_embedding(atom_types.clamp(0, NUM_CLASSES)),
                t[batch, None],
                torch.sin(10 * t)[batch, None],
                cellf[batch],
            ],
            -1,
        )
        h = self.inp(per_atom)
        cond = torch.zeros(nb, h.shape[1], dtype=h.dtype, device=h.device)
        for p in self.property_names:
            if conditions is not None and p in conditions:
                value = torch.as_tensor(conditions[p], dtype=h.dtype, device=h.device).reshape(nb, 1)
                cond = cond + value * self.cond[p]
            else:
                cond = cond + self.uncond[p]
        mean = torch.zeros(nb, h.shape[1], dtype=h.dtype, device=h.device).index_add_(0, batch, h)
        mean = mean / num_atoms[:, None].to(h.dtype) + cond
        h = self.mix(torch.cat([h, mean[batch]], -1))
        pooled = torch.zeros_like(mean).index_add_(0, batch, h) / num_atoms[:, None].to(h.dtype)
        cell = self.cell_head(pooled).reshape(nb, 3, 3)
        logits = self.type_head(h)
        if mask_elements:
            logits = logits.clone()
            logits[:, NUM_CLASSES - 1] = logits[:, NUM_CLASSES - 1] - 1e10
        return _Output(self.pos_head(h), 0.5 * (cell + cell.transpose(1, 2)), logits)


@dataclasses.dataclass
class _Output:
    frac_score: torch.Tensor
    lattice_score: torch.Tensor
    type_logits: torch.Tensor


class MatterGenModel(nn.Module):
    """Denoiser + diffusion: ``training_loss(batch)`` for :func:`crystal_train.fit_model`, and the
    denoiser call the sampler needs (:meth:`raw`)."""

    def __init__(
        self,
        denoiser: nn.Module,
        diffusion: DiffusionConfig | None = None,
        *,
        kind: str = "gemnet",
        num_atoms_distribution: Mapping[int, float] | None = None,
    ) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.kind = kind
        self.diffusion = diffusion or DiffusionConfig()
        self.corruption = Corruption(self.diffusion)
        self.num_atoms_distribution = dict(num_atoms_distribution or ALEX_MP_20_NUM_ATOMS)

    @property
    def property_names(self) -> list[str]:
        return list(getattr(self.denoiser, "property_names", []) or [])

    def raw(
        self,
        state: State,
        t: torch.Tensor,
        conditions: Mapping[str, Any] | None = None,
        *,
        mask_elements: bool = True,
    ) -> dict[str, torch.Tensor]:
        """The denoiser's model targets for ``state`` at times ``t`` (B,)."""
        out = self.denoiser(
            state.pos,
            state.cell,
            state.atomic_numbers,
            state.num_atoms,
            state.batch,
            t,
            conditions=conditions,
            mask_elements=mask_elements,
        )
        return {"pos": out.frac_score, "cell": out.lattice_score, "atomic_numbers": out.type_logits}

    def record_training_set(self, num_atoms: torch.Tensor) -> None:
        counts = torch.bincount(num_atoms.cpu())
        total = float(counts.sum())
        self.num_atoms_distribution = {int(n): float(c) / total for n, c in enumerate(counts.tolist()) if c}

    def sample_num_atoms(self, count: int, generator: torch.Generator) -> torch.Tensor:
        ns = torch.tensor(sorted(self.num_atoms_distribution), dtype=torch.long)
        p = torch.tensor([self.num_atoms_distribution[int(n)] for n in ns], dtype=torch.float64)
        idx = torch.multinomial(p, count, replacement=True, generator=generator)
        return ns[idx]

    def training_loss(self, batch: Any) -> dict[str, torch.Tensor]:
        """Reference ``MaterialsLoss`` on a :class:`~crystal.batch.CrystalBatch` (float32, wrapped
        fractional coordinates); time and noise drawn from the global torch RNG."""
        x0 = State(
            pos=torch.remainder(batch.frac_coords, 1.0).to(torch.float32),
            cell=batch.lattices.to(torch.float32),
            atomic_numbers=batch.atomic_numbers,
            num_atoms=batch.num_atoms,
        )
        t = self.corruption.sample_time(len(x0.num_atoms), x0.pos.device)
        noisy, aux = self.corruption.corrupt(x0, t, GeneratorNoise(None))
        out = self.raw(noisy, t, None, mask_elements=False)
        return self.corruption.losses(x0, noisy, t, out, aux)


# ----------------------------------------------------------------------------- files


def _config_dict(denoiser: nn.Module) -> dict[str, Any]:
    cfg = getattr(denoiser, "config", None)
    if cfg is None:
        return {}
    if isinstance(cfg, dict):
        return dict(cfg)
    if hasattr(cfg, "model_dump"):
        return cfg.model_dump(mode="json")
    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)  # type: ignore[arg-type]
    raise TypeError(f"cannot serialise denoiser config {type(cfg).__name__}")


def save_model(model: MatterGenModel, path: str | Path, meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` weights-only (see module docstring); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": 1,
        "denoiser": model.kind,
        "denoiser_config": _config_dict(model.denoiser),
        "state_dict": {k: v.detach().cpu() for k, v in model.denoiser.state_dict().items()},
        "diffusion": model.diffusion.to_dict(),
        "num_atoms_distribution": {str(k): float(v) for k, v in model.num_atoms_distribution.items()},
        "meta": dict(meta or {}),
    }
    torch.save(payload, path)
    return path


def build_denoiser(kind: str, config: Mapping[str, Any]) -> nn.Module:
    if kind == "toy":
        return ToyDenoiser(**config)
    if kind == "gemnet":
        from crystal_mattergen.denoiser import DenoiserConfig, MatterGenDenoiser

        cfg = (
            DenoiserConfig.model_validate(config)
            if hasattr(DenoiserConfig, "model_validate")
            else DenoiserConfig(**config)
        )
        return MatterGenDenoiser(cfg)
    raise WeightsError(f"mattergen: unknown denoiser kind {kind!r} (expected 'gemnet' or 'toy')")


def model_from_payload(payload: Mapping[str, Any], where: str) -> tuple[MatterGenModel, dict[str, Any]]:
    """A :class:`MatterGenModel` from a loaded ``model.pt`` payload."""
    if not isinstance(payload, Mapping) or payload.get("format") != FORMAT:
        raise WeightsError(f"mattergen: {where} is not a crystal-mattergen model file")
    denoiser = build_denoiser(str(payload["denoiser"]), payload.get("denoiser_config", {}))
    try:
        denoiser.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"mattergen: {where}: state dict does not fit the denoiser: {exc}") from None
    dist = {int(k): float(v) for k, v in payload.get("num_atoms_distribution", {}).items()} or None
    model = MatterGenModel(
        denoiser,
        DiffusionConfig.from_dict(payload.get("diffusion", {})),
        kind=str(payload["denoiser"]),
        num_atoms_distribution=dist,
    )
    return model.eval(), dict(payload.get("meta", {}))


def load_model(path: str | Path) -> tuple[MatterGenModel, dict[str, Any]]:
    """Load a crystal ``model.pt`` or a released MatterGen checkpoint (a ``last.ckpt`` or its run
    folder, read by :func:`crystal_mattergen.checkpoint.load_mattergen_checkpoint`)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise WeightsError(f"mattergen: checkpoint {path} does not exist")
    if path.is_file() and path.suffix == ".pt":
        payload = torch.load(path, map_location="cpu", weights_only=True)
        return model_from_payload(payload, str(path))
    return load_released(path)


def diffusion_from_sde(sde: Mapping[str, Any] | None) -> DiffusionConfig:
    """The diffusion settings of a released checkpoint's ``config.yaml`` (``info["sde"]``)."""
    sde = sde or {}
    cell = sde.get("cell", {}) or {}
    pos = sde.get("pos", {}) or {}
    atoms = sde.get("atomic_numbers", {}) or {}
    base = DiffusionConfig()
    steps = atoms.get("num_steps") or (atoms.get("schedule", {}) or {}).get("num_steps") or base.d3pm_steps
    return DiffusionConfig(
        lattice_beta_min=float(cell.get("beta_min", base.lattice_beta_min)),
        lattice_beta_max=float(cell.get("beta_max", base.lattice_beta_max)),
        limit_density=float(cell.get("limit_density", base.limit_density)),
        limit_var_scaling_constant=float(cell.get("limit_var_scaling_constant", base.limit_var_scaling_constant)),
        pos_sigma_min=float(pos.get("sigma_min", base.pos_sigma_min)),
        pos_sigma_max=float(pos.get("sigma_max", base.pos_sigma_max)),
        d3pm_steps=int(steps),
    )


def load_released(path: str | Path) -> tuple[MatterGenModel, dict[str, Any]]:
    """A released MatterGen checkpoint through the model half's loader."""
    from crystal_mattergen.checkpoint import load_mattergen_checkpoint

    denoiser, info = load_mattergen_checkpoint(path)
    model = MatterGenModel(denoiser, diffusion_from_sde(info.get("sde")), kind="gemnet")
    return model.eval(), {"source": str(path), "properties": list(info.get("properties", []))}


def released_config(reference_name: str) -> dict[str, Any]:
    """The shipped copy of a released checkpoint's ``config.yaml`` (``released_configs/``)."""
    from importlib import resources

    import yaml

    text = resources.files("crystal_mattergen").joinpath("released_configs", f"{reference_name}.yaml").read_text()
    return yaml.safe_load(text)


def load_released_file(ckpt: str | Path, reference_name: str) -> tuple[MatterGenModel, dict[str, Any]]:
    """A released ``last.ckpt`` (e.g. from the weights cache) with the shipped ``config.yaml`` of
    ``reference_name`` (e.g. ``"mattergen_base"``)."""
    from crystal_mattergen.checkpoint import (
        config_from_mattergen_yaml,
        denoiser_state_dict,
        read_lightning_checkpoint,
        sde_settings,
    )
    from crystal_mattergen.denoiser import MatterGenDenoiser

    config = released_config(reference_name)
    denoiser = MatterGenDenoiser(config_from_mattergen_yaml(config, f"released_configs/{reference_name}.yaml"))
    state = denoiser_state_dict(read_lightning_checkpoint(ckpt), str(ckpt))
    result = denoiser.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise WeightsError(
            f"{ckpt}: state dict does not fit the released {reference_name!r} architecture: missing "
            f"{result.missing_keys[:8]}, unexpected {result.unexpected_keys[:8]}"
        )
    model = MatterGenModel(denoiser.eval(), diffusion_from_sde(sde_settings(config)), kind="gemnet")
    return model.eval(), {"source": str(ckpt), "released": reference_name, "properties": model.property_names}
