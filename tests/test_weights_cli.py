"""``crystal weights list|info|download|verify|import`` on a fake plugin with remote weights (file:// only)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from crystal_cli.main import main

BLOB = b"crystal weights " * 1000
OTHER = b"other weights " * 10


@pytest.fixture
def remote(fake_distribution, tmp_path, monkeypatch):
    monkeypatch.setenv("CRYSTAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CRYSTAL_OFFLINE", raising=False)
    release = tmp_path / "release"
    release.mkdir()
    (release / "fake-remote.pt").write_bytes(BLOB)
    (release / "fake-other.pt").write_bytes(OTHER)
    entries = ""
    for name, data in (("fake-remote", BLOB), ("fake-other", OTHER)):
        entries += f'''
[[weights]]
name = "{name}"
file = "{(release / f"{name}.pt").as_uri()}"
sha256 = "{hashlib.sha256(data).hexdigest()}"
size = {len(data)}
licence = "CC-BY-4.0"
training_data = "synthetic"
citation = "Doe et al., Fake Weights (2025)"
'''
    fake_distribution(
        "fake-remote-w",
        {"crystal.manifests": {"fake-remote-w": "fake_remote_w:crystal_plugin.toml"}},
        {
            "fake_remote_w/__init__.py": "",
            "fake_remote_w/crystal_plugin.toml": '[plugin]\ndescription = "w"\n' + entries,
        },
    )
    return release, tmp_path / "cache"


def _cached(cache: Path, name: str) -> Path:
    return next(cache.glob(f"*/{name}.pt"))


def test_list_info_download_verify(remote, capsys):
    _release, cache = remote
    assert main(["weights", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["fake-remote"]["where"] == "remote" and rows["fake-remote"]["size_bytes"] == len(BLOB)
    assert rows["fake-remote"]["distribution"] == "fake-remote-w"
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "fake-remote" in out and "remote (not cached)" in out and "CC-BY-4.0" in out

    assert main(["weights", "info", "fake-remote"]) == 0
    out = capsys.readouterr().out
    assert "Doe et al." in out and "cached:        no" in out and str(cache) in out

    assert main(["weights", "download", "fake-remote", "--offline"]) == 1
    err = capsys.readouterr().err
    assert "crystal weights import FILE --name fake-remote" in err and not cache.exists()

    assert main(["weights", "download", "fake-remote", "-q"]) == 0
    assert _cached(cache, "fake-remote").read_bytes() == BLOB
    assert "downloaded and verified" in capsys.readouterr().out
    assert main(["weights", "info", "fake-remote"]) == 0
    assert "cached:        yes" in capsys.readouterr().out

    assert main(["weights", "verify", "fake-remote", "fake-other"]) == 0
    out = capsys.readouterr().out
    assert "fake-remote: ok" in out and "fake-other: not present" in out
    _cached(cache, "fake-remote").write_bytes(b"tampered")
    assert main(["weights", "verify", "fake-remote"]) == 1
    assert "MISMATCH" in capsys.readouterr().err


def test_download_all_with_progress_bar(remote, capsys, monkeypatch):
    import crystal.weights as cw

    _release, cache = remote
    real = cw._registry

    def only_fake():  # the real registry holds the authors' release URLs: tests never download
        every, clashes = real()
        return {n: v for n, v in every.items() if v[0] == "fake-remote-w"}, clashes

    monkeypatch.setattr(cw, "_registry", only_fake)
    assert main(["weights", "download", "--all"]) == 0
    assert _cached(cache, "fake-remote").is_file() and _cached(cache, "fake-other").is_file()
    assert main(["weights", "download", "fake-other"]) == 0
    assert "cached at" in capsys.readouterr().out


def test_import_by_name_and_by_sha(remote, tmp_path, capsys):
    _release, cache = remote
    elsewhere = tmp_path / "downloaded-by-hand.bin"
    elsewhere.write_bytes(BLOB)
    assert main(["weights", "import", str(elsewhere), "--name", "fake-other"]) == 1
    assert "expected" in capsys.readouterr().err and not cache.exists()
    assert main(["weights", "import", str(elsewhere), "--name", "fake-remote"]) == 0
    assert _cached(cache, "fake-remote").read_bytes() == BLOB
    other = tmp_path / "o.bin"
    other.write_bytes(OTHER)
    assert main(["weights", "import", str(other)]) == 0
    assert "fake-other: imported" in capsys.readouterr().out
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"junk")
    assert main(["weights", "import", str(junk)]) == 1
    assert "matches no registered" in capsys.readouterr().err


def test_global_offline_flag_applies_to_every_command(remote, monkeypatch, capsys):
    """``crystal --offline COMMAND`` never downloads (the flag sets CRYSTAL_OFFLINE for the process)."""
    _release, cache = remote
    assert main(["--offline", "weights", "download", "fake-remote"]) == 1
    assert "offline" in capsys.readouterr().err.lower() and not cache.exists()
    monkeypatch.delenv("CRYSTAL_OFFLINE", raising=False)  # main() set it for this process
    assert main(["weights", "download", "fake-remote", "-q"]) == 0
    assert _cached(cache, "fake-remote").read_bytes() == BLOB


def test_trust_pickle_import_of_a_pickled_module(fake_distribution, tmp_path, monkeypatch, capsys):
    """A pickled module (like a mace-torch .model) is listed as not converted until
    ``crystal weights import --trust-pickle`` converts it, loudly, into a weights-only file."""
    import torch
    from _pickled_support import TinyNet

    monkeypatch.setenv("CRYSTAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CRYSTAL_OFFLINE", raising=False)
    model = tmp_path / "tiny.model"
    torch.save(TinyNet(2), model)
    fake_distribution(
        "fake-pickled-w",
        {"crystal.manifests": {"fake-pickled-w": "fake_pickled_w:crystal_plugin.toml"}},
        {
            "fake_pickled_w/__init__.py": "",
            "fake_pickled_w/crystal_plugin.toml": f'''[plugin]
description = "w"

[[weights]]
name = "fake-pickled"
file = "{model.as_uri()}"
sha256 = "{hashlib.sha256(model.read_bytes()).hexdigest()}"
licence = "MIT"
training_data = "none"
format = "pickled-module"
converter = "_pickled_support:to_payload"
''',
        },
    )
    assert main(["weights", "download", "fake-pickled", "-q"]) == 0
    out = capsys.readouterr().out
    assert "crystal weights import --trust-pickle" in out
    assert main(["weights", "list"]) == 0
    assert "not converted (--trust-pickle)" in capsys.readouterr().out
    assert main(["weights", "import", str(model), "--trust-pickle"]) == 0
    captured = capsys.readouterr()
    assert "WARNING: --trust-pickle unpickles" in captured.err and "weights-only conversion" in captured.out
    assert main(["weights", "list", "--json"]) == 0
    [row] = [r for r in json.loads(capsys.readouterr().out) if r["name"] == "fake-pickled"]
    assert row["converted"] is True and row["usable"] is True and row["format"] == "pickled-module"


def test_unknown_weights_name_is_a_usage_error(remote, capsys):
    assert main(["weights", "info", "fake-remot"]) == 2
    assert "did you mean 'fake-remote'" in capsys.readouterr().err
    assert main(["weights", "download", "nope"]) == 2
