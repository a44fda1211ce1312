"""Saving and loading DiffCSP weights (``torch.load(..., weights_only=True)`` only).

Two formats load:

* ``crystal-diffcsp/1`` (``model.pt`` of :mod:`crystal_diffcsp.train`, the shipped weights):
  ``{"format", "config", "state_dict", "metadata"}``;
* the released format of the reference code (jiaor17/DiffCSP): a PyTorch-Lightning run folder
  with ``epoch=<e>-step=<s>.ckpt`` and Hydra's ``hparams.yaml``, or the bare ``.ckpt``
  (:func:`load_reference_checkpoint`; read with :func:`crystal.checkpoint_formats.load_lightning_checkpoint`,
  no arbitrary unpickling).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from crystal.errors import WeightsError
from crystal_diffcsp.diffusion import DiffCSP, DiffCSPModelConfig

__all__ = [
    "FORMAT",
    "config_from_reference",
    "load_checkpoint",
    "load_reference_checkpoint",
    "model_from_reference_state",
    "model_from_state",
    "reference_state_dict",
    "save_checkpoint",
]

FORMAT = "crystal-diffcsp/1"


def save_checkpoint(model: DiffCSP, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``{"format", "config" (JSON), "state_dict", "metadata" (JSON)}`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    torch.save(
        {
            "format": FORMAT,
            "config": model.config.model_dump_json(),
            "state_dict": state,
            "metadata": json.dumps(metadata or {}),
        },
        path,
    )
    return path


def model_from_state(state: Any, where: str) -> tuple[DiffCSP, dict[str, Any]]:
    """Build the model from a loaded checkpoint dict; errors name ``where``."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        fmt = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise WeightsError(f"{where}: not a {FORMAT} checkpoint (format {fmt!r})")
    try:
        config = DiffCSPModelConfig.model_validate_json(state["config"])
    except (ValidationError, KeyError, TypeError) as exc:
        raise WeightsError(f"{where}: invalid model config in checkpoint: {exc}") from None
    model = DiffCSP(config)
    try:
        model.load_state_dict(state["state_dict"], strict=True)
    except (RuntimeError, KeyError) as exc:
        raise WeightsError(f"{where}: state_dict does not fit the model config: {exc}") from None
    model.eval()
    return model, json.loads(state.get("metadata") or "{}")


def load_checkpoint(path: str | Path) -> tuple[DiffCSP, dict[str, Any]]:
    """Load a checkpoint file written by :func:`save_checkpoint` (weights-only unpickling), or a
    released reference run (a folder with ``*.ckpt`` + ``hparams.yaml``, or a ``.ckpt`` file;
    :func:`load_reference_checkpoint`)."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".ckpt":
        return load_reference_checkpoint(path)
    if not path.is_file():
        raise WeightsError(f"diffcsp checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors are not trusted
        raise WeightsError(f"{path} is not a weights-only checkpoint: {exc}") from None
    return model_from_state(state, str(path))


# ---------------------------------------------------------------------------------------------
# the reference code's released format (jiaor17/DiffCSP, PyTorch-Lightning + Hydra)

#: reference decoder options our CSPNet implements (other values are refused)
_REFERENCE_DECODER = {"act_fn": "silu", "dis_emb": "sin", "edge_style": "fc", "ip": True, "max_atoms": 100}
_REFERENCE_TARGETS = {
    "diffcsp.pl_modules.diffusion.CSPDiffusion": "csp",
    "diffcsp.pl_modules.diffusion_w_type.CSPDiffusion": "ab_initio",
}


def reference_state_dict(ref: dict[str, Any], num_layers: int) -> dict[str, Any]:
    """Rename the reference ``CSPDiffusion`` state dict (``decoder.*``) to ours (``net.*``).

    ``decoder.csp_layer_<i>.edge_mlp.{0,2}`` → ``net.layers.<i>.edge_in/edge_out``,
    ``node_mlp.{0,2}`` → the same, ``layer_norm`` → ``norm``; ``atom_latent_emb`` →
    ``atom_latent``, ``final_layer_norm`` → ``final_norm``. The reference's coordinate head
    predicts −score (its target is ``d_log_p_wrapped_normal``, the negative score, and its sampler
    subtracts it); ours predicts +score, so ``coord_out.weight`` is negated (a linear map without
    bias: the same model). The scheduler buffers are not part of our state dict (see
    :func:`model_from_reference_state`).
    """
    out: dict[str, Any] = {}
    for key, value in ref.items():
        if not key.startswith("decoder."):
            continue
        k = key[len("decoder.") :]
        if k.startswith("csp_layer_"):
            idx, rest = k[len("csp_layer_") :].split(".", 1)
            if int(idx) >= num_layers:
                raise WeightsError(f"reference state dict: unexpected layer {key}")
            rest = (
                rest.replace("edge_mlp.0.", "edge_in.")
                .replace("edge_mlp.2.", "edge_out.")
                .replace("layer_norm.", "norm.")
            )
            k = f"layers.{idx}.{rest}"
        else:
            k = k.replace("atom_latent_emb.", "atom_latent.").replace("final_layer_norm.", "final_norm.")
        if k == "coord_out.weight":
            value = -value
        out[f"net.{k}"] = value
    return out


def _as_bool(v: Any) -> Any:
    return v.lower() == "true" if isinstance(v, str) and v.lower() in ("true", "false") else v


def config_from_reference(state_dict: dict[str, Any], hparams: dict[str, Any] | None, where: str) -> DiffCSPModelConfig:
    """Our model config from the reference state dict's shapes and buffers, checked against the
    hyper-parameters (``hparams.yaml``'s ``model`` section or the checkpoint's
    ``hyper_parameters``) when given. Raises :class:`WeightsError` for options our CSPNet lacks."""
    sd = state_dict
    try:
        latent = sd["decoder.atom_latent_emb.weight"]
        hidden = int(latent.shape[0])
        time_dim = int(latent.shape[1]) - hidden
        num_layers = 0
        while f"decoder.csp_layer_{num_layers}.edge_mlp.0.weight" in sd:
            num_layers += 1
        edge_in = int(sd["decoder.csp_layer_0.edge_mlp.0.weight"].shape[1])
        betas = sd["beta_scheduler.betas"]
        sigmas = sd["sigma_scheduler.sigmas"]
        node = sd["decoder.node_embedding.weight"]
    except KeyError as exc:
        raise WeightsError(f"{where}: not a DiffCSP CSPDiffusion state dict (missing {exc})") from None
    ab_initio = "decoder.type_out.weight" in sd
    if "decoder.scalar_out.weight" in sd:
        raise WeightsError(f"{where}: a DiffCSP property (energy) model, not a generative CSPDiffusion")
    fourier = edge_in - 2 * hidden - 9
    if fourier <= 0 or fourier % 6:
        raise WeightsError(f"{where}: edge input of width {edge_in} needs dis_emb 'sin' (only that is supported)")
    expected_node = (hidden, 100) if ab_initio else (100, hidden)
    if tuple(node.shape) != expected_node:
        raise WeightsError(f"{where}: node embedding of shape {tuple(node.shape)}, expected {expected_node}")
    timesteps = int(betas.shape[0]) - 1
    beta_schedule = "cosine"
    from crystal_diffcsp.schedules import cosine_betas, linear_betas

    for name, ours in (("cosine", cosine_betas(timesteps)), ("linear", linear_betas(timesteps))):
        if torch.allclose(betas[1:].double(), ours, rtol=1e-2, atol=1e-6):  # the reference: float32
            beta_schedule = name
            break
    else:
        raise WeightsError(f"{where}: beta schedule is neither cosine nor linear (1e-4 … 0.02)")
    fields: dict[str, Any] = {
        "mode": "ab_initio" if ab_initio else "csp",
        "hidden_dim": hidden,
        "num_layers": num_layers,
        "num_freqs": fourier // 6,
        "time_dim": time_dim,
        "layer_norm": "decoder.final_layer_norm.weight" in sd,
        "timesteps": timesteps,
        "beta_schedule": beta_schedule,
        # float32 buffers: 6 significant digits recover the configured values (0.005, 0.5)
        "sigma_begin": float(f"{float(sigmas[1]):.6g}"),
        "sigma_end": float(f"{float(sigmas[-1]):.6g}"),
        # the reference's embeddings cover Z = 1 … 100; which elements it saw is not recorded
        "elements": tuple(range(1, 101)),
    }
    if hparams:
        dec = hparams.get("decoder") or {}
        target = hparams.get("_target_")
        if target is not None and _REFERENCE_TARGETS.get(str(target), fields["mode"]) != fields["mode"]:
            raise WeightsError(f"{where}: hparams _target_ {target} does not match the weights ({fields['mode']})")
        for key, want in _REFERENCE_DECODER.items():
            got = _as_bool(dec.get(key, want))
            if got != want:
                raise WeightsError(f"{where}: decoder.{key} = {got!r} is not supported (only {want!r})")
        mode = (hparams.get("beta_scheduler") or {}).get("scheduler_mode", beta_schedule)
        if mode != beta_schedule:
            raise WeightsError(f"{where}: hparams beta_scheduler.scheduler_mode {mode!r} does not match the weights")
        if int(hparams.get("latent_dim", 0) or 0) != 0:
            raise WeightsError(f"{where}: latent_dim {hparams['latent_dim']} (a conditioned model) is not supported")
        checks = {
            "hidden_dim": dec.get("hidden_dim"),
            "num_layers": dec.get("num_layers"),
            "num_freqs": dec.get("num_freqs"),
            "time_dim": hparams.get("time_dim"),
            "timesteps": hparams.get("timesteps"),
        }
        for key, value in checks.items():
            if isinstance(value, int | str) and str(value).isdigit() and int(value) != fields[key]:
                raise WeightsError(f"{where}: hparams {key} = {value} but the weights have {fields[key]}")
        if "ln" in dec and _as_bool(dec["ln"]) is not fields["layer_norm"]:
            raise WeightsError(f"{where}: hparams decoder.ln = {dec['ln']} does not match the weights")
        for key in ("cost_lattice", "cost_coord", "cost_type"):
            value = hparams.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                fields[key] = float(value)
    try:
        return DiffCSPModelConfig(**fields)
    except ValidationError as exc:
        raise WeightsError(f"{where}: invalid model config: {exc}") from None


def model_from_reference_state(state_dict: dict[str, Any], hparams: dict[str, Any] | None, where: str) -> DiffCSP:
    """Build our model from a reference ``CSPDiffusion`` state dict (+ hyper-parameters).

    The scheduler buffers of the file replace ours: the lattice schedule agrees with ours to
    float32 rounding, and the score normalisers ``sigmas_norm`` of the reference are a 10,000-
    sample Monte Carlo estimate drawn when the run started (ours: quadrature, a few % apart), the
    values that model was trained with. They are kept in the loaded model (not in a re-saved
    ``crystal-diffcsp/1`` file, which recomputes them).
    """
    config = config_from_reference(state_dict, hparams, where)
    model = DiffCSP(config)
    try:
        model.load_state_dict(reference_state_dict(state_dict, config.num_layers), strict=False)
        missing = sorted(set(model.state_dict()) - set(reference_state_dict(state_dict, config.num_layers)))
        missing = [k for k in missing if k != "num_atoms_counts"]
        if missing:
            raise WeightsError(f"{where}: reference state dict lacks {missing}")
        with torch.no_grad():
            for ours, theirs in ((model.beta, "beta_scheduler"), (model.sigma, "sigma_scheduler")):
                for name, buf in ours.named_buffers():
                    key = f"{theirs}.{name}"
                    if key not in state_dict:
                        raise WeightsError(f"{where}: reference state dict lacks {key}")
                    value = state_dict[key]
                    if tuple(value.shape) != tuple(buf.shape):
                        raise WeightsError(
                            f"{where}: {key} has shape {tuple(value.shape)}, expected {tuple(buf.shape)}"
                        )
                    buf.copy_(value.to(buf.dtype))
    except RuntimeError as exc:
        raise WeightsError(f"{where}: state dict does not fit the model config: {exc}") from None
    model.eval()
    return model


def _read_hparams_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise WeightsError(f"{path}: cannot read: {exc}") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: not a Hydra config (a mapping expected)")
    return data


def _pick_ckpt(folder: Path) -> Path:
    """The reference's choice (``scripts/eval_utils.load_model``): ``last.ckpt`` if present, else the
    highest ``epoch=<e>-...ckpt``."""
    ckpts = sorted(folder.glob("*.ckpt"))
    if not ckpts:
        raise WeightsError(f"{folder}: no *.ckpt file (a released DiffCSP run folder holds epoch=...ckpt)")
    for ck in ckpts:
        if "last" in ck.name:
            return ck

    def epoch(p: Path) -> int:
        head = p.name.split("-")[0]
        return int(head.split("=")[1]) if head.startswith("epoch=") and head.split("=")[1].isdigit() else -1

    return max(ckpts, key=epoch)


def load_reference_checkpoint(path: str | Path) -> tuple[DiffCSP, dict[str, Any]]:
    """Load a released DiffCSP run: a folder with ``*.ckpt`` and ``hparams.yaml`` (the model
    section is checked against the weights), or a bare ``.ckpt`` (its ``hyper_parameters`` are
    used). Weights-only: :func:`crystal.checkpoint_formats.load_lightning_checkpoint`.

    Returns ``(model, metadata)``; metadata records the source, epoch, global step and
    Lightning version. The elements are not recorded in the reference format: all Z = 1 … 100
    are allowed.
    """
    from crystal.checkpoint_formats import load_lightning_checkpoint

    path = Path(path).expanduser()
    hparams: dict[str, Any] | None = None
    if path.is_dir():
        ckpt_path = _pick_ckpt(path)
        yaml_path = path / "hparams.yaml"
        if yaml_path.is_file():
            cfg = _read_hparams_yaml(yaml_path)
            hparams = cfg.get("model") if isinstance(cfg.get("model"), dict) else None
    else:
        ckpt_path = path
    ckpt = load_lightning_checkpoint(ckpt_path)
    if hparams is None and isinstance(ckpt.get("hyper_parameters"), dict):
        hparams = ckpt["hyper_parameters"]
    model = model_from_reference_state(ckpt["state_dict"], hparams, str(ckpt_path))
    meta = {
        "source": str(ckpt_path),
        "format": "diffcsp-reference-lightning",
        "epoch": ckpt.get("epoch"),
        "global_step": ckpt.get("global_step"),
        "lightning_version": ckpt.get("pytorch-lightning_version"),
    }
    return model, meta
