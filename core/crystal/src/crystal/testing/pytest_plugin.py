"""crystal's pytest plugin: fixtures for plugin authors.

Installed with crystal-core and registered through the ``pytest11`` entry point ``crystal``,
so the fixtures are available in every test session without a ``conftest.py``.

``fake_distribution``
    Makes throw-away *installed* distributions (a ``*.dist-info`` folder with entry points,
    plus package files) in a temporary site directory on ``sys.path``, so discovery is
    tested exactly as for a pip-installed plugin, through ``importlib.metadata`` entry points
    and without mocking::

        def test_my_encoder_is_discovered(fake_distribution):
            fake_distribution(
                "crystal-foo",
                {"crystal.encoders": {"foo": "crystal_foo.enc:Foo"}},
                {"crystal_foo/__init__.py": "", "crystal_foo/enc.py": ENCODER_SOURCE},
            )
            assert "foo" in {p.name for p in crystal.list_plugins("encoder")}

    At the end of the test the site directory leaves ``sys.path``, the fake packages leave
    ``sys.modules``, and the import, metadata and crystal hook caches are cleared.

This module imports pytest; :mod:`crystal.testing` itself does not import it.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

__all__ = ["FakeDistributions", "fake_distribution"]


class FakeDistributions:
    """Factory of throw-away installed distributions in one site directory (:attr:`site`).

    Call it once per distribution; see :meth:`__call__`. Created by the
    :func:`fake_distribution` fixture, which also cleans up.
    """

    def __init__(self, site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.site = site
        self._monkeypatch = monkeypatch
        self._packages: set[str] = set()
        self._on_path = False

    def __call__(
        self,
        name: str,
        entry_points: Mapping[str, Mapping[str, str]],
        files: Mapping[str, str] | None = None,
        *,
        version: str = "1.0",
        metadata: Mapping[str, str | Sequence[str]] | None = None,
    ) -> Path:
        """Install distribution ``name`` and return its ``*.dist-info`` folder.

        ``entry_points`` maps a group to ``{entry-point name: "module:attr"}``;
        ``files`` maps paths relative to :attr:`site` to their text (dedented), e.g.
        ``{"crystal_foo/__init__.py": "", "crystal_foo/enc.py": SOURCE}``; ``metadata``
        adds ``METADATA`` headers (``{"Summary": "...", "Project-URL": ["Source, https://..."]}``).
        """
        self.site.mkdir(parents=True, exist_ok=True)
        info = self.site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        headers = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
        for key, value in (metadata or {}).items():
            headers += [f"{key}: {v}" for v in ([value] if isinstance(value, str) else value)]
        (info / "METADATA").write_text("\n".join(headers) + "\n", encoding="utf-8")
        lines: list[str] = []
        for group, eps in entry_points.items():
            lines.append(f"[{group}]")
            lines += [f"{k} = {v}" for k, v in eps.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        for rel, text in (files or {}).items():
            path = self.site / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text), encoding="utf-8")
            top = Path(rel).parts[0]
            self._packages.add(top.removesuffix(".py"))
        if not self._on_path:
            self._monkeypatch.syspath_prepend(str(self.site))
            self._on_path = True
        self.refresh()
        return info

    def forget_modules(self, prefix: str | None = None) -> None:
        """Drop the fake packages (or only ``prefix`` and its submodules) from ``sys.modules``,
        so that edited files are imported afresh."""
        for top in [prefix] if prefix is not None else sorted(self._packages):
            for mod in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
                del sys.modules[mod]

    def refresh(self) -> None:
        """Clear the import, ``importlib.metadata`` and crystal hook caches (after editing files)."""
        importlib.invalidate_caches()
        hooks = sys.modules.get("crystal.hooks")
        if hooks is not None:
            hooks.reset_plugin_manager()

    def close(self) -> None:
        """Forget the fake packages and refresh the caches (``sys.path`` is restored by monkeypatch)."""
        self.forget_modules()
        self.refresh()


@pytest.fixture
def fake_distribution(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeDistributions]:
    """A :class:`FakeDistributions` factory whose site directory is on ``sys.path`` for the test."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        fakes = FakeDistributions(tmp_path_factory.mktemp("site"), monkeypatch)
        try:
            yield fakes
        finally:
            fakes.close()
    importlib.invalidate_caches()
