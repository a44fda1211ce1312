"""Generate the README's plugin table from registry.toml and the plugins' static manifests.

    python docs/gen_plugin_table.py          # print the table
    python docs/gen_plugin_table.py --write  # replace it in README.md between the markers

registry.toml keeps what only the catalogue knows (distribution, folder, status); each row's
kind, name, weights and description come from the distribution's ``crystal_plugin.toml``
(generated from its classes by ``crystal plugins manifest DIST --write``), read from the
source tree: nothing is imported or installed.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BEGIN = "<!-- plugin-table:begin (generated from registry.toml by docs/gen_plugin_table.py) -->"
END = "<!-- plugin-table:end -->"


def registry() -> list[dict[str, Any]]:
    """The ``[[plugins]]`` entries of registry.toml."""
    return list(tomllib.loads((ROOT / "registry.toml").read_text(encoding="utf-8"))["plugins"])


def manifest_path(path: str) -> Path:
    """The manifest file of the plugin folder ``path``, as its ``crystal.manifests`` entry point names it."""
    project = tomllib.loads((ROOT / path / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    (value,) = project["entry-points"]["crystal.manifests"].values()
    module, _, filename = value.partition(":")
    return ROOT / path / "src" / Path(*module.split(".")) / filename


def rows() -> list[dict[str, Any]]:
    """One row per component of every catalogued distribution, sorted by kind and name."""
    out = []
    for plugin in registry():
        manifest = tomllib.loads(manifest_path(plugin["path"]).read_text(encoding="utf-8"))
        for comp in manifest.get("components", []):
            out.append(
                {
                    **plugin,
                    "kind": comp["kind"],
                    "name": comp["name"],
                    "weights": list(comp.get("weights", [])),
                    "description": manifest["plugin"]["description"],
                }
            )
    return sorted(out, key=lambda r: (r["kind"], r["name"]))


def table() -> str:
    lines = [
        "| plugin | kind | distribution | weights | status | description |",
        "|---|---|---|---|---|---|",
    ]
    for p in rows():
        weights = ", ".join(f"`{w}`" for w in p["weights"]) or "–"
        lines.append(
            f"| [`{p['name']}`]({p['path']}/README.md) | {p['kind']} | `{p['distribution']}` | {weights} "
            f"| {p['status']} | {p['description']} |"
        )
    return "\n".join(lines)


def render(readme: str) -> str:
    start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    return readme[:start] + "\n" + table() + "\n" + readme[end:]


if __name__ == "__main__":
    path = ROOT / "README.md"
    if "--write" in sys.argv:
        path.write_text(render(path.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        print(table())
