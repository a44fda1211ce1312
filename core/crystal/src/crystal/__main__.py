"""``python -m crystal list|check``: plugins as crystal-core alone sees them.

For plugin authors who installed only ``crystal-core`` (the full command line, ``crystal``,
is the ``crystal-cli`` distribution). ``list`` reads entry points and static manifests
without importing torch or plugin code; ``check`` imports every component and compares it
with its manifest, and exits 1 when a plugin has a problem.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m crystal``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m crystal", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    list_p = sub.add_parser("list", help="installed components (no torch, no plugin code)")
    list_p.add_argument("--kind", help="only this kind (potential, encoder, ...)")
    list_p.add_argument(
        "--all", action="store_true", help="include plugins disabled by CRYSTAL_PLUGINS/..._DISABLE_..."
    )
    sub.add_parser("check", help="import every component and compare it with its manifest")
    args = parser.parse_args(argv)

    from crystal.errors import PluginError
    from crystal.plugins import check_plugins, list_plugins

    try:
        if args.command == "list":
            for info in list_plugins(args.kind, include_disabled=args.all):
                state = "" if info.enabled else " (disabled)"
                print(f"{info.kind:<14} {info.name:<16} {info.distribution} {info.version}{state}  {info.description}")
            return 0
        bad = 0
        for result in check_plugins():
            print(f"{'ok ' if result.ok else 'BAD'} {result.info.kind}:{result.info.name} ({result.info.distribution})")
            for problem in result.problems:
                print(f"    {problem}")
            bad += not result.ok
        return 1 if bad else 0
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
