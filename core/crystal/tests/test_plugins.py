"""Discovery through real entry points of throw-away distributions on sys.path."""

from __future__ import annotations

import sys

import pytest

from crystal import DuplicatePluginError, PluginLoadError, PluginNotFoundError
from crystal.plugins import check_plugins, list_plugins, load, load_class

GOOD = '''
from typing import ClassVar
import torch
from crystal import ComponentConfig, Encoder


class Cfg(ComponentConfig):
    offset: float = 0.0


class CountAtoms(Encoder):
    """Predicts the number of atoms (+ offset)."""
    name = "count-atoms"
    version = "1.0"
    description = "counts atoms"
    Config: ClassVar[type[ComponentConfig]] = Cfg

    @property
    def targets(self):
        return ("n_atoms",)

    def predict(self, batch):
        return {"n_atoms": batch.num_atoms.to(batch.dtype) + self.config.offset}
'''

MANIFEST = """
[plugin]
description = "test plugin"

[[components]]
kind = "encoder"
name = "count-atoms"
description = "counts atoms"
consumes = "crystal"
produces = "properties"
"""


@pytest.fixture
def site(fake_distribution, monkeypatch):
    """crystal's ``fake_distribution`` fixture, with no allow/block lists in the environment."""
    monkeypatch.delenv("CRYSTAL_PLUGINS", raising=False)
    monkeypatch.delenv("CRYSTAL_DISABLE_PLUGINS", raising=False)
    return fake_distribution


def _good(site):
    site(
        "fake-good",
        {
            "crystal.encoders": {"count-atoms": "fake_good.enc:CountAtoms"},
            "crystal.manifests": {"fake-good": "fake_good:crystal_plugin.toml"},
        },
        {"fake_good/__init__.py": "", "fake_good/enc.py": GOOD, "fake_good/crystal_plugin.toml": MANIFEST},
    )


def test_listing_reads_manifest_without_importing(site):
    _good(site)
    infos = {i.name: i for i in list_plugins("encoder")}
    info = infos["count-atoms"]
    assert info.distribution == "fake-good" and info.version == "1.0"
    assert info.manifest is not None and info.manifest.description == "counts atoms"
    assert info.manifest_error is None
    assert "fake_good" not in sys.modules and "fake_good.enc" not in sys.modules


def test_load_by_name_and_use(site):
    _good(site)
    from crystal import CrystalBatch

    enc = load("encoder", "count-atoms", {"offset": 1.0}, device="cpu")
    import torch

    batch = CrystalBatch(
        atomic_numbers=torch.tensor([1, 1, 8]),
        frac_coords=torch.rand(3, 3),
        lattices=torch.eye(3).expand(2, 3, 3) * 4,
        num_atoms=torch.tensor([2, 1]),
    )
    assert enc.predict(batch)["n_atoms"].tolist() == [3.0, 2.0]
    assert all(r.ok for r in check_plugins([i for i in list_plugins("encoder") if i.name == "count-atoms"]))


def test_unknown_name_suggests(site):
    _good(site)
    with pytest.raises(PluginNotFoundError, match="did you mean 'count-atoms'"):
        load_class("encoder", "count-atom")


def test_broken_plugin_is_reported_and_others_still_work(site):
    _good(site)
    site(
        "fake-broken",
        {"crystal.encoders": {"broken": "fake_broken.enc:Nope"}},
        {"fake_broken/__init__.py": "", "fake_broken/enc.py": "import a_module_that_does_not_exist\n"},
    )
    names = {i.name for i in list_plugins("encoder")}
    assert {"broken", "count-atoms"} <= names
    with pytest.raises(PluginLoadError) as err:
        load_class("encoder", "broken")
    msg = str(err.value)
    assert "broken" in msg and "fake-broken" in msg and "a_module_that_does_not_exist" in msg
    assert load_class("encoder", "count-atoms").name == "count-atoms"
    results = {
        r.info.name: r for r in check_plugins(i for i in list_plugins("encoder") if i.distribution.startswith("fake"))
    }
    assert not results["broken"].ok
    assert any("no crystal.manifests" in p for p in results["broken"].problems)
    assert results["count-atoms"].ok


def test_duplicate_names_name_both_distributions(site):
    _good(site)
    site(
        "fake-dup",
        {"crystal.encoders": {"count-atoms": "fake_dup.enc:CountAtoms"}},
        {"fake_dup/__init__.py": "", "fake_dup/enc.py": GOOD},
    )
    with pytest.raises(DuplicatePluginError, match=r"fake-good.*fake-dup|fake-dup.*fake-good"):
        load_class("encoder", "count-atoms")


def test_wrong_kind_or_name_mismatch(site):
    site(
        "fake-wrong",
        {
            "crystal.potentials": {"count-atoms": "fake_wrong.enc:CountAtoms"},
            "crystal.encoders": {"other-name": "fake_wrong.enc:CountAtoms"},
        },
        {"fake_wrong/__init__.py": "", "fake_wrong/enc.py": GOOD},
    )
    with pytest.raises(PluginLoadError, match=r"not a subclass of crystal\.Potential"):
        load_class("potential", "count-atoms")
    with pytest.raises(PluginLoadError, match="declares name 'count-atoms'"):
        load_class("encoder", "other-name")


def test_allow_and_block_lists(site, monkeypatch):
    _good(site)
    monkeypatch.setenv("CRYSTAL_DISABLE_PLUGINS", "fake-good")
    assert "count-atoms" not in {i.name for i in list_plugins("encoder")}
    assert "count-atoms" in {i.name for i in list_plugins("encoder", include_disabled=True)}
    with pytest.raises(PluginNotFoundError, match="disabled"):
        load_class("encoder", "count-atoms")
    monkeypatch.delenv("CRYSTAL_DISABLE_PLUGINS")
    monkeypatch.setenv("CRYSTAL_PLUGINS", "encoder:count-atoms")
    names = {i.name for i in list_plugins()}
    assert names == {"count-atoms"}
