"""registry.toml must match what is installed, and the README table must be generated from it."""

from __future__ import annotations

import importlib.util
import tomllib
from importlib import metadata

from support import ROOT

REGISTRY = tomllib.loads((ROOT / "registry.toml").read_text(encoding="utf-8"))


def _load_gen():
    spec = importlib.util.spec_from_file_location("gen_plugin_table", ROOT / "docs" / "gen_plugin_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_plugin_folder_is_catalogued():
    folders = {p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "plugins").glob("*/pyproject.toml")}
    assert folders == {p["path"] for p in REGISTRY["plugins"]}


def test_registry_matches_installed_entry_points():
    for plugin in REGISTRY["plugins"]:
        dist = metadata.distribution(plugin["distribution"])
        installed: dict[str, dict[str, str]] = {}
        for ep in dist.entry_points:
            if ep.group.startswith("crystal."):
                installed.setdefault(ep.group, {})[ep.name] = ep.value
        assert installed == plugin["entry_points"], (
            f"{plugin['distribution']}: registry.toml drifted from its entry points"
        )
        kind_group = f"crystal.{plugin['kind']}s"
        assert plugin["name"] in installed[kind_group]


def test_registry_matches_manifests():
    from crystal.plugins import list_plugins

    infos = {(i.kind, i.name): i for i in list_plugins(include_disabled=True)}
    for plugin in REGISTRY["plugins"]:
        info = infos[(plugin["kind"], plugin["name"])]
        assert info.distribution == plugin["distribution"]
        assert info.manifest is not None, info.manifest_error
        assert list(info.manifest.weights) == plugin["weights"]


def test_readme_table_is_generated_from_registry():
    gen = _load_gen()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert gen.render(readme) == readme, "README plugin table is stale: run `make readme`"
    for plugin in REGISTRY["plugins"]:
        assert f"`{plugin['distribution']}`" in readme
