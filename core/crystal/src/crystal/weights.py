"""Named weights: a registry built from the plugins' manifests, verified on load.

A weights entry (see :class:`crystal.manifest.WeightsManifest`) names its file as

* ``package:<package>/<path>`` — a resource inside an installed package (located with
  ``find_spec`` without importing the package),
* a local path (absolute, or relative to the current directory), or
* an ``http(s)://`` URL, downloaded once into ``$CRYSTAL_CACHE`` (default
  ``~/.cache/crystal/weights``) and verified before use.

A component declares its weights once, on its class: ``weights = NamedWeights(WeightsManifest(...), ...)``
(both re-exported here); ``crystal plugins manifest --write`` copies them into the manifest.

Every file is checked against its sha256 before it is handed out;
:func:`load_state_dict` always uses ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crystal.errors import WeightsError
from crystal.manifest import NamedWeights, WeightsManifest

if TYPE_CHECKING:
    import torch

__all__ = [
    "NamedWeights",
    "WeightsManifest",
    "cache_dir",
    "find_weights",
    "list_weights",
    "load_state_dict",
    "merge_checkpoint_config",
    "read_checkpoint",
    "read_component_checkpoint",
    "resolve_weights",
    "save_checkpoint",
    "sha256sum",
]


def cache_dir() -> Path:
    """Where downloaded weights are cached (``$CRYSTAL_CACHE`` or ``~/.cache/crystal/weights``)."""
    return Path(os.environ.get("CRYSTAL_CACHE", Path.home() / ".cache" / "crystal" / "weights"))


def sha256sum(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@lru_cache(maxsize=256)
def _verified(path: str, mtime_ns: int, size: int, expected: str) -> bool:
    return sha256sum(Path(path)) == expected


def list_weights() -> dict[str, tuple[str, WeightsManifest]]:
    """``{weights name: (distribution, entry)}`` over every installed manifest."""
    from crystal.plugins import manifests

    out: dict[str, tuple[str, WeightsManifest]] = {}
    for dist, (manifest, _error) in manifests().items():
        if manifest is None:
            continue
        for w in manifest.weights:
            if w.name in out and out[w.name][0] != dist:
                raise WeightsError(f"weights {w.name!r} are declared by both {out[w.name][0]} and {dist}")
            out[w.name] = (dist, w)
    return out


def find_weights(name: str) -> WeightsManifest:
    """The registry entry of ``name``; unknown names raise with a did-you-mean."""
    import difflib

    every = list_weights()
    if name not in every:
        close = difflib.get_close_matches(name, list(every), n=3)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise WeightsError(f"no weights named {name!r}{hint}")
    return every[name][1]


def _locate(entry: WeightsManifest) -> Path:
    file = entry.file
    if file.startswith("package:"):
        package, _, rel = file[len("package:") :].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise WeightsError(f"weights {entry.name!r}: package {package!r} is not installed")
        for loc in spec.submodule_search_locations:
            candidate = Path(loc, rel)
            if candidate.is_file():
                return candidate
        raise WeightsError(f"weights {entry.name!r}: file {rel!r} is missing from package {package!r}")
    if file.startswith(("http://", "https://")):
        target = cache_dir() / entry.sha256[:16] / file.rsplit("/", 1)[-1]
        if not target.is_file():
            _download(file, target, entry.name)
        return target
    path = Path(file).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights {entry.name!r}: file {path} does not exist")
    return path


def _download(url: str, target: Path, name: str) -> None:
    import urllib.request

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh, urllib.request.urlopen(url, timeout=60) as resp:
            while block := resp.read(1 << 20):
                fh.write(block)
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise WeightsError(f"weights {name!r}: download of {url} failed: {exc}") from None


def resolve_weights(name_or_entry: str | WeightsManifest) -> tuple[Path, WeightsManifest]:
    """Locate the weights file and verify its sha256; returns ``(path, entry)``."""
    entry = find_weights(name_or_entry) if isinstance(name_or_entry, str) else name_or_entry
    path = _locate(entry)
    st = path.stat()
    if not _verified(str(path), st.st_mtime_ns, st.st_size, entry.sha256):
        raise WeightsError(
            f"weights {entry.name!r}: sha256 of {path} is {sha256sum(path)}, expected {entry.sha256} "
            "(corrupted or replaced file)"
        )
    return path, entry


def load_state_dict(name_or_entry: str | WeightsManifest, map_location: str | torch.device = "cpu") -> Any:
    """Verify and load weights with ``torch.load(..., weights_only=True)``."""
    import torch

    path, entry = resolve_weights(name_or_entry)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling errors are deliberately not trusted
        raise WeightsError(f"weights {entry.name!r}: {path} is not a weights-only checkpoint: {exc}") from None


def save_checkpoint(payload: Any, path: str | os.PathLike[str]) -> str:
    """``torch.save`` ``payload`` atomically (temporary file beside ``path``, then rename);
    returns the file's sha256."""
    import torch

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return sha256sum(target)


def read_checkpoint(
    path: str | os.PathLike[str],
    sha256: str | None = None,
    *,
    format: str,
    version: int,
    kind: str,
    who: str,
) -> tuple[dict[str, Any], str]:
    """Verify (when ``sha256`` is given) and load a crystal checkpoint dict written by
    :func:`save_checkpoint` with ``torch.load(..., weights_only=True)``.

    ``format`` / ``version`` are the checkpoint's ``format`` and the newest ``format_version``
    this crystal reads; ``kind`` names it in errors ("encoder", "potential"). Returns
    ``(checkpoint dict, actual sha256)``; raises :class:`~crystal.errors.ConfigError` for a
    missing file and :class:`WeightsError` for a bad digest, a file that is not weights-only,
    another format or a newer version.
    """
    import torch

    from crystal.errors import ConfigError

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{who}: checkpoint {str(file)!r} does not exist")
    actual = sha256sum(file)
    if sha256 is not None and actual != sha256:
        raise WeightsError(f"{who}: checkpoint {str(file)!r} has sha256 {actual}, expected {sha256}")
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors are deliberately not trusted
        raise WeightsError(f"{who}: cannot load checkpoint {str(file)!r} (weights-only): {exc}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != format:
        raise WeightsError(f"{who}: {str(file)!r} is not a crystal {kind} checkpoint (no format={format!r})")
    if int(ckpt.get("format_version", 0)) > version:
        raise WeightsError(
            f"{who}: {str(file)!r} has format_version {ckpt.get('format_version')}, newer than this crystal "
            f"({version}); upgrade crystal-core"
        )
    return ckpt, actual


def read_component_checkpoint(
    config: Any, known_weights: Any, *, plugin: str, format: str, version: int, kind: str
) -> tuple[dict[str, Any], str] | None:
    """The checkpoint a trainable component's config asks for: named ``weights`` (from the
    registry, sha256-verified), a ``checkpoint`` path (verified against ``sha256`` when given),
    or None for a fresh model. The checkpoint must have been written by ``plugin``."""
    import difflib

    from crystal.errors import ConfigError

    who = f"{kind} {plugin!r}"
    if config.weights is not None and config.checkpoint is not None:
        raise ConfigError(f"{who}: give either weights or checkpoint, not both")
    if config.sha256 is not None and config.checkpoint is None:
        raise ConfigError(f"{who}: sha256 is given but checkpoint is not")
    if config.weights is not None:
        names = list(known_weights)
        if config.weights not in names:
            close = difflib.get_close_matches(config.weights, names, n=2)
            hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise ConfigError(f"{who}: unknown weights {config.weights!r} (known: {', '.join(names) or 'none'}){hint}")
        path, entry = resolve_weights(config.weights)
        ckpt, digest = read_checkpoint(path, entry.sha256, format=format, version=version, kind=kind, who=who)
    elif config.checkpoint is not None:
        ckpt, digest = read_checkpoint(
            Path(config.checkpoint), config.sha256, format=format, version=version, kind=kind, who=who
        )
    else:
        return None
    if ckpt.get("plugin") != plugin:
        raise WeightsError(f"{who}: checkpoint was written by {kind} {ckpt.get('plugin')!r}, not {plugin!r}")
    return ckpt, digest


def merge_checkpoint_config(component: Any, saved: dict[str, Any], runtime_fields: Any, *, kind: str) -> Any:
    """The checkpoint's architecture ``saved`` plus ``component.config``'s runtime fields.

    A non-runtime field the user set that differs from the checkpoint's is a
    :class:`~crystal.errors.ConfigError` naming it (the architecture comes from the checkpoint)."""
    from crystal.errors import ConfigError

    cfg = component.config
    user = {k: getattr(cfg, k) for k in cfg.model_fields_set if k not in runtime_fields}
    fresh = component.make_config(saved)
    clash = sorted(k for k, v in user.items() if getattr(fresh, k) != v)
    if clash:
        raise ConfigError(
            f"{kind} {component.name!r}: {', '.join(clash)} come from the checkpoint "
            f"({', '.join(f'{k}={getattr(fresh, k)!r}' for k in clash)}); do not set them"
        )
    runtime = {k: getattr(cfg, k) for k in runtime_fields if k in type(cfg).model_fields}
    return component.make_config(fresh.model_dump(), **runtime)
