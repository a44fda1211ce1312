"""Loading MatterGen's released checkpoints without unpickling arbitrary objects.

A released model (microsoft/mattergen, ``checkpoints/<name>/``) is a directory with
``config.yaml`` (the Hydra config of the training run, plain YAML) and
``checkpoints/last.ckpt`` (a PyTorch-Lightning checkpoint; the weights are under
``state_dict`` with the prefix ``diffusion_module.model.``). The architecture is read from
``lightning_module.diffusion_module.model`` of the YAML (only the known ``_target_`` classes
are accepted, nothing is instantiated) and the state dict is loaded strictly into
:class:`~crystal_mattergen.denoiser.MatterGenDenoiser`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from crystal.errors import WeightsError
from crystal_mattergen.denoiser import DenoiserConfig, MatterGenDenoiser, PropertyEmbeddingConfig

__all__ = [
    "STATE_PREFIX",
    "config_from_mattergen_yaml",
    "denoiser_state_dict",
    "find_checkpoint_files",
    "load_mattergen_checkpoint",
    "read_lightning_checkpoint",
    "sde_settings",
]

STATE_PREFIX = "diffusion_module.model."

_DENOISERS = {"mattergen.denoiser.GemNetTDenoiser": False, "mattergen.adapter.GemNetTAdapter": True}
_GEMNETS = {"mattergen.common.gemnet.gemnet.GemNetT": False, "mattergen.common.gemnet.gemnet_ctrl.GemNetTCtrl": True}
_COND_MODULES = {
    "mattergen.diffusion.model_utils.NoiseLevelEncoding": "scalar",
    "mattergen.property_embeddings.SpaceGroupEmbeddingVector": "space_group",
    "mattergen.property_embeddings.ChemicalSystemMultiHotEmbedding": "chemical_system",
}
_UNCOND_MODULES = {
    "mattergen.property_embeddings.EmbeddingVector",
    "mattergen.property_embeddings.ZerosEmbedding",
}
_SCALERS = {"torch.nn.Identity": False, "mattergen.common.utils.data_utils.StandardScalerTorch": True}
# GemNetT keyword -> (DenoiserConfig field, reference default)
_GEMNET_FIELDS: dict[str, tuple[str, Any]] = {
    "num_spherical": ("num_spherical", 7),
    "num_radial": ("num_radial", 128),
    "num_blocks": ("num_blocks", 3),
    "emb_size_atom": ("emb_size_atom", 512),
    "emb_size_edge": ("emb_size_edge", 512),
    "emb_size_trip": ("emb_size_trip", 64),
    "emb_size_rbf": ("emb_size_rbf", 16),
    "emb_size_cbf": ("emb_size_cbf", 16),
    "emb_size_bil_trip": ("emb_size_bil_trip", 64),
    "num_before_skip": ("num_before_skip", 1),
    "num_after_skip": ("num_after_skip", 2),
    "num_concat": ("num_concat", 1),
    "num_atom": ("num_atom", 3),
    "cutoff": ("cutoff", 6.0),
    "max_neighbors": ("max_neighbors", 50),
    "max_cell_images_per_dim": ("max_cell_images_per_dim", 5),
    "num_targets": ("num_targets", 1),
}
# keywords that are accepted only with the value the denoiser implements
_GEMNET_FIXED: dict[str, Any] = {
    "otf_graph": True,
    "regress_stress": True,
    "activation": "swish",
    "cbf": {"name": "spherical_harmonics"},
    "encoder_mode": False,
}
_GEMNET_IGNORED = {"_target_", "scale_file", "output_init", "atom_embedding", "latent_dim", "condition_on_adapt"}


def _target(node: Any, where: str) -> str:
    if not isinstance(node, dict) or "_target_" not in node:
        raise WeightsError(f"{where}: expected a mapping with '_target_'")
    return str(node["_target_"])


def _property_config(name: str, node: Any, where: str) -> PropertyEmbeddingConfig:
    cond = node.get("conditional_embedding_module") if isinstance(node, dict) else None
    target = _target(cond, f"{where}.conditional_embedding_module")
    if target not in _COND_MODULES:
        raise WeightsError(f"{where}: unsupported conditional embedding {target!r}; allowed: {sorted(_COND_MODULES)}")
    kind = _COND_MODULES[target]
    hidden = int(cond.get("d_model", cond.get("hidden_dim", 512)))
    uncond = node.get("unconditional_embedding_module")
    u_target = _target(uncond, f"{where}.unconditional_embedding_module")
    if u_target not in _UNCOND_MODULES:
        raise WeightsError(
            f"{where}: unsupported unconditional embedding {u_target!r}; allowed: {sorted(_UNCOND_MODULES)}"
        )
    scaler = node.get("scaler") or {"_target_": "torch.nn.Identity"}
    s_target = _target(scaler, f"{where}.scaler")
    if s_target not in _SCALERS:
        raise WeightsError(f"{where}: unsupported scaler {s_target!r}; allowed: {sorted(_SCALERS)}")
    if node.get("name", name) != name:
        raise WeightsError(f"{where}: name {node.get('name')!r} differs from its key {name!r}")
    return PropertyEmbeddingConfig(
        kind=kind,  # type: ignore[arg-type]
        hidden_dim=hidden,
        scaler=_SCALERS[s_target],
        log10_transform=bool(scaler.get("log10_transform", False)),
    )


def config_from_mattergen_yaml(config: dict[str, Any], where: str = "config.yaml") -> DenoiserConfig:
    """The :class:`DenoiserConfig` of a reference training config (the whole ``config.yaml``
    as a dict, or its ``lightning_module.diffusion_module.model`` node)."""
    node: Any = config
    for key in ("lightning_module", "diffusion_module", "model"):
        if isinstance(node, dict) and key in node and "gemnet" not in node:
            node = node[key]
    where_m = f"{where}: lightning_module.diffusion_module.model"
    target = _target(node, where_m)
    if target not in _DENOISERS:
        raise WeightsError(f"{where_m}: unsupported model {target!r}; allowed: {sorted(_DENOISERS)}")
    gemnet = node.get("gemnet")
    g_target = _target(gemnet, f"{where_m}.gemnet")
    if g_target not in _GEMNETS:
        raise WeightsError(f"{where_m}.gemnet: unsupported {g_target!r}; allowed: {sorted(_GEMNETS)}")
    fields: dict[str, Any] = {}
    for key, value in gemnet.items():
        if key in _GEMNET_FIELDS:
            fields[_GEMNET_FIELDS[key][0]] = value
        elif key in _GEMNET_FIXED:
            if value != _GEMNET_FIXED[key]:
                raise WeightsError(f"{where_m}.gemnet.{key} = {value!r} is not supported (only {_GEMNET_FIXED[key]!r})")
        elif key == "rbf":
            fields["rbf"] = value.get("name", "gaussian")
            if set(value) - {"name"}:
                raise WeightsError(f"{where_m}.gemnet.rbf: extra options {sorted(set(value) - {'name'})} unsupported")
        elif key == "envelope":
            if value.get("name", "polynomial") != "polynomial":
                raise WeightsError(f"{where_m}.gemnet.envelope: only 'polynomial' is supported")
            fields["envelope_exponent"] = int(value.get("exponent", 5))
        elif key not in _GEMNET_IGNORED:
            raise WeightsError(f"{where_m}.gemnet: unknown option {key!r}")
    for field, default in _GEMNET_FIELDS.values():
        fields.setdefault(field, default)
    fields.setdefault("rbf", "gaussian")
    atom_emb = gemnet.get("atom_embedding") or {}
    if _target(atom_emb, f"{where_m}.gemnet.atom_embedding") != (
        "mattergen.common.gemnet.layers.embedding_block.AtomEmbedding"
    ):
        raise WeightsError(f"{where_m}.gemnet.atom_embedding: only AtomEmbedding is supported")
    with_mask = bool(atom_emb.get("with_mask_type", False))
    head_mask = bool(node.get("denoise_atom_types", True)) and "mask" in str(node.get("atom_type_diffusion", "mask"))
    if with_mask != head_mask:
        raise WeightsError(f"{where_m}: atom embedding with_mask_type={with_mask} but type head mask={head_mask}")
    base = {
        k: _property_config(k, v, f"{where_m}.property_embeddings.{k}")
        for k, v in (node.get("property_embeddings") or {}).items()
    }
    adapt = {
        k: _property_config(k, v, f"{where_m}.property_embeddings_adapt.{k}")
        for k, v in (node.get("property_embeddings_adapt") or {}).items()
    }
    if _DENOISERS[target] != _GEMNETS[g_target]:
        raise WeightsError(f"{where_m}: {target} cannot be combined with {g_target}")
    if _GEMNETS[g_target] and sorted(gemnet.get("condition_on_adapt") or []) != sorted(adapt):
        raise WeightsError(
            f"{where_m}: condition_on_adapt {gemnet.get('condition_on_adapt')} != adapter properties {sorted(adapt)}"
        )
    if _GEMNETS[g_target]:
        # the adapter contributions are summed in condition_on_adapt order (rounding)
        adapt = {k: adapt[k] for k in gemnet.get("condition_on_adapt") or []}
    if not _DENOISERS[target]:
        adapt = {}
    hidden = int(node.get("hidden_dim", 512))
    try:
        return DenoiserConfig(
            hidden_dim=hidden,
            latent_dim=int(gemnet["latent_dim"]),
            atom_embedding_size=int(atom_emb.get("emb_size", 512)),
            with_mask_type=with_mask,
            property_embeddings=base,
            property_embeddings_adapt=adapt,
            **fields,
        )
    except (ValueError, KeyError) as exc:
        raise WeightsError(f"{where_m}: {exc}") from None


def sde_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The corruption settings of a reference training config as plain dicts:
    ``{"cell": {...}, "pos": {...}, "atomic_numbers": {...}}`` (empty when absent)."""
    try:
        corruption = config["lightning_module"]["diffusion_module"]["corruption"]
    except (KeyError, TypeError):
        return {}
    out: dict[str, Any] = {}
    sdes = corruption.get("sdes") or {}
    if "cell" in sdes:
        out["cell"] = dict(sdes["cell"].get("vpsde_config") or {}) | {"target": sdes["cell"].get("_target_")}
    if "pos" in sdes:
        out["pos"] = {k: v for k, v in sdes["pos"].items() if k != "_target_"} | {"target": sdes["pos"].get("_target_")}
    disc = (corruption.get("discrete_corruptions") or {}).get("atomic_numbers")
    if disc:
        d3pm = disc.get("d3pm") or {}
        out["atomic_numbers"] = {
            "target": d3pm.get("_target_"),
            "dim": d3pm.get("dim"),
            "schedule": {k: v for k, v in (d3pm.get("schedule") or {}).items() if k != "_target_"},
            "offset": disc.get("offset", 0),
        }
    return out


def find_checkpoint_files(path: str | Path) -> tuple[Path, Path]:
    """``(config.yaml, last.ckpt)`` for a model directory or its ``.ckpt`` file."""
    path = Path(path)
    if path.is_dir():
        ckpt = path / "checkpoints" / "last.ckpt"
        config = path / "config.yaml"
    else:
        ckpt = path
        candidates = [path.parent / "config.yaml", path.parent.parent / "config.yaml"]
        config = next((c for c in candidates if c.is_file()), candidates[-1])
    if not ckpt.is_file():
        raise WeightsError(f"MatterGen checkpoint {ckpt} does not exist")
    if not config.is_file():
        raise WeightsError(f"MatterGen config {config} does not exist (expected beside the checkpoint directory)")
    return config, ckpt


def read_lightning_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict, loaded weights-only (through ``crystal.checkpoint_formats`` when available)."""
    try:
        from crystal.checkpoint_formats import load_lightning_checkpoint
    except ImportError:  # core helper not installed: plain weights-only load
        try:
            return dict(torch.load(Path(path), map_location="cpu", weights_only=True))
        except Exception as exc:
            raise WeightsError(f"{path} is not a weights-only loadable checkpoint: {exc}") from None
    return dict(load_lightning_checkpoint(path))


def denoiser_state_dict(checkpoint: dict[str, Any], where: str) -> dict[str, torch.Tensor]:
    """The ``diffusion_module.model.*`` entries of a Lightning checkpoint, prefix removed."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise WeightsError(f"{where}: no 'state_dict' in the checkpoint")
    out = {k[len(STATE_PREFIX) :]: v for k, v in state.items() if k.startswith(STATE_PREFIX)}
    if not out:
        raise WeightsError(f"{where}: no '{STATE_PREFIX}*' weights in the state dict")
    return out


def load_mattergen_checkpoint(path: str | Path) -> tuple[MatterGenDenoiser, dict[str, Any]]:
    """Load a released MatterGen model (directory with ``config.yaml`` + ``checkpoints/last.ckpt``).

    Returns the denoiser (eval mode, float32, CPU) and ``info`` with ``"config"`` (the YAML as
    a dict), ``"sde"`` (:func:`sde_settings`) and ``"properties"`` (condition names).
    """
    import yaml

    config_path, ckpt_path = find_checkpoint_files(path)
    try:
        config = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError as exc:
        raise WeightsError(f"{config_path}: not valid YAML: {exc}") from None
    denoiser_config = config_from_mattergen_yaml(config, str(config_path))
    model = MatterGenDenoiser(denoiser_config)
    state = denoiser_state_dict(read_lightning_checkpoint(ckpt_path), str(ckpt_path))
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise WeightsError(
            f"{ckpt_path}: state dict does not fit {config_path}: missing {result.missing_keys[:8]}, "
            f"unexpected {result.unexpected_keys[:8]}"
        )
    model.eval()
    info = {"config": config, "sde": sde_settings(config), "properties": model.property_names}
    return model, info
