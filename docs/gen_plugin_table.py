"""Generate the README's plugin table and released-models table from registry.toml and the
plugins' static manifests.

    python docs/gen_plugin_table.py          # print the tables
    python docs/gen_plugin_table.py --write  # replace them in README.md between the markers

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
RELEASED_BEGIN = "<!-- released-models:begin (generated from the manifests by docs/gen_plugin_table.py) -->"
RELEASED_END = "<!-- released-models:end -->"
REMOTE = ("http://", "https://", "file://")


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
        released = {w["name"] for w in manifest.get("weights", []) if w["file"].startswith(REMOTE)}
        for comp in manifest.get("components", []):
            out.append(
                {
                    **plugin,
                    "kind": comp["kind"],
                    "name": comp["name"],
                    "weights": [w for w in comp.get("weights", []) if w not in released],
                    "released": [w for w in comp.get("weights", []) if w in released],
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
        if p["released"]:
            weights += f" + {len(p['released'])} released ([below](#released-models))"
        lines.append(
            f"| [`{p['name']}`]({p['path']}/README.md) | {p['kind']} | `{p['distribution']}` | {weights} "
            f"| {p['status']} | {p['description']} |"
        )
    return "\n".join(lines)


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def released_rows() -> list[dict[str, Any]]:
    """Every remote (released) weights entry of every catalogued distribution."""
    out = []
    for plugin in registry():
        manifest = tomllib.loads(manifest_path(plugin["path"]).read_text(encoding="utf-8"))
        for w in manifest.get("weights", []):
            if w["file"].startswith(REMOTE):
                out.append({**w, "plugin": plugin["distribution"], "path": plugin["path"]})
    return sorted(out, key=lambda r: (r["plugin"], r["name"]))


def released_table() -> str:
    lines = [
        "| weights | plugin | source (the authors' release) | size | sha256 | licence | citation |",
        "|---|---|---|---|---|---|---|",
    ]
    for w in released_rows():
        host = w["file"].split("/")[2] if "://" in w["file"] else w["file"]
        digest = f"`{w['sha256'][:12]}…`" if w.get("sha256") else "pinned at first download"
        pickled = " (pickled module: `--trust-pickle`)" if w.get("format") == "pickled-module" else ""
        lines.append(
            f"| `{w['name']}` | [`{w['plugin']}`]({w['path']}/README.md) | [{host}]({w['file']}){pickled} "
            f"| {_size(w.get('size'))} | {digest} | {w['licence']} | {w.get('citation') or '–'} |"
        )
    return "\n".join(lines)


def _replace(text: str, begin: str, end: str, body: str) -> str:
    start, stop = text.index(begin) + len(begin), text.index(end)
    return text[:start] + "\n" + body + "\n" + text[stop:]


def render(readme: str) -> str:
    readme = _replace(readme, BEGIN, END, table())
    return _replace(readme, RELEASED_BEGIN, RELEASED_END, released_table())


if __name__ == "__main__":
    path = ROOT / "README.md"
    if "--write" in sys.argv:
        path.write_text(render(path.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        print(table())
        print()
        print(released_table())
