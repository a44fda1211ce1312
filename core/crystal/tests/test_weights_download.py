"""Remote named weights: download (local HTTP server / file:// only), resume, verify, offline, import."""

from __future__ import annotations

import hashlib
import http.server
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from crystal import WeightsError
from crystal.manifest import WeightsManifest
from crystal.weights import (
    cache_dir,
    cached_path,
    download_weights,
    import_weights,
    resolve_weights,
    verify_weights,
    weights_status,
)

BLOB = bytes(range(256)) * 64  # 16 KiB


class _Server:
    def __init__(self, files: dict[str, bytes], honour_range: bool = True) -> None:
        self.files = files
        self.honour_range = honour_range
        self.ranges: list[str | None] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                data = outer.files.get(self.path)
                rng = self.headers.get("Range")
                outer.ranges.append(rng)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and outer.honour_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                self.wfile.write(data[start:])

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server({"/w.pt": BLOB, "/bad.pt": BLOB[:-1] + b"x", "/short.pt": BLOB[:-10]})
    yield s
    s.close()


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CRYSTAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CRYSTAL_OFFLINE", raising=False)
    return tmp_path / "cache"


def _entry(url: str, data: bytes = BLOB, name: str = "remote-w", size: bool = True) -> WeightsManifest:
    return WeightsManifest(
        name=name,
        file=url,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data) if size else None,
        licence="MIT",
        training_data="none (test)",
        citation="Doe et al. (2025)",
    )


def test_cache_dir_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv("CRYSTAL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "crystal" / "weights"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "crystal" / "weights"


def test_download_verifies_caches_and_reports_progress(server, cache):
    entry = _entry(server.url("/w.pt"))
    seen: list[tuple[int, int | None]] = []
    path = download_weights(entry, progress=lambda d, t: seen.append((d, t)))
    assert path == cached_path(entry) and path.read_bytes() == BLOB
    assert path.parent.parent == cache and not list(path.parent.glob("*.part"))
    assert seen[0] == (0, len(BLOB)) and seen[-1] == (len(BLOB), len(BLOB))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert download_weights(entry) == path and len(server.ranges) == 1  # cached: no second request
    assert resolve_weights(entry)[0] == path
    assert [s.where for s in weights_status([entry])] == ["cached"]


def test_resume_from_partial_file_uses_range(server):
    entry = _entry(server.url("/w.pt"))
    part = cached_path(entry).with_name(cached_path(entry).name + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(BLOB[:5000])
    path = download_weights(entry)
    assert server.ranges == ["bytes=5000-"]
    assert path.read_bytes() == BLOB and not part.exists()


def test_server_ignoring_range_restarts_cleanly(server):
    server.honour_range = False
    entry = _entry(server.url("/w.pt"))
    part = cached_path(entry).with_name(cached_path(entry).name + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"garbage" * 100)
    assert download_weights(entry).read_bytes() == BLOB
    assert server.ranges == ["bytes=700-"]


def test_complete_part_file_is_verified_without_network(server):
    entry = _entry(server.url("/w.pt"))
    part = cached_path(entry).with_name(cached_path(entry).name + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(BLOB)
    assert download_weights(entry).read_bytes() == BLOB and server.ranges == []


@pytest.mark.parametrize(
    ("path", "with_size", "message"),
    [
        ("/bad.pt", True, "has sha256 .*, expected"),
        ("/bad.pt", False, "sha256"),
        ("/short.pt", True, "bytes, expected"),
    ],
)
def test_corrupted_download_is_rejected_and_removed(server, path, with_size, message):
    entry = _entry(server.url(path), data=BLOB, size=with_size)
    with pytest.raises(WeightsError, match=message):
        download_weights(entry)
    folder = cached_path(entry).parent
    assert not folder.exists() or not any(folder.iterdir())


def test_http_error_is_a_weights_error(server):
    with pytest.raises(WeightsError, match="HTTP 404"):
        download_weights(_entry(server.url("/nope.pt")))


def test_file_url(tmp_path):
    src = tmp_path / "release" / "model.pt"
    src.parent.mkdir()
    src.write_bytes(BLOB)
    entry = _entry(src.as_uri())
    assert entry.remote
    assert download_weights(entry).read_bytes() == BLOB


def test_offline_error_names_weights_url_path_and_import(server, monkeypatch):
    monkeypatch.setenv("CRYSTAL_OFFLINE", "1")
    entry = _entry(server.url("/w.pt"))
    for call in (lambda: download_weights(entry), lambda: resolve_weights(entry)):
        with pytest.raises(WeightsError) as err:
            call()
        text = str(err.value)
        assert "remote-w" in text and server.url("/w.pt") in text and str(cached_path(entry)) in text
        assert "crystal weights import FILE --name remote-w" in text
    assert server.ranges == []
    with pytest.raises(WeightsError, match="offline"):
        download_weights(entry, offline=True)
    monkeypatch.delenv("CRYSTAL_OFFLINE")
    with pytest.raises(WeightsError, match="offline"):
        download_weights(entry, offline=True)
    assert server.ranges == []


def test_import_by_name_and_by_sha(tmp_path):
    src = tmp_path / "elsewhere.pt"
    src.write_bytes(BLOB)
    entry = _entry("https://example.invalid/w.pt")
    got, path = import_weights(src, entry)
    assert got is entry and path == cached_path(entry) and path.read_bytes() == BLOB
    path.unlink()
    other = _entry("https://example.invalid/o.pt", data=b"other", name="other")
    got, path = import_weights(src, candidates=[other, entry])
    assert got is entry and path.is_file()
    with pytest.raises(WeightsError, match="expected"):
        import_weights(src, other)
    with pytest.raises(WeightsError, match="matches no registered"):
        import_weights(src, candidates=[other])
    assert not cached_path(other).exists()


def test_verify_reports_ok_missing_and_mismatch(tmp_path):
    entry = _entry("https://example.invalid/w.pt")
    absent = _entry("https://example.invalid/a.pt", data=b"a", name="absent")
    src = tmp_path / "w.pt"
    src.write_bytes(BLOB)
    import_weights(src, entry)
    checks = {c.name: c.ok for c in verify_weights([entry, absent])}
    assert checks == {"remote-w": True, "absent": None}
    cached_path(entry).write_bytes(b"tampered")
    [check] = verify_weights([entry])
    assert check.ok is False and check.actual == hashlib.sha256(b"tampered").hexdigest()
