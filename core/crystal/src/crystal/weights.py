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
    "resolve_weights",
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
