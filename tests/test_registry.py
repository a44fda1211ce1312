"""registry.toml, the installed plugins and their generated manifests agree; the README table is
generated from them.

The component classes are the single source of truth for plugin metadata: each first-party
``crystal_plugin.toml`` must equal what ``crystal plugins manifest DIST --write`` compiles from
them (``crystal.manifest.compile_manifest``), so editing a class without regenerating fails here.
"""

from __future__ import annotations

import importlib.util
import tomllib
from importlib import metadata

import pytest
from support import ROOT

REGISTRY = tomllib.loads((ROOT / "registry.toml").read_text(encoding="utf-8"))
DISTRIBUTIONS = [p["distribution"] for p in REGISTRY["plugins"]]


def _load_gen():
    spec = importlib.util.spec_from_file_location("gen_plugin_table", ROOT / "docs" / "gen_plugin_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pyproject(path: str) -> dict:
    return tomllib.loads((ROOT / path / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def test_registry_keeps_only_what_it_alone_knows():
    for plugin in REGISTRY["plugins"]:
        assert set(plugin) == {"distribution", "path", "status"}, (
            f"{plugin.get('distribution')}: registry.toml duplicates {sorted(set(plugin) - {'distribution', 'path', 'status'})}; "
            "that comes from the manifest (crystal plugins manifest --write)"
        )
        assert plugin["status"] in {"stable", "experimental", "deprecated"}
    assert len(set(DISTRIBUTIONS)) == len(DISTRIBUTIONS)


def test_every_plugin_folder_is_catalogued():
    folders = {p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "plugins").glob("*/pyproject.toml")}
    assert folders == {p["path"] for p in REGISTRY["plugins"]}
    for plugin in REGISTRY["plugins"]:
        assert _pyproject(plugin["path"])["name"] == plugin["distribution"], plugin["path"]


def test_installed_entry_points_match_sources_and_manifests():
    from crystal.plugins import list_plugins

    infos = list_plugins(include_disabled=True)
    for plugin in REGISTRY["plugins"]:
        dist = metadata.distribution(plugin["distribution"])
        installed: dict[str, dict[str, str]] = {}
        for ep in dist.entry_points:
            if ep.group.startswith("crystal."):
                installed.setdefault(ep.group, {})[ep.name] = ep.value
        declared = {
            g: dict(e) for g, e in _pyproject(plugin["path"])["entry-points"].items() if g.startswith("crystal.")
        }
        assert installed == declared, (
            f"{plugin['distribution']}: installed entry points differ from pyproject.toml: "
            f"pip install --no-deps -e {plugin['path']}"
        )
        components = {(i.kind, i.name) for i in infos if i.distribution == plugin["distribution"]}
        assert components, f"{plugin['distribution']} registers no component"
        for info in (i for i in infos if i.distribution == plugin["distribution"]):
            assert info.manifest is not None, info.manifest_error
            assert not info.also_claimed_by, f"{info.kind} {info.name} is also claimed by {info.also_claimed_by}"
        manifest_components = {(c["kind"], c["name"]) for c in _source_manifest(plugin)["components"]}
        assert components == manifest_components, f"{plugin['distribution']}: manifest vs entry points"


def _source_manifest(plugin: dict) -> dict:
    return tomllib.loads(_load_gen().manifest_path(plugin["path"]).read_text(encoding="utf-8"))


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_manifest_is_generated_from_the_classes(distribution):
    from crystal.manifest import manifest_diff, manifest_file

    plugin = next(p for p in REGISTRY["plugins"] if p["distribution"] == distribution)
    path = manifest_file(distribution)
    assert path == _load_gen().manifest_path(plugin["path"]), f"{distribution} is not installed editable from {path}"
    diff = manifest_diff(distribution)
    assert not diff, f"{path} drifted from the classes; run `crystal plugins manifest {distribution} --write`:\n{diff}"


def test_weights_names_are_written_once():
    """The manifest's weights are exactly the class's, and the config accepts exactly those."""
    from pydantic import ValidationError

    from crystal.manifest import NamedWeights
    from crystal.plugins import list_plugins, load_class

    for info in list_plugins(include_disabled=True):
        if info.distribution not in DISTRIBUTIONS or not info.manifest or not info.manifest.weights:
            continue
        cls = load_class(info.kind, info.name)
        assert isinstance(cls.weights, NamedWeights), f"{info.name}: declare weights with NamedWeights"
        assert tuple(cls.weights) == info.manifest.weights
        field = cls.Config.model_json_schema()["properties"]["weights"]
        options = (field, *field.get("anyOf", []))
        enum = next(o.get("enum", [o.get("const")]) for o in options if "enum" in o or "const" in o)
        assert tuple(enum) == tuple(cls.weights), f"{info.name}: config's weights choices differ from the class's"
        with pytest.raises(ValidationError, match="unknown weights 'no-such-weights'"):
            cls.Config.model_validate({"weights": "no-such-weights"})


def test_readme_table_is_generated_from_registry_and_manifests():
    gen = _load_gen()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert gen.render(readme) == readme, "README plugin table is stale: run `make readme`"
    for plugin in REGISTRY["plugins"]:
        assert f"`{plugin['distribution']}`" in readme
