"""CrystaLLM checkpoints: ours, and the released models' nanoGPT ``ckpt.pt`` (plain or in a ``.tar.gz``).

Every file is read with ``torch.load(..., weights_only=True)``: nothing in it is unpickled
beyond tensors, containers and numbers, so no code from a file runs.

**Ours** (format ``crystal-crystallm/1``, written by :func:`save_checkpoint`)::

    {"format": "crystal-crystallm/1",
     "config": <GPTConfig as JSON text>,
     "vocab": [token names in id order],      # a permutation of crystal_crystallm.vocab.TOKENS
     "state_dict": {name: tensor},
     "meta": {"data": ..., "epochs": ..., ...}}   # free-form, JSON-compatible

A checkpoint written with another order of the same tokens (ours before the ids followed the
reference's) is loaded by permuting the rows of the token embedding (tied to the output head).

**The released models** (``bin/train.py`` of the reference, a nanoGPT checkpoint)::

    {"model": {name: tensor},       # the GPT's state dict; "_orig_mod." before every name when
                                    # the model was torch.compile'd (the reference's default)
     "model_args": {"n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout"},
     "optimizer": {...},             # AdamW state (ignored)
     "iter_num": int, "best_val_loss": float | tensor,
     "config": {training options}}

Zenodo distributes each as ``<name>.tar.gz`` holding ``<name>/ckpt.pt``. The archive is read as
a stream: the one regular file named ``ckpt.pt`` (at any depth) is copied to
``<archive>.ckpt.pt`` beside the archive (a path of ours, never the member's name; reused while
the archive's sha256 is unchanged) or, where that folder is read-only, into memory; links,
devices and every other member are ignored. Names map as ``transformer.h.<i>.`` → ``blocks.<i>.``,
``transformer.`` → ``""``; the causal-mask buffers (``attn.bias``) of old nanoGPT checkpoints are dropped.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any

import torch

from crystal.errors import ConfigError, WeightsError
from crystal_crystallm.model import CrystaLLMNet, GPTConfig
from crystal_crystallm.vocab import TOKENS

if TYPE_CHECKING:
    from crystal.manifest import WeightsManifest

__all__ = [
    "FORMAT",
    "RELEASE_FORMAT",
    "load_checkpoint",
    "load_named_weights",
    "net_from_checkpoint",
    "net_from_release",
    "read_release",
    "save_checkpoint",
]

FORMAT = "crystal-crystallm/1"
#: ``meta["format"]`` of a net loaded from a released (nanoGPT) checkpoint
RELEASE_FORMAT = "crystallm-nanogpt"

_MODEL_ARGS = frozenset({"n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout"})
_COMPILED = "_orig_mod."
_MEMBER = "ckpt.pt"
_MAX_MEMBER = 64 << 30  # 64 GiB: the large model's ckpt.pt is ~2.4 GB


def save_checkpoint(net: CrystaLLMNet, path: str | Path, *, meta: dict[str, Any] | None = None) -> str:
    """Write ``net`` (float32 weights) to ``path``; returns the file's sha256."""
    from crystal.weights import sha256sum

    state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in net.state_dict().items()}
    state.pop("lm_head.weight", None)  # tied to wte.weight, restored on load
    obj = {
        "format": FORMAT,
        "config": net.cfg.model_dump_json(),
        "vocab": list(TOKENS[: net.vocab_size]),
        "state_dict": state,
        "meta": json.loads(json.dumps(meta or {})),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return sha256sum(path)


def _load_net(cfg: GPTConfig, state: dict[str, torch.Tensor], where: str) -> CrystaLLMNet:
    net = CrystaLLMNet(cfg)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"crystallm: {where} does not fit its declared architecture: {exc}") from None
    return net.eval()


def net_from_checkpoint(obj: Any, where: str) -> tuple[CrystaLLMNet, dict[str, Any]]:
    """Build the network from a loaded checkpoint dict of ours; ``where`` names it in errors."""
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        got = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise WeightsError(f"crystallm: {where} is not a CrystaLLM checkpoint (format {got!r}, expected {FORMAT!r})")
    try:
        cfg = GPTConfig.model_validate_json(obj["config"])
    except Exception as exc:
        raise WeightsError(f"crystallm: {where} has an invalid architecture config: {exc}") from None
    vocab = list(obj.get("vocab", []))
    expected = list(TOKENS[: cfg.vocab_size])
    state = dict(obj["state_dict"])
    if vocab != expected:
        if sorted(vocab) != sorted(expected):
            raise WeightsError(f"crystallm: {where} was trained with a different token vocabulary")
        rows = torch.tensor([vocab.index(t) for t in expected])  # our id → the file's row
        if "wte.weight" in state:
            state["wte.weight"] = state["wte.weight"].index_select(0, rows)
        state.pop("lm_head.weight", None)
    state.setdefault("lm_head.weight", state.get("wte.weight"))
    return _load_net(cfg, state, where), dict(obj.get("meta") or {})


def net_from_release(obj: Any, where: str) -> tuple[CrystaLLMNet, dict[str, Any]]:
    """Build the network from a loaded released (nanoGPT) ``ckpt.pt`` dict; ``meta`` holds
    ``format``, ``iter_num``, ``best_val_loss``, ``model_args`` and the training ``config``."""
    if (
        not isinstance(obj, dict)
        or not isinstance(obj.get("model_args"), dict)
        or not isinstance(obj.get("model"), dict)
    ):
        raise WeightsError(f"crystallm: {where} is not a CrystaLLM nanoGPT checkpoint (no 'model_args' and 'model')")
    args = dict(obj["model_args"])
    unknown = sorted(set(args) - _MODEL_ARGS)
    if unknown:
        raise WeightsError(
            f"crystallm: {where}: unknown model_args {', '.join(unknown)} (known: {', '.join(sorted(_MODEL_ARGS))})"
        )
    try:
        cfg = GPTConfig(**{k: v for k, v in args.items() if v is not None})
    except (ConfigError, ValueError) as exc:
        raise WeightsError(f"crystallm: {where} has model_args CrystaLLM cannot build: {exc}") from None
    state: dict[str, torch.Tensor] = {}
    for name, tensor in obj["model"].items():
        name = name.removeprefix(_COMPILED)
        if name.endswith(".attn.bias") and getattr(tensor, "ndim", 0) == 4:
            continue  # nanoGPT's causal-mask buffer (no flash attention), not a parameter
        if name.startswith("transformer.h."):
            name = "blocks." + name.removeprefix("transformer.h.")
        else:
            name = name.removeprefix("transformer.")
        state[name] = tensor
    wte, head = state.get("wte.weight"), state.get("lm_head.weight")
    if wte is not None and head is not None and not torch.equal(wte, head):
        raise WeightsError(f"crystallm: {where}: lm_head.weight differs from transformer.wte.weight (they are tied)")
    if head is None and wte is not None:
        state["lm_head.weight"] = wte
    net = _load_net(cfg, state, where)
    loss = obj.get("best_val_loss")
    meta = {
        "format": RELEASE_FORMAT,
        "iter_num": obj.get("iter_num"),
        "best_val_loss": float(loss) if isinstance(loss, int | float | torch.Tensor) else None,
        "model_args": args,
        "config": json.loads(json.dumps(obj.get("config") or {}, default=str)),
    }
    return net, meta


def _is_archive(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def _copy_member(archive: Path, sink: IO[bytes]) -> int:
    """Stream the one regular ``ckpt.pt`` of ``archive`` into ``sink``; returns its size."""
    found = 0
    size = 0
    try:
        with tarfile.open(archive, mode="r|*") as tar:  # a stream: one pass, no seeking back
            for member in tar:
                if PurePosixPath(member.name).name != _MEMBER or not member.isfile():
                    continue  # directories, links, devices, other files: never touched
                found += 1
                if found > 1:
                    raise WeightsError(f"crystallm: {archive} holds more than one {_MEMBER}; which one is meant?")
                if member.size > _MAX_MEMBER:
                    raise WeightsError(f"crystallm: {archive}: {member.name} claims {member.size} bytes; refused")
                src = tar.extractfile(member)
                assert src is not None
                while block := src.read(1 << 20):
                    sink.write(block)
                    size += len(block)
    except tarfile.TarError as exc:
        raise WeightsError(f"crystallm: cannot read the archive {archive}: {exc}") from None
    if not found:
        raise WeightsError(f"crystallm: the archive {archive} holds no {_MEMBER} (a released CrystaLLM model has one)")
    return size


def _load_pt(source: str | Path | IO[bytes], where: str) -> Any:
    kw: dict[str, Any] = {"map_location": "cpu", "weights_only": True}
    try:
        if isinstance(source, str | Path):
            try:
                return torch.load(source, mmap=True, **kw)  # touch only the tensors we keep
            except RuntimeError:
                pass  # not a zip-format checkpoint: no memory map
        return torch.load(source, **kw)
    except Exception as exc:  # unpickling errors are deliberately not trusted
        raise WeightsError(f"crystallm: cannot load {where} weights-only: {exc}") from None


def read_release(path: str | Path, digest: str | None = None) -> Any:
    """The loaded (weights-only) dict of a released model: a ``ckpt.pt`` file, or the
    ``ckpt.pt`` inside a ``.tar.gz`` archive as distributed (see the module docstring).
    ``digest``: the archive's sha256, when known, keys the reuse of its extracted copy."""
    from crystal.weights import sha256sum

    path = Path(path)
    if not _is_archive(path):
        return _load_pt(path, repr(str(path)))
    digest = digest or sha256sum(path)
    target = path.with_name(path.name + ".ckpt.pt")
    stamp = path.with_name(path.name + ".ckpt.pt.sha256")
    where = f"{_MEMBER} in {str(path)!r}"
    try:
        if target.is_file() and stamp.is_file() and stamp.read_text(encoding="utf-8").split() == [digest]:
            return _load_pt(target, where)
        part = target.with_name(target.name + f".{os.getpid()}.part")
        try:
            with open(part, "wb") as fh:
                _copy_member(path, fh)
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)
        stamp.write_text(digest + "\n", encoding="utf-8")
        return _load_pt(target, where)
    except PermissionError:  # a read-only folder: extract into memory instead
        buffer = io.BytesIO()
        _copy_member(path, buffer)
        buffer.seek(0)
        return _load_pt(buffer, where)


def _net_from_any(obj: Any, where: str) -> tuple[CrystaLLMNet, dict[str, Any]]:
    if isinstance(obj, dict) and "model_args" in obj:
        return net_from_release(obj, where)
    return net_from_checkpoint(obj, where)


def load_checkpoint(path: str | Path, sha256: str | None = None) -> tuple[CrystaLLMNet, dict[str, Any], str]:
    """Verify (when ``sha256`` is given) and load a checkpoint file — ours, a released ``ckpt.pt``
    or a released ``.tar.gz``; returns ``(net, meta, sha256 of the file)``."""
    from crystal.weights import sha256sum

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"crystallm: checkpoint {str(path)!r} does not exist")
    digest = sha256sum(path)
    if sha256 is not None and digest != sha256.lower():
        raise WeightsError(f"crystallm: checkpoint {str(path)!r} has sha256 {digest}, expected {sha256}")
    obj = read_release(path, digest)
    net, meta = _net_from_any(obj, repr(str(path)))
    return net, meta, digest


def load_named_weights(name: str | WeightsManifest) -> tuple[CrystaLLMNet, dict[str, Any], str | None]:
    """Registered weights by name (or entry): ours shipped in the package, or a released model
    (downloaded into the weights cache once, sha256-verified by :mod:`crystal.weights`);
    returns ``(net, meta, sha256)``."""
    from crystal.weights import resolve_weights, sha256sum

    path, entry = resolve_weights(name)
    digest = entry.sha256 or sha256sum(path)
    obj = read_release(path, digest)
    net, meta = _net_from_any(obj, f"weights {entry.name!r}")
    return net, meta, digest
