"""Reading matgl's saved M3GNet potentials (``model.json`` + ``state.pt``) without unpickling code.

matgl's ``IOMixIn.save`` writes a folder with

* ``model.json`` — ``{"@class": "Potential", "@module": "matgl.apps.pes", "kwargs": {"model":
  {"@class": "M3GNet", "init_args": {...hyper-parameters...}}, "data_mean": ..., ...}}``;
* ``state.pt`` — the ``Potential``'s state dict (plain tensors: loaded here with
  ``torch.load(weights_only=True)``): ``data_mean``, ``data_std``, ``model.*`` and
  ``element_refs.property_offset`` (one reference energy per entry of ``element_types``);
* ``model.pt`` — the pickled init args (Python objects); never read here.

:func:`read_matgl_folder` reads the first two, :func:`convert_matgl` turns them into a crystal
potential checkpoint dict (architecture config + the state dict of
:class:`crystal.trainable_potential.PotentialNet` around :class:`crystal_m3gnet.model.M3GNet`).
Only the layout of the released universal potentials is accepted (spherical Bessel basis,
``use_smooth = use_phi = False``, extensive ``weighted_atom`` readout, no state features, swish);
anything else is a :class:`~crystal.errors.WeightsError` naming the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from crystal.errors import WeightsError

__all__ = ["convert_matgl", "matgl_hyperparameters", "read_matgl_folder"]

#: init_args of matgl's M3GNet that must have these values (the released PES layout)
REQUIRED = {
    "rbf_type": "SphericalBessel",
    "use_smooth": False,
    "use_phi": False,
    "is_intensive": False,
    "include_state": False,
    "task_type": "regression",
    "ntargets": 1,
    "activation_type": "swish",
}
#: init_args copied into the crystal config (same names and meaning)
COPIED = ("dim_node_embedding", "dim_edge_embedding", "units", "max_n", "max_l", "nblocks", "threebody_cutoff")
#: matgl's wrapper buffers that carry no learnt value (constants checked against the hyper-parameters)
_CUTOFF_BUFFERS = ("model.bond_expansion.rbf.cutoff", "model.basis_expansion.sbf.cutoff")
_IGNORED = ("element_refs.onehot",)


def matgl_hyperparameters(model_json: dict[str, Any], where: str) -> dict[str, Any]:
    """The M3GNet ``init_args`` of a matgl ``Potential`` model.json, validated."""
    if model_json.get("@class") != "Potential":
        raise WeightsError(f"{where}: model.json holds a {model_json.get('@class')!r}, not a matgl Potential")
    model = (model_json.get("kwargs") or {}).get("model") or {}
    if model.get("@class") != "M3GNet":
        raise WeightsError(f"{where}: the Potential wraps a {model.get('@class')!r}, not an M3GNet")
    args = dict(model.get("init_args") or {})
    for key, want in REQUIRED.items():
        if key in args and args[key] != want:
            raise WeightsError(
                f"{where}: init_args.{key} = {args[key]!r} is not supported (crystal-m3gnet reads the released "
                f"layout: {key} = {want!r})"
            )
    if args.get("is_intensive", True) is not False:
        raise WeightsError(
            f"{where}: init_args.is_intensive must be false (an extensive energy, weighted-atom readout)"
        )
    missing = [k for k in ("element_types", "cutoff", *COPIED) if k not in args]
    if missing:
        raise WeightsError(f"{where}: init_args lacks {', '.join(missing)}")
    return args


def read_matgl_folder(folder: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path]:
    """``(model.json as a dict, state dict, path of state.pt)`` of a matgl model folder."""
    folder = Path(folder).expanduser()
    mj, st = folder / "model.json", folder / "state.pt"
    for f in (mj, st):
        if not f.is_file():
            raise WeightsError(f"matgl model folder {str(folder)!r}: {f.name} is missing (need model.json + state.pt)")
    model_json = json.loads(mj.read_text(encoding="utf-8"))
    return model_json, load_state(st), st


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """matgl's ``state.pt`` with ``torch.load(weights_only=True)`` (no arbitrary unpickling)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors are deliberately not trusted
        raise WeightsError(f"{str(path)!r} is not a weights-only state dict: {exc}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{str(path)!r} is not a state dict of tensors")
    return dict(state)


def convert_matgl(
    model_json: dict[str, Any], state: dict[str, torch.Tensor], *, where: str, plugin: str, plugin_version: str
) -> dict[str, Any]:
    """A crystal potential checkpoint dict (``format = "crystal-potential"``) of a matgl M3GNet.

    * config: ``elements`` (matgl's ``element_types``, sorted by atomic number), ``cutoff`` and the
      :data:`COPIED` widths/orders, ``data_mean`` / ``data_std`` (from ``state.pt``), ``e0s``
      (``element_refs.property_offset``, eV/atom; zero when the potential has none);
    * state dict: ``model.*`` as saved, with the element-embedding rows reordered to the sorted
      elements, and ``e0`` (float64, same order).
    """
    from crystal.elements import atomic_number
    from crystal.trainable_potential import POTENTIAL_CHECKPOINT_FORMAT, POTENTIAL_CHECKPOINT_VERSION

    args = matgl_hyperparameters(model_json, where)
    types = list(args["element_types"])
    try:
        zs = [atomic_number(el) for el in types]
    except ValueError as exc:
        raise WeightsError(f"{where}: element_types: {exc}") from None
    order = sorted(range(len(types)), key=lambda k: zs[k])
    elements = [types[k] for k in order]
    cutoff = float(args["cutoff"])
    for key in _CUTOFF_BUFFERS:
        if key in state and abs(float(state[key]) - cutoff) > 1e-6 * cutoff:
            raise WeightsError(f"{where}: {key} = {float(state[key])} differs from init_args.cutoff = {cutoff}")

    model_state = {k: v for k, v in state.items() if k.startswith("model.") and k not in _CUTOFF_BUFFERS}
    known = {*model_state, *_CUTOFF_BUFFERS, *_IGNORED, "data_mean", "data_std", "element_refs.property_offset"}
    unknown = sorted(set(state) - known)
    if unknown:
        raise WeightsError(f"{where}: state.pt has entries crystal-m3gnet does not know: {', '.join(unknown)}")
    key = "model.embedding.layer_node_embedding.weight"
    if key not in model_state or model_state[key].shape[0] != len(types):
        raise WeightsError(f"{where}: {key} missing or not one row per element_types entry ({len(types)})")
    model_state[key] = model_state[key][order].clone()

    refs = state.get("element_refs.property_offset")
    if refs is not None:
        if refs.ndim != 1 or refs.shape[0] != len(types):
            raise WeightsError(
                f"{where}: element_refs.property_offset has shape {tuple(refs.shape)}, not ({len(types)},)"
            )
        e0 = refs.to(torch.float64)[order]
    else:
        e0 = torch.zeros(len(types), dtype=torch.float64)
    config: dict[str, Any] = {
        "elements": elements,
        "cutoff": cutoff,
        **{k: args[k] for k in COPIED},
        "data_mean": float(state["data_mean"]) if "data_mean" in state else 0.0,
        "data_std": float(state["data_std"]) if "data_std" in state else 1.0,
        "e0s": {el: float(v) for el, v in zip(elements, e0.tolist(), strict=True)},
    }
    config["threebody_cutoff"] = float(config["threebody_cutoff"])
    model_state["e0"] = e0
    return {
        "format": POTENTIAL_CHECKPOINT_FORMAT,
        "format_version": POTENTIAL_CHECKPOINT_VERSION,
        "plugin": plugin,
        "plugin_version": plugin_version,
        "config": config,
        "state_dict": model_state,
        "metadata": {"source": where, "matgl_class_version": model_json.get("@model_version")},
    }
