"""Pickled-module weights (never unpickled unless ``--trust-pickle``) and unpinned remote entries."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from _pickled_support import Exploit, TinyNet

from crystal import WeightsError
from crystal.manifest import PluginManifest, WeightsManifest, read_manifest, render_manifest
from crystal.weights import (
    cached_path,
    converted_path,
    download_weights,
    expected_sha256,
    import_weights,
    load_state_dict,
    resolve_weights,
    verify_weights,
    weights_status,
)


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CRYSTAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CRYSTAL_OFFLINE", raising=False)
    return tmp_path / "cache"


def _pickled(path: Path, obj: object, converter: str = "_pickled_support:to_payload") -> WeightsManifest:
    torch.save(obj, path)
    return WeightsManifest(
        name="tiny-model",
        file=path.as_uri(),
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        size=path.stat().st_size,
        licence="MIT",
        training_data="none (test)",
        format="pickled-module",
        converter=converter,
    )


def test_pickled_module_is_never_unpickled_without_trust(tmp_path):
    marker = tmp_path / "pwned"
    entry = _pickled(tmp_path / "evil.model", Exploit(str(marker)))
    with pytest.raises(WeightsError, match="pickled module") as err:
        resolve_weights(entry)  # downloads (file://) but does not unpickle
    msg = str(err.value)
    assert "crystal weights import --trust-pickle" in msg and str(cached_path(entry)) in msg
    assert str(converted_path(entry)) in msg
    with pytest.raises(WeightsError, match="pickled module"):
        load_state_dict(entry)
    _, path = import_weights(tmp_path / "evil.model", entry)  # plain import copies only
    assert path == cached_path(entry)
    [status] = weights_status([entry])
    assert status.present and status.converted is False and not status.usable
    assert not marker.exists()


def test_trust_pickle_converts_once_to_weights_only(tmp_path):
    net = TinyNet(4)
    entry = _pickled(tmp_path / "tiny.model", net)
    with pytest.warns(UserWarning, match="UNPICKLING"):
        _, path = import_weights(tmp_path / "tiny.model", entry, trust_pickle=True)
    assert path == converted_path(entry) and path.is_file()
    torch.load(path, weights_only=True)  # the conversion is weights-only
    payload = load_state_dict(entry)
    assert payload["hparams"] == {"width": 4}
    assert torch.equal(payload["state_dict"]["linear.weight"], net.linear.weight.detach())
    [status] = weights_status([entry])
    assert status.converted is True and status.usable
    # converting the file already in the cache works in place
    path.unlink()
    with pytest.warns(UserWarning, match="UNPICKLING"):
        import_weights(cached_path(entry), entry, trust_pickle=True)
    assert resolve_weights(entry)[0] == converted_path(entry)


def test_tampered_conversion_is_refused(tmp_path):
    entry = _pickled(tmp_path / "tiny.model", TinyNet())
    with pytest.warns(UserWarning, match="UNPICKLING"):
        import_weights(tmp_path / "tiny.model", entry, trust_pickle=True)
    torch.save({"format": "crystal-converted-weights", "payload": {}}, converted_path(entry))
    with pytest.raises(WeightsError, match="does not match its recorded sha256"):
        load_state_dict(entry)


def test_trust_pickle_refuses_wrong_files_and_bad_converters(tmp_path):
    entry = _pickled(tmp_path / "tiny.model", TinyNet())
    other = tmp_path / "other.model"
    torch.save(TinyNet(5), other)
    with pytest.raises(WeightsError, match="expected"):
        import_weights(other, entry, trust_pickle=True)  # sha256 must match before anything is unpickled
    bad = _pickled(tmp_path / "bad.model", TinyNet(), converter="_pickled_support:not_weights_only")
    with pytest.warns(UserWarning, match="UNPICKLING"), pytest.raises(WeightsError, match="not weights-only"):
        import_weights(tmp_path / "bad.model", bad, trust_pickle=True)
    assert not converted_path(bad).exists()
    plain = WeightsManifest(
        name="plain", file=other.as_uri(), sha256=hashlib.sha256(other.read_bytes()).hexdigest(),
        licence="MIT", training_data="none",
    )  # fmt: skip
    with pytest.raises(WeightsError, match="only for 'pickled-module'"):
        import_weights(other, plain, trust_pickle=True)


def test_offline_message_for_pickled_entry_says_trust_pickle(tmp_path, monkeypatch):
    entry = _pickled(tmp_path / "tiny.model", TinyNet())
    monkeypatch.setenv("CRYSTAL_OFFLINE", "1")
    with pytest.raises(WeightsError, match="offline") as err:
        resolve_weights(entry)
    assert "crystal weights import --trust-pickle FILE --name tiny-model" in str(err.value)


def test_manifest_rules_and_round_trip(tmp_path):
    base = {"name": "w", "licence": "MIT", "training_data": "x"}
    with pytest.raises(ValueError, match="only be omitted for a remote"):
        WeightsManifest(file="package:foo/w.pt", **base)
    with pytest.raises(ValueError, match="needs a converter"):
        WeightsManifest(file="https://x.invalid/w.model", format="pickled-module", **base)
    with pytest.raises(ValueError, match="only applies"):
        WeightsManifest(file="https://x.invalid/w.pt", converter="a.b:c", **base)
    entries = [
        WeightsManifest(file="https://x.invalid/w.model", format="pickled-module", converter="a.b:c", **base),
        WeightsManifest(file="https://x.invalid/v.pt", sha256="0" * 64, **{**base, "name": "v"}),
    ]
    manifest = PluginManifest.model_validate({"plugin": {"description": "d"}, "weights": entries})
    text = render_manifest(manifest, "crystal-x")
    assert text.count("format =") == 1 and "sha256" in text  # defaults are not written
    path = tmp_path / "crystal_plugin.toml"
    path.write_text(text)
    assert list(read_manifest(path).weights) == entries


class _Server:
    def __init__(self, data: bytes) -> None:
        self.data = data

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(handler) -> None:
                handler.send_response(200)
                handler.send_header("Content-Length", str(len(self.data)))
                handler.end_headers()
                handler.wfile.write(self.data)

            def log_message(handler, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True).start()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/released.pt"


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server(b"released weights" * 100)
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_unpinned_entry_is_pinned_at_first_download(server, tmp_path):
    entry = WeightsManifest(name="unpinned-w", file=server.url(), licence="MIT", training_data="none")
    assert expected_sha256(entry) is None and "unpinned-unpinned-w" in str(cached_path(entry))
    with pytest.warns(UserWarning, match="pinned"):
        path = download_weights(entry)
    digest = hashlib.sha256(server.data).hexdigest()
    assert expected_sha256(entry) == digest
    assert resolve_weights(entry)[0] == path
    assert [c.ok for c in verify_weights([entry])] == [True]
    server.data = b"the upstream file changed"  # a later forced download must match the pin
    with pytest.raises(WeightsError, match="expected " + digest):
        download_weights(entry, force=True)
    path.write_bytes(server.data)  # tampered cache
    with pytest.raises(WeightsError, match="expected " + digest):
        resolve_weights(entry)


def test_unpinned_import_needs_a_name_and_pins(tmp_path):
    entry = WeightsManifest(name="unpinned-w", file="https://x.invalid/u.pt", licence="MIT", training_data="none")
    src = tmp_path / "u.pt"
    src.write_bytes(b"abc")
    with pytest.raises(WeightsError, match="matches no registered"):
        import_weights(src, candidates=[entry])
    import_weights(src, entry)
    assert expected_sha256(entry) == hashlib.sha256(b"abc").hexdigest()
    src.write_bytes(b"abd")
    with pytest.raises(WeightsError, match="expected"):
        import_weights(src, entry)
