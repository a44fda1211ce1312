"""The pluggy plugin manager, fed from the ``crystal.hooks`` entry-point group.

A hook module that fails to import is recorded in :func:`hook_load_errors` (plugin name,
distribution, error) and skipped; it never breaks the CLI or other plugins.
"""

from __future__ import annotations

import logging
from importlib import metadata

import pluggy

from crystal import hookspecs
from crystal.plugins import is_enabled

__all__ = ["HOOKS_GROUP", "call_isolated", "hook_load_errors", "plugin_manager", "reset_plugin_manager"]

HOOKS_GROUP = "crystal.hooks"
log = logging.getLogger(__name__)
_pm: pluggy.PluginManager | None = None
_errors: list[tuple[str, str, str]] = []


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (created on first use)."""
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        _errors.clear()
        seen: set[str] = set()
        for ep in metadata.entry_points(group=HOOKS_GROUP):
            dist = ep.dist.metadata["Name"] if ep.dist is not None else "<unknown>"
            # crystal-core's own hooks (built-in datasets and metrics) are never filtered out
            if ep.name in seen or (dist != "crystal-core" and not is_enabled("hooks", ep.name, dist)):
                continue
            seen.add(ep.name)
            try:
                module = ep.load()
                pm.register(module, name=ep.name)
            except Exception as exc:  # a broken plugin must not take the CLI down
                _errors.append((ep.name, dist, f"{type(exc).__name__}: {exc}"))
                log.warning("hooks of plugin %s (%s) failed to load: %s", ep.name, dist, exc)
        _pm = pm
    return _pm


def reset_plugin_manager() -> None:
    """Forget the manager (tests, or after installing a plugin in-process)."""
    global _pm
    _pm = None


def hook_load_errors() -> list[tuple[str, str, str]]:
    """``(plugin, distribution, error)`` for hook modules that failed to load."""
    plugin_manager()
    return list(_errors)


def call_isolated(hook_name: str, **kwargs: object) -> list[tuple[str, BaseException]]:
    """Call every implementation of ``hook_name``; one that raises is logged and skipped.

    Returns ``(plugin name, exception)`` for the implementations that failed.
    """
    failed: list[tuple[str, BaseException]] = []
    for impl in getattr(plugin_manager().hook, hook_name).get_hookimpls():
        try:
            impl.function(**{k: v for k, v in kwargs.items() if k in impl.argnames})
        except Exception as exc:
            log.warning("hook %s of plugin %s failed: %s", hook_name, impl.plugin_name, exc)
            failed.append((impl.plugin_name, exc))
    return failed
