"""mace-torch's released models (``.model`` files) in crystal: conversion and loading.

The MACE foundation models (MACE-MP-0 small/medium/large, MACE-MPA-0, MACE-OFF23, …) are released
as *pickled* mace-torch modules (``torch.save(model)`` of a ``ScaleShiftMACE``). crystal never unpickles
such a file on its own. The conversion runs once, in the user's environment where mace-torch is
installed::

    crystal weights download mace-mp-0-small
    crystal weights import --trust-pickle FILE --name mace-mp-0-small    # needs mace-torch importable

``crystal weights import --trust-pickle`` unpickles the file and calls :func:`convert_module`, which
reads the hyper-parameters off the module object and returns a weights-only payload::

    {"format": "mace-torch-state-dict", "format_version": 1,
     "hparams": {<JSON-able architecture, atomic energies, scale/shift, heads, versions>},
     "state_dict": {<mace-torch's own state dict, tensors>}}

:func:`payload_to_checkpoint` (no mace-torch needed) turns a payload into a crystal potential checkpoint
for :class:`~crystal_mace.potential.MACEPotential`. Everything maps one-to-one except the product-basis
weights: mace-torch's coupling tensors ``U`` (saved in its state dict) are symmetrised over their ν input
indices and re-expressed in our symmetric basis by least squares, ``sym(U_theirs) = U_ours · T``, so
``W_ours = T · W_theirs``; the residual must vanish (both bases span the same space) and is checked.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "PAYLOAD_FORMAT",
    "SUPPORTED_FIRST_INTERACTIONS",
    "convert_module",
    "load_payload",
    "payload_to_checkpoint",
]

PAYLOAD_FORMAT = "mace-torch-state-dict"
PAYLOAD_VERSION = 1
RESIDUAL = "RealAgnosticResidualInteractionBlock"
SUPPORTED_FIRST_INTERACTIONS = {RESIDUAL: "residual", "RealAgnosticInteractionBlock": "non_residual"}
_TRANSFORMS = {None: "none", "AgnesiTransform": "agnesi"}
#: largest relative residual allowed when re-expressing the product-basis weights (the bases span the same
#: space): float64 coupling tensors, and float32 ones (a float32-trained release)
BASIS_TOLERANCE = 1e-8
BASIS_TOLERANCE_FLOAT32 = 1e-5


# --------------------------------------------------------------------------------------------- converter
def _name(obj: Any) -> str | None:
    return None if obj is None else type(obj).__name__


def _gate_name(readout: Any) -> str:
    acts = list(getattr(getattr(readout, "non_linearity", None), "acts", []) or [])
    if not acts or acts[0] is None:
        return "none"
    fn = getattr(acts[0], "f", acts[0])
    return str(getattr(fn, "__name__", type(fn).__name__))


def _floats(t: Any) -> Any:
    t = torch.as_tensor(t).detach().to(torch.float64).cpu()
    return t.tolist()


def convert_module(obj: Any) -> dict[str, Any]:
    """The weights-only payload of an unpickled mace-torch model (``ScaleShiftMACE`` or ``MACE``).

    Reads the hyper-parameters from the module object (attributes and buffers, with the defaults of
    older mace-torch versions for attributes a pickle may lack) and copies its state dict. Raises
    ``TypeError`` for an object that is not a mace-torch energy model. Runs where mace-torch is
    installed (``crystal weights import --trust-pickle``); needs nothing from mace-torch itself.
    """
    from e3nn import o3

    if isinstance(obj, Mapping) and "model" in obj:  # a training checkpoint dict holding the module
        obj = obj["model"]
    if not isinstance(obj, torch.nn.Module) or not all(
        hasattr(obj, a) for a in ("interactions", "products", "readouts", "radial_embedding", "atomic_energies_fn")
    ):
        raise TypeError(f"not a mace-torch MACE model: {type(obj).__module__}.{type(obj).__qualname__}")
    model = obj
    radial = model.radial_embedding
    inter = list(model.interactions)
    heads = [str(h) for h in getattr(model, "heads", None) or ["Default"]]
    sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    correlation = []
    for t in range(len(inter)):
        prefix = f"products.{t}.symmetric_contractions.contractions.0.U_matrix_"
        orders = [int(k[len(prefix) :]) for k in sd if k.startswith(prefix)]
        correlation.append(max(orders) if orders else 0)
    # with one layer mace-torch keeps only the scalars of hidden_irreps
    hidden = o3.Irreps(model.products[0].linear.irreps_out if len(inter) > 1 else inter[0].hidden_irreps)
    last = model.readouts[-1]
    mlp = o3.Irreps(getattr(last, "hidden_irreps", None) or last.linear_1.irreps_out)
    hs = list(inter[0].conv_tp_weights.hs)
    scale_shift = getattr(model, "scale_shift", None)
    try:
        import mace

        mace_version = str(getattr(mace, "__version__", None) or "unknown")
    except ImportError:  # pragma: no cover - the converter runs where mace-torch is installed
        mace_version = "unknown"
    param = next(model.parameters())
    hparams: dict[str, Any] = {
        "model_class": type(model).__name__,
        "mace_version": mace_version,
        "default_dtype": str(param.dtype).removeprefix("torch."),
        "r_max": float(model.r_max),
        "num_bessel": int(radial.out_dim),
        "num_polynomial_cutoff": int(radial.cutoff_fn.p),
        "radial_type": _name(getattr(radial, "bessel_fn", None)),
        "distance_transform": _name(getattr(radial, "distance_transform", None)),
        "apply_cutoff": bool(getattr(radial, "apply_cutoff", True)),
        "max_ell": int(o3.Irreps(model.spherical_harmonics.irreps_out).lmax),
        "hidden_irreps": str(hidden),
        "mlp_irreps": str(mlp),
        "num_interactions": len(inter),
        "correlation": correlation,
        "radial_mlp": [int(h) for h in hs[1:-1]],
        "num_radial_inputs": int(hs[0]),
        "gate": _gate_name(last),
        "avg_num_neighbors": [float(b.avg_num_neighbors) for b in inter],
        "atomic_numbers": [int(z) for z in model.atomic_numbers.tolist()],
        "atomic_energies": _floats(model.atomic_energies_fn.atomic_energies),
        "heads": heads,
        "scale": _floats(scale_shift.scale) if scale_shift is not None else 1.0,
        "shift": _floats(scale_shift.shift) if scale_shift is not None else 0.0,
        "interaction_cls_first": type(inter[0]).__name__,
        "interaction_cls": type(inter[1]).__name__ if len(inter) > 1 else type(inter[0]).__name__,
        "pair_repulsion": bool(hasattr(model, "pair_repulsion")),
        "use_agnostic_product": bool(getattr(model, "use_agnostic_product", False)),
        "use_last_readout_only": bool(getattr(model, "use_last_readout_only", False)),
        "edge_irreps": None if getattr(model, "edge_irreps", None) is None else str(model.edge_irreps),
        "joint_embedding": bool(hasattr(model, "joint_embedding")),
        "cueq": any(".symmetric_contractions.weight" in k for k in sd),
        "readouts": [type(r).__name__ for r in model.readouts],
    }
    return {"format": PAYLOAD_FORMAT, "format_version": PAYLOAD_VERSION, "hparams": hparams, "state_dict": sd}


# ------------------------------------------------------------------------------------------------ loader
def load_payload(path: str | Path) -> dict[str, Any]:
    """A payload file (``torch.save`` of :func:`convert_module`'s dict, or crystal's converted-weights
    record holding one) loaded with ``weights_only=True``."""
    obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and obj.get("format") == "crystal-converted-weights":
        obj = obj["payload"]
    if not isinstance(obj, Mapping) or obj.get("format") != PAYLOAD_FORMAT:
        raise ValueError(f"{path} is not a {PAYLOAD_FORMAT!r} payload (crystal_mace.convert.convert_module)")
    return dict(obj)


def _check_supported(hp: Mapping[str, Any]) -> None:
    problems = []
    if hp["model_class"] not in ("ScaleShiftMACE", "MACE"):
        problems.append(f"model class {hp['model_class']} (ScaleShiftMACE and MACE are supported)")
    if hp["interaction_cls"] != RESIDUAL:
        problems.append(f"interaction {hp['interaction_cls']} (only {RESIDUAL})")
    if hp["interaction_cls_first"] not in SUPPORTED_FIRST_INTERACTIONS:
        problems.append(f"first interaction {hp['interaction_cls_first']}")
    if hp["radial_type"] not in ("BesselBasis", None):
        problems.append(f"radial basis {hp['radial_type']} (only Bessel)")
    if hp["distance_transform"] not in _TRANSFORMS:
        problems.append(f"distance transform {hp['distance_transform']} (none or Agnesi)")
    for flag in ("use_agnostic_product", "use_last_readout_only", "joint_embedding", "cueq"):
        if hp.get(flag):
            problems.append(f"{flag}=True")
    if hp.get("edge_irreps") is not None:
        problems.append(f"edge_irreps={hp['edge_irreps']}")
    from crystal_mace.readout import GATES

    if hp["gate"] not in GATES:
        problems.append(f"gate {hp['gate']!r}")
    if len(set(hp["avg_num_neighbors"])) != 1:
        problems.append(f"per-layer avg_num_neighbors {hp['avg_num_neighbors']}")
    if problems:
        raise ValueError(
            "this mace-torch model uses features crystal's MACE does not implement: " + "; ".join(problems)
        )


def _head_index(hp: Mapping[str, Any], head: str | None) -> int:
    heads = list(hp["heads"])
    if head is None:
        for name in ("Default", "default"):
            if name in heads:
                return heads.index(name)
        return 0
    if head not in heads:
        raise ValueError(f"head {head!r} is not one of the model's heads {heads}")
    return heads.index(head)


def _per_head(value: Any, h: int) -> float:
    if isinstance(value, list):
        return float(value[h] if len(value) > 1 else value[0])
    return float(value)


def hparams_to_config(hp: Mapping[str, Any], head: str | None = None) -> dict[str, Any]:
    """The :class:`~crystal_mace.potential.MACEConfig` fields (architecture, elements, e0s, statistics)
    of a payload's hyper-parameters, for ``head`` (default: the ``Default`` head, else the first)."""
    from e3nn import o3

    from crystal.elements import symbol

    _check_supported(hp)
    h = _head_index(hp, head)
    n_heads = len(hp["heads"])
    zs = [int(z) for z in hp["atomic_numbers"]]
    if zs != sorted(zs):
        raise ValueError(f"atomic_numbers {zs} are not sorted")
    e0 = hp["atomic_energies"]
    if e0 and isinstance(e0[0], list):
        e0 = e0[h]
    hidden = o3.Irreps(hp["hidden_irreps"]).simplify()
    mlp = o3.Irreps(hp["mlp_irreps"]).simplify()
    mlp_mul = mlp[0].mul // n_heads
    corr = [int(c) for c in hp["correlation"]]
    return {
        "elements": [symbol(z) for z in zs],
        "cutoff": float(hp["r_max"]),
        "e0s": {symbol(z): float(v) for z, v in zip(zs, e0, strict=True)},
        "hidden_irreps": str(hidden),
        "max_ell": int(hp["max_ell"]),
        "correlation": corr[0] if len(set(corr)) == 1 else corr,
        "num_interactions": int(hp["num_interactions"]),
        "num_bessel": int(hp["num_bessel"]),
        "num_polynomial_cutoff": int(hp["num_polynomial_cutoff"]),
        "radial_mlp": [int(w) for w in hp["radial_mlp"]],
        "mlp_irreps": f"{mlp_mul}x0e",
        "interaction_first": SUPPORTED_FIRST_INTERACTIONS[hp["interaction_cls_first"]],
        "gate": hp["gate"],
        "pair_repulsion": bool(hp["pair_repulsion"]),
        "distance_transform": _TRANSFORMS[hp["distance_transform"]],
        "apply_cutoff": bool(hp["apply_cutoff"]),
        "avg_num_neighbors": float(hp["avg_num_neighbors"][0]),
        "scale": _per_head(hp["scale"], h),
        "shift": _per_head(hp["shift"], h),
        "head": str(hp["heads"][h]) if n_heads > 1 else None,
    }


def _product_weights(
    sd: Mapping[str, torch.Tensor], pre: str, u_ours: torch.Tensor, nu: int, correlation: int
) -> tuple[torch.Tensor, float]:
    """Our weights (Z, n_ours, K) of order ``nu`` of one contraction, and the least-squares residual."""
    u_t = sd[pre + f"U_matrix_{nu}"].to(torch.float64)
    if u_t.dim() == nu + 1:  # mace-torch drops the M axis of scalar outputs
        u_t = u_t.unsqueeze(0)
    w_t = (sd[pre + "weights_max"] if nu == correlation else sd[pre + f"weights.{correlation - 1 - nu}"]).to(
        torch.float64
    )  # (Z, n_theirs, K)
    perms = list(itertools.permutations(range(1, 1 + nu)))
    sym = sum(u_t.permute(0, *p, nu + 1) for p in perms) / len(perms)  # (M, D, ..., D, n_theirs)
    a = u_ours.to(torch.float64).reshape(-1, u_ours.shape[-1])  # (M·D^ν, n_ours)
    b = sym.reshape(-1, sym.shape[-1])  # (M·D^ν, n_theirs)
    scale = float(b.abs().max()) if b.numel() else 0.0
    if a.shape[1] == 0 or scale == 0.0:
        return torch.zeros(w_t.shape[0], a.shape[1], w_t.shape[2], dtype=torch.float64), scale
    t = torch.linalg.lstsq(a, b).solution  # (n_ours, n_theirs)
    residual = float((a @ t - b).abs().max()) / scale
    return torch.einsum("ot,ztk->zok", t, w_t), residual


def convert_state_dict(
    model: torch.nn.Module, hp: Mapping[str, Any], sd: Mapping[str, torch.Tensor], head: str | None = None
) -> dict[str, torch.Tensor]:
    """Our :class:`~crystal_mace.model.MACE` state dict (float64) from mace-torch's ``sd``."""
    h = _head_index(hp, head)
    n_heads = len(hp["heads"])
    from e3nn import o3

    mlp_mul = o3.Irreps(hp["mlp_irreps"]).simplify()[0].mul // n_heads
    f64 = {k: v.to(torch.float64) if v.is_floating_point() else v for k, v in sd.items()}
    ours = model.state_dict()
    new: dict[str, torch.Tensor] = {}
    worst = 0.0
    zs = torch.as_tensor(hp["atomic_numbers"], dtype=torch.long)
    for key, value in ours.items():
        if ".symmetric_contraction." in key:
            continue
        if key.startswith(("distance_transform.", "pair_repulsion.")):
            transform = key.startswith("distance_transform.")
            src = "radial_embedding.distance_transform." if transform else "pair_repulsion_fn."
            leaf = key.rsplit(".", 1)[1]
            if leaf == "radii":
                new[key] = f64[src + "covalent_radii"][zs]
            elif leaf == "z":
                new[key] = zs.to(torch.float64)
            else:
                new[key] = f64[src + leaf].reshape(value.shape)
            continue
        theirs = key.replace("node_embedding.", "node_embedding.linear.", 1).replace(".radial.", ".conv_tp_weights.")
        w = f64[theirs]
        if key.startswith("readouts.") and n_heads > 1:
            w = _head_slice(key, w, value.numel(), mlp_mul, n_heads, h)
        if w.numel() != value.numel():
            raise ValueError(f"{theirs}: {tuple(w.shape)} does not fit {key} {tuple(value.shape)}")
        new[key] = w.reshape(value.shape)
    for t, prod in enumerate(model.products):  # type: ignore[attr-defined]
        for c, con in enumerate(prod.symmetric_contraction.contractions):
            pre = f"products.{t}.symmetric_contractions.contractions.{c}."
            mine = f"products.{t}.symmetric_contraction.contractions.{c}."
            for nu in range(1, con.correlation + 1):
                u_ours = getattr(con, f"U_{nu}")
                w, residual = _product_weights(f64, pre, u_ours, nu, con.correlation)
                worst = max(worst, residual)
                new[mine + f"weights.{nu - 1}"] = w
                new[mine + f"U_{nu}"] = u_ours
    # a float32-trained release stores U rounded to float32: its residual is float32 round-off
    tolerance = (
        BASIS_TOLERANCE
        if all(v.dtype == torch.float64 for k, v in sd.items() if ".U_matrix_" in k)
        else BASIS_TOLERANCE_FLOAT32
    )
    if worst > tolerance:
        raise ValueError(
            f"mace-torch's product basis is not in the span of ours (relative residual {worst:.2e}); "
            "another e3nn/mace-torch basis convention?"
        )
    return new


def _head_slice(key: str, full: torch.Tensor, n_ours: int, mlp_mul: int, n_heads: int, h: int) -> torch.Tensor:
    """The part of a multi-head readout's e3nn ``Linear`` weights (flat ``(mul_in, mul_out)``) that head
    ``h`` uses (mace-torch masks the other heads' MLP channels)."""
    if key.endswith("linear_1.weight"):  # K x0e -> (H·M) x0e: columns of block h
        return full.reshape(n_ours // mlp_mul, n_heads * mlp_mul)[:, h * mlp_mul : (h + 1) * mlp_mul]
    if key.endswith("linear_2.weight"):  # (H·M) x0e -> H x0e: rows of block h, column h; fan-in H·M -> M
        return full.reshape(n_heads * mlp_mul, n_heads)[h * mlp_mul : (h + 1) * mlp_mul, h] / math.sqrt(n_heads)
    return full.reshape(-1, n_heads)[:, h]  # linear readout K x0e -> H x0e: column h


def payload_to_checkpoint(payload: Mapping[str, Any], head: str | None = None) -> dict[str, Any]:
    """A crystal potential checkpoint dict (``format: crystal-potential``) of a mace-torch payload."""
    from crystal_mace import __version__
    from crystal_mace.potential import MACEConfig, MACEPotential

    if payload.get("format") != PAYLOAD_FORMAT:
        raise ValueError(f"not a {PAYLOAD_FORMAT!r} payload: format {payload.get('format')!r}")
    if int(payload.get("format_version", 0)) > PAYLOAD_VERSION:
        raise ValueError(f"payload format_version {payload.get('format_version')} is newer than this crystal-mace")
    hp = payload["hparams"]
    sd = payload["state_dict"]
    fields = hparams_to_config(hp, head)
    for src in ("radial_embedding.distance_transform.covalent_radii", "pair_repulsion_fn.covalent_radii"):
        if src in sd:
            radii = sd[src].to(torch.float64)[torch.as_tensor(hp["atomic_numbers"], dtype=torch.long)]
            fields["covalent_radii"] = [float(r) for r in radii]
            break
    config = MACEConfig(**fields)
    model = MACEPotential.build_model(config)
    state = convert_state_dict(model, hp, sd, head)
    model.load_state_dict(state, strict=True)
    e0 = torch.tensor([fields["e0s"][el] for el in config.elements], dtype=torch.float64)
    from crystal.trainable_potential import RUNTIME_FIELDS

    arch = config.model_dump(mode="json", exclude=set(RUNTIME_FIELDS))
    return {
        "format": "crystal-potential",
        "format_version": 1,
        "plugin": "mace",
        "plugin_version": __version__,
        "config": arch,
        "state_dict": {**{f"model.{k}": v for k, v in model.state_dict().items()}, "e0": e0},
        "metadata": {
            "source": "mace-torch",
            "mace_version": hp.get("mace_version"),
            "model_class": hp.get("model_class"),
            "head": hp["heads"][_head_index(hp, head)],
            "source_dtype": hp.get("default_dtype"),
        },
    }
