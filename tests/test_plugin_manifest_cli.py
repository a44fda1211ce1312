"""``crystal plugins manifest``: prints, writes and checks the manifest compiled from the classes.

Runs the CLI in-process on a throw-away distribution (a package + ``*.dist-info`` on sys.path).
"""

from __future__ import annotations

import importlib
import json
import sys

import pytest

COMPONENT = """
from typing import Annotated, ClassVar

from pydantic import Field

from crystal import ComponentConfig, Encoder
from crystal.manifest import NamedWeights, WeightsManifest

WEIGHTS = NamedWeights(
    WeightsManifest(name="cli-w", file="package:cli_fake/w.pt", sha256="0" * 64, licence="MIT", training_data="none"),
)


class Cfg(ComponentConfig):
    weights: Annotated[str, WEIGHTS] | None = Field(None, description="shipped weights")


class Enc(Encoder):
    name = "cli-enc"
    version = "1.0"
    description = "an encoder for the CLI test"
    Config: ClassVar[type[ComponentConfig]] = Cfg
    weights = WEIGHTS

    @property
    def targets(self):
        return ("x",)

    def predict(self, batch):
        return {}
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A flat-layout project folder that is also on sys.path, with its dist-info."""
    (tmp_path / "cli_fake").mkdir()
    (tmp_path / "cli_fake" / "__init__.py").write_text("")
    (tmp_path / "cli_fake" / "enc.py").write_text(COMPONENT)
    info = tmp_path / "cli_fake-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.4\nName: cli-fake\nVersion: 1.0\nSummary: CLI fake plugin\n")
    (info / "entry_points.txt").write_text(
        "[crystal.encoders]\ncli-enc = cli_fake.enc:Enc\n[crystal.manifests]\ncli-fake = cli_fake:crystal_plugin.toml\n"
    )
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "cli-fake"\nversion = "1.0"\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CRYSTAL_PLUGINS", "cli-fake")
    importlib.invalidate_caches()
    yield tmp_path
    for name in [m for m in sys.modules if m == "cli_fake" or m.startswith("cli_fake.")]:
        del sys.modules[name]


def _crystal(capsys, *args: str) -> tuple[int, str]:
    from crystal_cli.main import main

    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out + out.err


def test_print_check_write_then_list_and_check(project, capsys, monkeypatch):
    path = project / "cli_fake" / "crystal_plugin.toml"
    code, out = _crystal(capsys, "plugins", "manifest", "cli-fake")
    assert code == 0 and out.startswith("# Static manifest of cli-fake, GENERATED") and not path.exists()
    assert 'weights = ["cli-w"]' in out and 'description = "an encoder for the CLI test"' in out

    code, out = _crystal(capsys, "plugins", "manifest", "cli-fake", "--check")
    assert code == 1 and "DRIFT cli-fake" in out and "crystal plugins manifest cli-fake --write" in out

    monkeypatch.chdir(project / "cli_fake")  # no DIST: the project of the nearest pyproject.toml
    code, out = _crystal(capsys, "plugins", "manifest", "--write")
    assert code == 0 and f"wrote {path}" in out
    code, out = _crystal(capsys, "plugins", "manifest", "--write")
    assert code == 0 and f"unchanged {path}" in out
    code, out = _crystal(capsys, "plugins", "manifest", "cli-fake", "--check")
    assert code == 0 and out.startswith("ok    cli-fake")

    code, out = _crystal(capsys, "plugins", "list", "--json")
    (row,) = json.loads(out)
    assert (row["name"], row["description"], row["weights"], row["problem"]) == (
        "cli-enc",
        "an encoder for the CLI test",
        ["cli-w"],
        None,
    )
    code, out = _crystal(capsys, "plugins", "check")
    assert code == 0 and "ok   encoder cli-enc" in out, out

    path.write_text(path.read_text().replace('["cli-w"]', '["cli-w", "other"]'))
    code, out = _crystal(capsys, "plugins", "check")
    assert code == 1 and "weights: class says ('cli-w',)" in out and "crystal plugins manifest cli-fake --write" in out
    code, out = _crystal(capsys, "plugins", "info", "cli-enc", "--config")
    assert "weights = None  (one of 'cli-w' or None): shipped weights" in out


def test_errors(project, capsys, tmp_path_factory, monkeypatch):
    code, out = _crystal(capsys, "plugins", "manifest", "no-such-dist")
    assert code == 2 and "'no-such-dist' is not installed" in out
    code, out = _crystal(capsys, "plugins", "manifest", "cli-fake", "--write", "--check")
    assert code == 2
    monkeypatch.chdir(tmp_path_factory.mktemp("empty"))
    code, out = _crystal(capsys, "plugins", "manifest")
    assert code == 2 and "no pyproject.toml" in out
