"""Named weights: a registry built from the plugins' manifests, verified on load.

A weights entry (see :class:`crystal.manifest.WeightsManifest`) names its file as

* ``package:<package>/<path>`` — a resource inside an installed package (located with
  ``find_spec`` without importing the package),
* a local path (absolute, or relative to the current directory), or
* a remote ``http(s)://`` or ``file://`` URL (the authors' own release location),
  downloaded once into :func:`cache_dir` (``$CRYSTAL_CACHE``, default
  ``$XDG_CACHE_HOME/crystal/weights`` or ``~/.cache/crystal/weights``) at
  ``<cache>/<sha256[:16]>/<file name>`` and verified before use.

Downloads (:func:`download_weights`) are atomic (a ``.part`` file, then ``os.replace``),
resumable (an existing ``.part`` continues with an HTTP ``Range`` request), size- and
sha256-checked, and quiet unless given a progress callback. ``CRYSTAL_OFFLINE=1`` (or
``offline=True``) never touches the network: a missing file is one :class:`WeightsError`
saying where to put a file downloaded elsewhere, or to run ``crystal weights import FILE``
(:func:`import_weights`). :func:`weights_status` and :func:`verify_weights` report what is
present.

A component declares its weights once, on its class: ``weights = NamedWeights(WeightsManifest(...), ...)``
(both re-exported here); ``crystal plugins manifest --write`` copies them into the manifest.

Every file is checked against its sha256 before it is handed out;
:func:`load_state_dict` always uses ``torch.load(..., weights_only=True)``. A remote entry
whose authors publish no digest (``sha256=None``) is pinned at its first download (the digest
is kept beside the cached file and checked from then on).

Entries of ``format="pickled-module"`` (a whole pickled torch module, such as mace-torch's
``.model`` files) are never unpickled by a loader. ``crystal weights import --trust-pickle
FILE`` (:func:`import_weights` with ``trust_pickle=True``), run once where the reference
package is installed, unpickles the file (its sha256 checked first), turns it into a
weights-only payload with the entry's ``converter`` and writes it to :func:`converted_path`;
:func:`resolve_weights` / :func:`load_state_dict` then hand out that conversion.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from crystal._files import chmod_like_open
from crystal.errors import UnknownWeightsError, WeightsError
from crystal.manifest import NamedWeights, WeightsManifest

if TYPE_CHECKING:
    import torch

__all__ = [
    "NamedWeights",
    "ProgressCallback",
    "WeightsCheck",
    "WeightsManifest",
    "WeightsStatus",
    "cache_dir",
    "cached_path",
    "checkpoint_hint",
    "converted_path",
    "download_weights",
    "expected_sha256",
    "find_weights",
    "import_weights",
    "is_offline",
    "list_weights",
    "load_state_dict",
    "looks_like_path",
    "merge_checkpoint_config",
    "read_checkpoint",
    "read_component_checkpoint",
    "refused_pickle_message",
    "resolve_weights",
    "save_checkpoint",
    "sha256sum",
    "verify_weights",
    "weights_clashes",
    "weights_status",
]

ProgressCallback = Callable[[int, int | None], None]
"""``progress(bytes_done, bytes_total_or_None)``, called as a download proceeds."""

_CHUNK = 1 << 20


def cache_dir() -> Path:
    """Where downloaded weights are cached: ``$CRYSTAL_CACHE``, else ``$XDG_CACHE_HOME/crystal/weights``,
    else ``~/.cache/crystal/weights``."""
    if env := os.environ.get("CRYSTAL_CACHE"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "crystal" / "weights"


def is_offline() -> bool:
    """Whether ``CRYSTAL_OFFLINE`` forbids network access (``1``, ``true``, ``yes``, ``on``)."""
    return os.environ.get("CRYSTAL_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _slot(entry: WeightsManifest) -> Path:
    """The entry's cache folder: ``<cache>/<sha256[:16]>``, or ``<cache>/unpinned-<name>`` without a digest."""
    return cache_dir() / (entry.sha256[:16] if entry.sha256 else f"unpinned-{entry.name}")


def _basename(entry: WeightsManifest) -> str:
    from urllib.parse import unquote, urlsplit

    path = urlsplit(entry.file).path if entry.remote else entry.file.removeprefix("package:")
    return unquote(path.rstrip("/").rsplit("/", 1)[-1]) or f"{entry.name}.pt"


def cached_path(entry: WeightsManifest) -> Path:
    """The exact cache path of a remote entry's file (``<cache>/<sha256[:16]>/<file name>``;
    ``<cache>/unpinned-<name>/<file name>`` for an entry without a published sha256)."""
    if not entry.remote:
        raise WeightsError(f"weights {entry.name!r} are not remote ({entry.file}); they are not cached")
    return _slot(entry) / _basename(entry)


def converted_path(entry: WeightsManifest) -> Path:
    """Where ``crystal weights import --trust-pickle`` writes the weights-only conversion of a
    ``pickled-module`` entry (``<cache slot>/<file name>.weights-only.pt``)."""
    if entry.format != "pickled-module":
        raise WeightsError(f"weights {entry.name!r} are weights-only ({entry.file}); there is nothing to convert")
    return _slot(entry) / (_basename(entry) + ".weights-only.pt")


def _pin_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _write_pin(path: Path, digest: str) -> None:
    """Record ``digest`` beside ``path`` (atomically; readable under the user's umask)."""
    pin = _pin_path(path)
    tmp = pin.with_name(pin.name + ".part")
    tmp.write_text(f"{digest}  {path.name}\n", encoding="utf-8")
    os.replace(tmp, pin)


def expected_sha256(entry: WeightsManifest, path: Path | None = None) -> str | None:
    """The sha256 ``entry``'s file must have: the registry's, or for an unpinned remote entry
    the digest pinned at its first download (None before that)."""
    if entry.sha256 is not None:
        return entry.sha256
    pin = _pin_path(path if path is not None else cached_path(entry))
    try:
        return pin.read_text(encoding="utf-8").split()[0]
    except (FileNotFoundError, IndexError):
        return None


def sha256sum(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@lru_cache(maxsize=256)
def _verified_cached(path: str, identity: tuple[int, ...], expected: str) -> bool:
    return sha256sum(Path(path)) == expected


def _verified(path: Path, expected: str) -> bool:
    """Whether ``path`` has sha256 ``expected``; hashed once per file version.

    A version is (device, inode, size, mtime, ctime): rewriting a file in place changes its
    ctime, which no program can set back (``os.utime`` sets only atime/mtime), so a file
    changed with the same size and a restored mtime is hashed again.
    """
    st = path.stat()
    identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return _verified_cached(str(path), identity, expected)


def _registry() -> tuple[dict[str, tuple[str, WeightsManifest]], dict[str, list[str]]]:
    from crystal.plugins import manifests

    out: dict[str, tuple[str, WeightsManifest]] = {}
    clashes: dict[str, list[str]] = {}
    for dist, (manifest, _error) in manifests().items():
        if manifest is None:
            continue
        for w in manifest.weights:
            if w.name in out and out[w.name][0] != dist:
                clashes.setdefault(w.name, [out[w.name][0]]).append(dist)
                continue
            out[w.name] = (dist, w)
    for name in clashes:
        del out[name]
    return out, {name: sorted(dists) for name, dists in clashes.items()}


def list_weights() -> dict[str, tuple[str, WeightsManifest]]:
    """``{weights name: (distribution, entry)}`` over every installed manifest.

    A name declared by two distributions is left out (see :func:`weights_clashes`): only the
    components that use it fail, with an error naming both; everything else works.
    """
    return _registry()[0]


def weights_clashes() -> dict[str, list[str]]:
    """``{weights name: [distributions]}`` for names declared by more than one distribution."""
    return _registry()[1]


def find_weights(name: str) -> WeightsManifest:
    """The registry entry of ``name``; unknown names raise with a did-you-mean, a name two
    distributions declare raises naming both."""
    import difflib

    every, clashes = _registry()
    if name in clashes:
        raise WeightsError(
            f"weights {name!r} are declared by more than one distribution ({', '.join(clashes[name])}); "
            "crystal cannot tell which file is meant: uninstall or rename one of them"
        )
    if name not in every:
        close = difflib.get_close_matches(name, list(every), n=3)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise UnknownWeightsError(f"no weights named {name!r}{hint}{checkpoint_hint(name)}")
    return every[name][1]


_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".tar", ".model")


def looks_like_path(name: str) -> bool:
    """Whether a ``weights`` value is evidently a file path (``runs/x/model.pt``), not a name."""
    return "/" in name or os.sep in name or name.lower().endswith(_CHECKPOINT_SUFFIXES)


def checkpoint_hint(name: str) -> str:
    """The hint an unknown weights name that is a path gets: a file goes in ``checkpoint``."""
    if not looks_like_path(name):
        return ""
    return (
        f"; {name!r} looks like a file: weights are the names of shipped weights, a checkpoint file (e.g. the "
        f'model.pt of `crystal train`) is given as checkpoint (`-c checkpoint={name}`; checkpoint = "{name}" '
        "in a pipeline)"
    )


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
    if entry.remote:
        target = cached_path(entry)
        if not target.is_file():
            if is_offline():
                raise _offline_error(entry, target)
            _download(entry, target, None)
        return target
    path = Path(file).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights {entry.name!r}: file {path} does not exist")
    return path


def _entry(name_or_entry: str | WeightsManifest) -> WeightsManifest:
    return find_weights(name_or_entry) if isinstance(name_or_entry, str) else name_or_entry


def _offline_error(entry: WeightsManifest, target: Path) -> WeightsError:
    size = f", {entry.size} bytes" if entry.size is not None else ""
    digest = f"sha256 {entry.sha256}" if entry.sha256 else "no published sha256: pinned at import"
    trust = " --trust-pickle" if entry.format == "pickled-module" else ""
    return WeightsError(
        f"weights {entry.name!r} are not in the cache, and offline mode (CRYSTAL_OFFLINE=1 or --offline) "
        f"forbids downloading them.\n"
        f"  download them elsewhere from: {entry.file}  ({digest}{size})\n"
        f"  and put the file at:          {target}\n"
        f"  or run:                       crystal weights import{trust} FILE --name {entry.name}"
    )


def _pickle_error(entry: WeightsManifest, source: Path) -> WeightsError:
    package = (entry.converter or "").split(".", 1)[0]
    return WeightsError(
        f"weights {entry.name!r}: {source} is a pickled module (format 'pickled-module'); crystal never "
        "unpickles it on its own, because unpickling runs code from the file.\n"
        f"  convert it once, in an environment where the reference package is installed (and {package}):\n"
        f"      crystal weights import --trust-pickle {source} --name {entry.name}\n"
        f"  this writes the weights-only file {converted_path(entry)}, which loaders then use"
    )


def _check_file(entry: WeightsManifest, path: Path, what: str, expected: str | None = None) -> str:
    """Size and sha256 of ``path`` against ``entry`` (``expected``: a pinned digest for an
    unpinned entry, None to accept any); a mismatch deletes ``path`` and raises. Returns the sha256."""
    got_size = path.stat().st_size
    if entry.size is not None and got_size != entry.size:
        path.unlink(missing_ok=True)
        raise WeightsError(
            f"weights {entry.name!r}: {what} has {got_size} bytes, expected {entry.size}; the file was deleted"
        )
    got = sha256sum(path)
    want = entry.sha256 or expected
    if want is not None and got != want:
        path.unlink(missing_ok=True)
        raise WeightsError(f"weights {entry.name!r}: {what} has sha256 {got}, expected {want}; the file was deleted")
    return got


def _download(entry: WeightsManifest, target: Path, progress: ProgressCallback | None, *, _retry: bool = True) -> None:
    """Download ``entry.file`` into ``target`` through ``target.part`` (resumed when present), verify, rename."""
    import urllib.error
    import urllib.request

    url = entry.file
    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    start = part.stat().st_size if part.is_file() else 0
    if entry.size is not None and start > entry.size:
        part.unlink()
        start = 0
    if entry.size is None or start < entry.size:
        request = urllib.request.Request(url, headers={"User-Agent": "crystal-weights"})
        if start:
            request.add_header("Range", f"bytes={start}-")
        try:
            with urllib.request.urlopen(request, timeout=60) as resp:
                resumed = bool(start) and getattr(resp, "status", None) == 206
                if not resumed:  # a fresh download, or a server that ignores Range: restart cleanly
                    start = 0
                length = resp.headers.get("Content-Length")
                total = start + int(length) if length and length.isdigit() else entry.size
                done = start
                if progress is not None:
                    progress(done, total)
                with open(part, "ab" if resumed else "wb") as fh:  # mode 0o666 & ~umask
                    while block := resp.read(_CHUNK):
                        fh.write(block)
                        done += len(block)
                        if progress is not None:
                            progress(done, total)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and start and _retry:  # the range is past the end: start afresh, once
                part.unlink(missing_ok=True)
                _download(entry, target, progress, _retry=False)
                return
            raise WeightsError(
                f"weights {entry.name!r}: download of {url} failed: HTTP {exc.code} {exc.reason}"
            ) from None
        except (OSError, ValueError) as exc:
            kept = f"; {part} is kept and the next download resumes it" if part.is_file() else ""
            raise WeightsError(f"weights {entry.name!r}: download of {url} failed: {exc}{kept}") from None
    pinned = expected_sha256(entry, target)
    digest = _check_file(entry, part, f"the download of {url}", pinned)
    os.replace(part, target)
    if pinned is None:
        _write_pin(target, digest)
        warnings.warn(
            f"weights {entry.name!r}: the authors publish no sha256; pinned {digest} at this first download "
            f"({_pin_path(target)})",
            stacklevel=3,
        )


def download_weights(
    name_or_entry: str | WeightsManifest,
    *,
    progress: ProgressCallback | None = None,
    offline: bool | None = None,
    force: bool = False,
) -> Path:
    """Make the file of remote weights present and verified in the cache; returns its path.

    A file already cached and verified is not downloaded again (unless ``force``). Entries
    that are not remote (package resources, local paths) are only verified. ``offline``
    (default: :func:`is_offline`) forbids the network: a missing file raises a
    :class:`WeightsError` naming the URL, the exact cache path to put the file at, and
    ``crystal weights import``. ``progress(done, total)`` is called as bytes arrive.
    """
    entry = _entry(name_or_entry)
    if not entry.remote:
        return resolve_weights(entry)[0]
    target = cached_path(entry)
    if target.is_file() and not force:
        expected = expected_sha256(entry, target)
        if expected is None:  # put there by hand before any download: pin it now
            _write_pin(target, sha256sum(target))
            return target
        if _verified(target, expected):
            return target
        if offline if offline is not None else is_offline():
            raise WeightsError(
                f"weights {entry.name!r}: sha256 of {target} is {sha256sum(target)}, expected {expected}; "
                "delete it and download again (offline mode forbids it now)"
            )
        target.unlink()
    if offline if offline is not None else is_offline():
        raise _offline_error(entry, target)
    _download(entry, target, progress)
    return target


@dataclass(frozen=True)
class WeightsStatus:
    """Where one registered set of weights is (see :func:`weights_status`)."""

    name: str
    distribution: str | None
    entry: WeightsManifest
    where: Literal["package", "local", "cached", "remote", "missing"]
    """``package`` / ``local``: shipped or on disk; ``cached``: downloaded; ``remote``: not yet
    downloaded; ``missing``: a package resource or local path that is absent."""
    path: Path | None
    """The local file (for remote weights: the cache path, whether or not it exists)."""
    converted: bool | None = None
    """For a ``pickled-module`` entry: whether its weights-only conversion exists (None otherwise)."""

    @property
    def present(self) -> bool:
        """Whether the file is on disk."""
        return self.where in ("package", "local", "cached")

    @property
    def usable(self) -> bool:
        """Whether a loader can use the weights now (present, and converted where needed)."""
        return self.present and self.converted is not False


def _status(entry: WeightsManifest, dist: str | None) -> WeightsStatus:
    converted = converted_path(entry).is_file() if entry.format == "pickled-module" else None
    if entry.remote:
        target = cached_path(entry)
        where: Literal["cached", "remote"] = "cached" if target.is_file() else "remote"
        return WeightsStatus(entry.name, dist, entry, where, target, converted)
    kind: Literal["package", "local"] = "package" if entry.file.startswith("package:") else "local"
    try:
        return WeightsStatus(entry.name, dist, entry, kind, _locate(entry), converted)
    except WeightsError:
        return WeightsStatus(entry.name, dist, entry, "missing", None, converted)


def weights_status(names: Iterable[str | WeightsManifest] | None = None) -> list[WeightsStatus]:
    """Where each named weights entry (default: every registered one) is; touches no network."""
    every = list_weights()
    if names is None:
        return [_status(e, d) for _n, (d, e) in sorted(every.items())]
    out = []
    for n in names:
        entry = _entry(n)
        out.append(_status(entry, every[entry.name][0] if entry.name in every else None))
    return out


@dataclass(frozen=True)
class WeightsCheck:
    """The result of verifying one weights file (see :func:`verify_weights`)."""

    name: str
    path: Path | None
    ok: bool | None
    """True: sha256 (and size) match; False: mismatch; None: no file present to check."""
    expected: str | None
    """The registry's sha256 (or the one pinned at first download; None: not pinned yet)."""
    actual: str | None


def verify_weights(names: Iterable[str | WeightsManifest] | None = None) -> list[WeightsCheck]:
    """Recompute the sha256 of every present file among ``names`` (default: all registered);
    nothing is downloaded or deleted."""
    out = []
    for status in weights_status(names):
        entry = status.entry
        if not status.present or status.path is None:
            out.append(WeightsCheck(entry.name, status.path, None, entry.sha256, None))
            continue
        actual = sha256sum(status.path)
        expected = expected_sha256(entry, status.path)
        size_ok = entry.size is None or status.path.stat().st_size == entry.size
        ok = (expected is None or actual == expected) and size_ok
        out.append(WeightsCheck(entry.name, status.path, ok, expected, actual))
    return out


def import_weights(
    file: str | os.PathLike[str],
    name: str | WeightsManifest | None = None,
    *,
    candidates: Iterable[WeightsManifest] | None = None,
    trust_pickle: bool = False,
) -> tuple[WeightsManifest, Path]:
    """Copy a weights file obtained elsewhere into the cache, after checking its sha256.

    ``name`` names the entry (a mismatch is refused); without it the entry is found by the
    file's sha256 among ``candidates`` (default: every registered entry). The copy is atomic
    and readable under the user's umask. Returns ``(entry, path)``: the cached file, or, for a
    ``pickled-module`` entry imported with ``trust_pickle=True``, its weights-only conversion.

    ``trust_pickle`` is the one place crystal unpickles a file: only a ``pickled-module`` entry
    whose sha256 matches the registry (or, for an unpinned entry, the file named with ``name``),
    and only in an environment where the package that defines the pickled classes is installed.
    The entry's ``converter`` turns the object into a weights-only payload, written to
    :func:`converted_path` (verified to load with ``weights_only=True``).
    """
    source = Path(file).expanduser()
    if not source.is_file():
        raise WeightsError(f"cannot import {source}: no such file")
    digest = sha256sum(source)
    if name is not None:
        entry = _entry(name)
        expected = expected_sha256(entry, cached_path(entry)) if entry.remote else entry.sha256
        if expected is not None and digest != expected:
            raise WeightsError(
                f"cannot import {source} as weights {entry.name!r}: its sha256 is {digest}, expected {expected}"
            )
    else:
        pool = list(candidates) if candidates is not None else [e for _d, e in list_weights().values()]
        found = [e for e in pool if e.sha256 == digest]
        if not found:
            raise WeightsError(
                f"cannot import {source}: its sha256 {digest} matches no registered weights "
                "(give --name to see the expected digest)"
            )
        entry = found[0]
    if trust_pickle and entry.format != "pickled-module":
        raise WeightsError(
            f"weights {entry.name!r} are weights-only; --trust-pickle is only for 'pickled-module' entries"
        )
    if not entry.remote and entry.format != "pickled-module":
        raise WeightsError(
            f"weights {entry.name!r} are not downloaded ({entry.file}); there is nothing to import into the cache"
        )
    if entry.size is not None and source.stat().st_size != entry.size:
        raise WeightsError(
            f"cannot import {source} as weights {entry.name!r}: {source.stat().st_size} bytes, expected {entry.size}"
        )
    target = cached_path(entry) if entry.remote else _locate(entry)
    if entry.remote and source.resolve() != target.resolve():
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        try:
            shutil.copyfile(source, part)  # a new file: mode 0o666 & ~umask
            _check_file(entry, part, f"the copy of {source}", digest)
            os.replace(part, target)
        except OSError as exc:
            part.unlink(missing_ok=True)
            raise WeightsError(f"cannot import {source} into {target}: {exc}") from None
    if entry.remote and entry.sha256 is None and expected_sha256(entry, target) is None:
        _write_pin(target, digest)
    if trust_pickle:
        return entry, _convert_pickled(entry, target, digest)
    return entry, target


CONVERTED_FORMAT = "crystal-converted-weights"


def _convert_pickled(entry: WeightsManifest, source: Path, digest: str) -> Path:
    """Unpickle ``source`` (trusted by the caller), run the entry's converter, write the weights-only payload."""
    import importlib

    import torch

    assert entry.converter is not None  # guaranteed by WeightsManifest
    module_name, _, func_name = entry.converter.partition(":")
    warnings.warn(
        f"UNPICKLING {source} for weights {entry.name!r} (sha256 {digest}): this runs code from the file; "
        "it is done once, on request (--trust-pickle), to convert it to a weights-only file",
        stacklevel=3,
    )
    try:
        converter = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as exc:
        raise WeightsError(f"weights {entry.name!r}: converter {entry.converter!r} cannot be imported: {exc}") from None
    try:
        obj = torch.load(source, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as exc:
        raise WeightsError(
            f"weights {entry.name!r}: unpickling {source} needs the package that defines its classes "
            f"({exc.name!r} is not installed); run the import in an environment with the reference package"
        ) from None
    except Exception as exc:
        raise WeightsError(f"weights {entry.name!r}: cannot unpickle {source}: {exc}") from None
    try:
        payload = converter(obj)
    except Exception as exc:
        raise WeightsError(f"weights {entry.name!r}: converter {entry.converter!r} failed on {source}: {exc}") from exc
    out = converted_path(entry)
    record = {
        "format": CONVERTED_FORMAT,
        "format_version": 1,
        "weights": entry.name,
        "source_sha256": digest,
        "converter": entry.converter,
        "payload": payload,
    }
    converted_digest = save_checkpoint(record, out)
    try:
        torch.load(out, map_location="cpu", weights_only=True)
    except Exception as exc:
        out.unlink(missing_ok=True)
        raise WeightsError(
            f"weights {entry.name!r}: converter {entry.converter!r} returned a payload that is not weights-only "
            f"(tensors, str, numbers, lists, dicts): {exc}"
        ) from None
    _write_pin(out, converted_digest)
    return out


def _resolve_converted(entry: WeightsManifest) -> Path:
    """The verified weights-only conversion of a ``pickled-module`` entry, or a clear error."""
    out = converted_path(entry)
    if not out.is_file():
        source = cached_path(entry) if entry.remote else _locate(entry)
        if entry.remote and not source.is_file():
            if is_offline():
                raise _offline_error(entry, source)
            source = download_weights(entry)
        raise _pickle_error(entry, source)
    pinned = _read_pin(out)
    if pinned is None or not _verified(out, pinned):
        raise WeightsError(
            f"weights {entry.name!r}: the converted file {out} does not match its recorded sha256 "
            f"({_pin_path(out)}); delete it and convert again (crystal weights import --trust-pickle)"
        )
    return out


def _read_pin(path: Path) -> str | None:
    try:
        return _pin_path(path).read_text(encoding="utf-8").split()[0]
    except (FileNotFoundError, IndexError):
        return None


def resolve_weights(name_or_entry: str | WeightsManifest) -> tuple[Path, WeightsManifest]:
    """Locate the weights file (downloading a remote one unless offline) and verify its sha256;
    returns ``(path, entry)``. For a ``pickled-module`` entry the path is its weights-only
    conversion (see :func:`import_weights`); without one this raises, saying how to convert."""
    entry = _entry(name_or_entry)
    if entry.format == "pickled-module":
        return _resolve_converted(entry), entry
    path = _locate(entry)
    expected = expected_sha256(entry, path)
    if expected is None:  # an unpinned file put into the cache by hand: pin it at first use
        _write_pin(path, sha256sum(path))
        return path, entry
    if not _verified(path, expected):
        raise WeightsError(
            f"weights {entry.name!r}: sha256 of {path} is {sha256sum(path)}, expected {expected} "
            "(corrupted or replaced file)"
        )
    return path, entry


def refused_pickle_message(path: str | os.PathLike[str], exc: BaseException) -> str:
    """One line for a file ``torch.load(weights_only=True)`` refused: the file, what it holds,
    and what to do safely (torch's own text ends by advising ``weights_only=False``)."""
    import re

    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"Unsupported global: ([\w.]+)", text)
    if found:
        what = f"it holds the Python object {found.group(1)!r}"
    elif "Unsupported operand" in text or "invalid load key" in text:
        what = "it is not a PyTorch checkpoint (corrupted, truncated or another format)"
    else:
        what = "it is not weights-only"
    if "Weights only load failed" not in text and "weights_only" not in text:
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        return f"{path}: not a readable checkpoint ({first[:200]})"
    return (
        (
            f"{path}: refused to load: {what}, and unpickling it would run code from the file. crystal loads "
            "weights-only checkpoints only; a reference package's pickled model can be converted once with "
            "`crystal weights import --trust-pickle FILE` where that package is installed"
        )
        if found
        else f"{path}: refused to load: {what}"
    )


def load_state_dict(name_or_entry: str | WeightsManifest, map_location: str | torch.device = "cpu") -> Any:
    """Verify and load weights with ``torch.load(..., weights_only=True)``; for a
    ``pickled-module`` entry, the payload its converter produced."""
    import torch

    path, entry = resolve_weights(name_or_entry)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling errors are deliberately not trusted
        raise WeightsError(f"weights {entry.name!r}: {refused_pickle_message(path, exc)}") from None
    if entry.format == "pickled-module":
        if not isinstance(obj, dict) or obj.get("format") != CONVERTED_FORMAT:
            raise WeightsError(f"weights {entry.name!r}: {path} is not a crystal conversion ({CONVERTED_FORMAT})")
        source_sha = entry.sha256 or (expected_sha256(entry) if entry.remote else None)
        if source_sha is not None and obj.get("source_sha256") != source_sha:
            raise WeightsError(
                f"weights {entry.name!r}: {path} was converted from a file with sha256 {obj.get('source_sha256')}, "
                f"not {source_sha}; convert again (crystal weights import --trust-pickle)"
            )
        return obj["payload"]
    return obj


def save_checkpoint(payload: Any, path: str | os.PathLike[str]) -> str:
    """``torch.save`` ``payload`` atomically (temporary file beside ``path``, then rename);
    returns the file's sha256."""
    import torch

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    chmod_like_open(fd)  # mkstemp makes 0600; results must be readable under the umask
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
        raise WeightsError(f"{who}: {refused_pickle_message(file, exc)}") from None
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
            raise ConfigError(
                f"{who}: unknown weights {config.weights!r} (known: {', '.join(names) or 'none'}){hint}"
                f"{checkpoint_hint(config.weights)}"
            )
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
