"""Loader of the released JARVIS ALIGNN models (``usnistgov/alignn``, figshare zips).

The reference's pretrained loader (``alignn.pretrained.get_figshare_model``) reads a zip
holding, in a folder named after the model:

* ``config.json`` — the reference ``TrainingConfig`` as JSON: ``target``,
  ``atom_features`` (``"cgcnn"``), ``neighbor_strategy`` (``"k-nearest"``), ``cutoff``,
  ``max_neighbors`` and ``model`` = the ``ALIGNNConfig`` (``name = "alignn"``,
  ``alignn_layers``, ``gcn_layers``, ``atom_input_features`` = 92,
  ``edge_input_features`` = 80, ``triplet_input_features`` = 40, ``embedding_features``,
  ``hidden_features``, ``output_features``, ``link``, ``zero_inflated``,
  ``classification``, ``num_classes``, ``extra_features``);
* ``checkpoint_<epoch>.pt`` (the training run's checkpoints: a dict whose ``"model"`` is
  the state dict of ``alignn.models.alignn.ALIGNN``, beside optimiser, scheduler and
  trainer states) and/or ``best_model.pt``. Like the reference, the **last** such member
  in the archive's order is used.

Nothing is extracted to disk: members are read with :mod:`zipfile` into memory, the
checkpoint with ``torch.load(..., weights_only=True)``. A checkpoint whose optimiser or
scheduler state holds objects outside torch's weights-only allowlist (pickled by an old
torch) is read with **inert stand-ins** for exactly those globals (found by
``torch.serialization.get_unsafe_globals_in_checkpoint`` without unpickling): they only
record their arguments, no code of the file's choosing runs, and only ``"model"`` is kept.

:func:`jarvis_checkpoint` maps config + state dict onto a crystal encoder checkpoint
(``format = "crystal-encoder"``) for :class:`~crystal_alignn.encoder.ALIGNNEncoder`:
same parameter names under ``model.``, the RBF ``centers`` buffers dropped (recomputed,
checked against the config), the element-feature table (the CGCNN ``atom_init.json``
features the models were trained with, 92 per element) stored as ``model.element_features``,
the graph built as the reference builds it (``graph_construction = "reference"``).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from crystal.errors import ConfigError, WeightsError

__all__ = [
    "ATOM_FEATURES_WIDTH",
    "is_jarvis_archive",
    "jarvis_checkpoint",
    "load_atom_features",
    "read_jarvis_archive",
]

#: width of the CGCNN element features of the released models (``atom_input_features``)
ATOM_FEATURES_WIDTH = 92
#: rows of the element-feature table (row Z = element Z, row 0 unused)
_TABLE_ROWS = 101
_WHO = "encoder 'alignn'"


def _members(zf: zipfile.ZipFile) -> tuple[str | None, str | None]:
    """(config member, checkpoint member) of a JARVIS archive, by the reference's rules."""
    config = checkpoint = None
    for info in zf.infolist():
        if info.is_dir():
            continue
        base = PurePosixPath(info.filename).name
        if base == "config.json":
            config = info.filename
        if (base.startswith("checkpoint_") and base.endswith(".pt")) or base == "best_model.pt":
            checkpoint = info.filename  # the last one in archive order, as the reference
    return config, checkpoint


def is_jarvis_archive(path: str | Path) -> bool:
    """Whether ``path`` is a JARVIS ALIGNN zip (a ``config.json`` and a checkpoint member).

    A crystal ``.pt`` checkpoint (torch's zip format, ``*/data.pkl``) is not."""
    try:
        with zipfile.ZipFile(path) as zf:
            config, checkpoint = _members(zf)
    except (zipfile.BadZipFile, OSError):
        return False
    return config is not None and checkpoint is not None


def _stand_in(qualified: str) -> type:
    """An inert class standing in for the global ``qualified`` while unpickling."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self: Any, state: Any) -> None:
        self.state = state

    return type(
        "StandIn",
        (),
        {"__init__": __init__, "__setstate__": __setstate__, "__qualname__": f"StandIn[{qualified}]"},
    )


def _load_checkpoint_bytes(data: bytes, where: str) -> Any:
    """``torch.load(weights_only=True)`` of a checkpoint held in memory (see the module docstring)."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as first:  # not weights-only as such: find the globals it needs
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
        except Exception:
            raise WeightsError(f"{_WHO}: {where} is not a torch checkpoint: {first}") from None
        if not names:
            raise WeightsError(f"{_WHO}: cannot load {where} (weights-only): {first}") from None
        stand_ins: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [
            (_stand_in(name), name) for name in names
        ]
        try:
            with torch.serialization.safe_globals(stand_ins):
                return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise WeightsError(
                f"{_WHO}: cannot load {where} (weights-only, stand-ins for {', '.join(names)}): {exc}"
            ) from None


def read_jarvis_archive(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], str]:
    """``(config, state_dict, checkpoint member name)`` of a JARVIS ALIGNN zip, read in memory."""
    where = str(path)
    try:
        with zipfile.ZipFile(path) as zf:
            config_name, ckpt_name = _members(zf)
            if config_name is None or ckpt_name is None:
                raise WeightsError(
                    f"{_WHO}: {where} is not a JARVIS ALIGNN archive (needs config.json and "
                    "checkpoint_*.pt or best_model.pt)"
                )
            config = json.loads(zf.read(config_name).decode("utf-8"))
            raw = _load_checkpoint_bytes(zf.read(ckpt_name), f"{where}:{ckpt_name}")
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{_WHO}: cannot read the JARVIS archive {where}: {exc}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise WeightsError(f"{_WHO}: {where}:{config_name} has no 'model' section")
    # checkpoint_*.pt: {"model": state_dict, "optimizer": ..., ...}; best_model.pt: the state dict
    state = raw["model"] if isinstance(raw, dict) and isinstance(raw.get("model"), dict) else raw
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{_WHO}: {where}:{ckpt_name} holds no state dict of tensors")
    return config, dict(state), ckpt_name


def load_atom_features(path: str | Path, width: int = ATOM_FEATURES_WIDTH) -> torch.Tensor:
    """``(101, width)`` float64 table from an element-feature JSON ``{"Z": [floats]}``
    (CGCNN's ``atom_init.json``, as shipped in jarvis-tools); rows of absent elements are 0."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{_WHO}: cannot read the element features {str(path)!r}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{_WHO}: {str(path)!r} is not a JSON object {{'Z': [features]}}")
    table = torch.zeros((_TABLE_ROWS, width), dtype=torch.float64)
    for key, vec in data.items():
        try:
            z = int(key)
            row = torch.tensor([float(x) for x in vec], dtype=torch.float64)
        except (TypeError, ValueError):
            raise ConfigError(f"{_WHO}: {str(path)!r}: entry {key!r} is not 'Z': [numbers]") from None
        if not 1 <= z < _TABLE_ROWS:
            continue  # the model covers Z = 1-100
        if row.numel() != width or not bool(torch.isfinite(row).all()):
            raise ConfigError(f"{_WHO}: {str(path)!r}: element {z} has {row.numel()} features, expected {width}")
        table[z] = row
    return table


def _rbf_centres_match(state: dict[str, torch.Tensor], key: str, vmin: float, vmax: float, bins: int) -> None:
    centres = state.get(key)
    if centres is None:
        return
    expected = torch.linspace(vmin, vmax, bins, dtype=torch.float64)
    if centres.shape != expected.shape or not torch.allclose(centres.double(), expected, atol=1e-5):
        raise WeightsError(f"{_WHO}: {key} of the released model are not linspace({vmin}, {vmax}, {bins}); unsupported")


def jarvis_checkpoint(
    config: dict[str, Any],
    state: dict[str, torch.Tensor],
    atom_features: torch.Tensor,
    *,
    source: str,
    target: str | None = None,
) -> dict[str, Any]:
    """A crystal encoder checkpoint (dict) of a released ALIGNN (see the module docstring).

    ``config`` is the archive's ``config.json``, ``state`` the reference state dict,
    ``atom_features`` the ``(101, 92)`` element-feature table, ``target`` the name of the
    output (default: the config's ``target``)."""
    model = config["model"]
    name = model.get("name")
    if name != "alignn":
        raise WeightsError(
            f"{_WHO}: {source} is a {name!r} model; crystal's ALIGNN encoder loads 'alignn' property models "
            "(ALIGNN-FF 'alignn_atomwise' force fields are not supported)"
        )
    if model.get("zero_inflated") or model.get("extra_features"):
        raise WeightsError(f"{_WHO}: {source}: zero_inflated / extra_features models are not supported")
    strategy = config.get("neighbor_strategy", "k-nearest")
    if strategy != "k-nearest":
        raise WeightsError(f"{_WHO}: {source}: neighbor_strategy {strategy!r} is not supported (only 'k-nearest')")
    features = config.get("atom_features", "cgcnn")
    width = int(model.get("atom_input_features", ATOM_FEATURES_WIDTH))
    if features != "cgcnn" or width != ATOM_FEATURES_WIDTH or atom_features.shape[1] != width:
        raise WeightsError(f"{_WHO}: {source}: atom_features {features!r} ({width}) unsupported (only 'cgcnn', 92)")

    edge_bins = int(model.get("edge_input_features", 80))
    triplet_bins = int(model.get("triplet_input_features", 40))
    _rbf_centres_match(state, "edge_embedding.0.centers", 0.0, 8.0, edge_bins)
    _rbf_centres_match(state, "angle_embedding.0.centers", -1.0, 1.0, triplet_bins)
    arch = {
        "bond_rbf_max": 8.0,
        "max_neighbors": int(config.get("max_neighbors", 12)),
        "alignn_layers": int(model.get("alignn_layers", 4)),
        "gcn_layers": int(model.get("gcn_layers", 4)),
        "edge_input_features": edge_bins,
        "triplet_input_features": triplet_bins,
        "embedding_features": int(model.get("embedding_features", 64)),
        "hidden_features": int(model.get("hidden_features", 256)),
        "layer_order": "atom-then-line",
        "gate_normalization": "sum",
        "atom_features": "cgcnn",
        "link": model.get("link", "identity"),
        "graph_construction": "reference",
    }
    label = target or str(config.get("target") or "prediction")
    if model.get("classification", False):
        classes = int(model.get("num_classes", 2))
        spec: dict[str, Any] = {"name": label, "task": "classification", "num_classes": classes}
    else:
        spec = {"name": label, "dim": int(model.get("output_features", 1)), "normalize": False}

    sd: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(".centers") and key.split(".")[0] in ("edge_embedding", "angle_embedding"):
            continue  # recomputed (checked above)
        sd[f"model.{key}"] = value
    sd["model.element_features"] = atom_features.to(torch.float32)
    if spec.get("task", "regression") == "regression":
        sd[f"targets.mean_{label}"] = torch.zeros(spec["dim"])
        sd[f"targets.std_{label}"] = torch.ones(spec["dim"])
    return {
        "format": "crystal-encoder",
        "format_version": 1,
        "plugin": "alignn",
        "config": arch,
        "targets": [spec],
        "state_dict": sd,
        "metadata": {
            "source": source,
            "source_format": "JARVIS ALIGNN (usnistgov/alignn figshare zip)",
            "target": config.get("target"),
            "dataset": config.get("dataset"),
            "epochs": config.get("epochs"),
            "train_val_test": [config.get(k) for k in ("n_train", "n_val", "n_test")],
            "random_seed": config.get("random_seed"),
        },
    }
