"""crystal's pytest plugin: the ``fake_distribution`` fixture for plugin authors."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest

from crystal.plugins import list_plugins, load_class
from crystal.testing.pytest_plugin import FakeDistributions

ENCODER = """
from crystal.components import Encoder

class Zeros(Encoder):
    name = "fake-zeros"
    version = "0.1"
    targets = ("zero",)

    def predict(self, batch):
        import torch

        return {"zero": torch.zeros(len(batch))}
"""


def test_fixture_is_registered_through_pytest11():
    eps = {ep.name: ep.value for ep in metadata.entry_points(group="pytest11")}
    assert eps.get("crystal") == "crystal.testing.pytest_plugin"


def test_fake_distribution_is_discovered_and_loadable(fake_distribution):
    info = fake_distribution(
        "crystal-fake-zeros",
        {"crystal.encoders": {"fake-zeros": "fake_zeros.enc:Zeros"}},
        {"fake_zeros/__init__.py": "", "fake_zeros/enc.py": ENCODER},
        version="2.3",
        metadata={"Summary": "zeros", "Project-URL": ["Source, https://example.org/src"]},
    )
    assert info == fake_distribution.site / "crystal_fake_zeros-2.3.dist-info"
    assert str(fake_distribution.site) in sys.path
    found = {p.name: p for p in list_plugins("encoder")}
    assert found["fake-zeros"].distribution == "crystal-fake-zeros" and found["fake-zeros"].version == "2.3"
    assert metadata.metadata("crystal-fake-zeros").get_all("Project-URL") == ["Source, https://example.org/src"]
    assert load_class("encoder", "fake-zeros").targets == ("zero",)
    assert "fake_zeros.enc" in sys.modules


def test_close_restores_sys_path_and_modules(tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        fakes = FakeDistributions(tmp_path, mp)
        fakes("fake-tidy", {"crystal.encoders": {"fake-tidy": "fake_tidy:Nope"}}, {"fake_tidy.py": "X = 1\n"})
        import fake_tidy  # noqa: F401

        assert "fake_tidy" in sys.modules
        fakes.close()
        assert "fake_tidy" not in sys.modules
    assert str(tmp_path) not in sys.path
    assert "fake-tidy" not in {p.name for p in list_plugins("encoder", include_disabled=True)}


def test_importing_crystal_testing_imports_neither_pytest_nor_torch():
    code = (
        "import sys, crystal.testing; "
        "assert 'pytest' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
