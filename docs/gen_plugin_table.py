"""Generate the README's plugin table from registry.toml.

    python docs/gen_plugin_table.py          # print the table
    python docs/gen_plugin_table.py --write  # replace it in README.md between the markers
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN = "<!-- plugin-table:begin (generated from registry.toml by docs/gen_plugin_table.py) -->"
END = "<!-- plugin-table:end -->"


def table() -> str:
    registry = tomllib.loads((ROOT / "registry.toml").read_text(encoding="utf-8"))
    lines = [
        "| plugin | kind | distribution | weights | status | description |",
        "|---|---|---|---|---|---|",
    ]
    for p in sorted(registry["plugins"], key=lambda p: (p["kind"], p["name"])):
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
