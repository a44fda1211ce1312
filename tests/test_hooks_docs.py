"""Every hook is documented and tested (the datasette pattern), and each hook works.

The meta-tests read the hook specifications from :mod:`crystal.hookspecs` (functions that
pluggy's ``HookspecMarker`` tagged with a ``crystal_spec`` attribute) and require, for
each one:

* a ``## <name>`` section in ``docs/hooks.md`` with the exact signature in a code block
  and a complete ``@hookimpl`` example (which must register against the real specs), and
* a test function named ``test_hook_<name>`` somewhere under ``core/*/tests`` or ``tests``.

Adding a hook without its documentation and test therefore fails the suite. The
``test_hook_*`` tests of the four current hooks follow.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import re
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pluggy
import pytest

from crystal import hookspecs
from crystal.errors import ConfigError, StructureError
from crystal.hooks import plugin_manager
from crystal.hookspecs import hookimpl

ROOT = Path(__file__).resolve().parents[1]
HOOKS_MD = ROOT / "docs" / "hooks.md"
TEST_DIRS = (*sorted((ROOT / "core").glob("*/tests")), ROOT / "tests")
SPEC_ATTR = f"{hookspecs.PROJECT}_spec"  # set by pluggy.HookspecMarker("crystal")


# ============================================================================ meta-tests
def _hookspecs() -> dict[str, Any]:
    return {name: fn for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, SPEC_ATTR)}


HOOKS = sorted(_hookspecs())


def _annotation(value: Any) -> str:
    # ``from __future__ import annotations`` in hookspecs.py: annotations are the source strings
    return value if isinstance(value, str) else inspect.formatannotation(value)


def signature_text(fn: Any) -> str:
    """``name(arg: Type, *, kw: Type = default) -> Return`` exactly as written in the source."""
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    parts: list[str] = []
    for k, p in enumerate(params):
        if p.kind is p.KEYWORD_ONLY and (k == 0 or params[k - 1].kind not in (p.KEYWORD_ONLY, p.VAR_POSITIONAL)):
            parts.append("*")
        text = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name
        if p.annotation is not p.empty:
            text += f": {_annotation(p.annotation)}"
            if p.default is not p.empty:
                text += f" = {p.default!r}"
        elif p.default is not p.empty:
            text += f"={p.default!r}"
        parts.append(text)
        if p.kind is p.POSITIONAL_ONLY and (k + 1 == len(params) or params[k + 1].kind is not p.POSITIONAL_ONLY):
            parts.append("/")
    ret = "" if sig.return_annotation is sig.empty else f" -> {_annotation(sig.return_annotation)}"
    return f"{fn.__name__}({', '.join(parts)}){ret}"


def _sections() -> dict[str, str]:
    """``{heading: body}`` of the level-2 sections of docs/hooks.md."""
    text = HOOKS_MD.read_text(encoding="utf-8")
    out: dict[str, str] = {}
    for chunk in re.split(r"^## ", text, flags=re.M)[1:]:
        heading, _, body = chunk.partition("\n")
        out[heading.strip()] = body
    return out


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"^```[A-Za-z]*\n(.*?)^```", text, flags=re.S | re.M)


def _example(name: str) -> str:
    sections = _sections()
    assert name in sections, f"docs/hooks.md has no '## {name}' section for hook {name}"
    blocks = [b for b in _code_blocks(sections[name]) if "@hookimpl" in b and f"def {name}(" in b]
    assert blocks, f"docs/hooks.md, section '## {name}': no example code block with '@hookimpl' and 'def {name}('"
    return blocks[0]


def test_hookspecs_are_found():
    # guards the meta-tests against silently checking nothing
    assert {"register_commands", "register_datasets", "register_metrics", "pipeline_event"} <= set(HOOKS)
    assert signature_text(hookspecs.register_commands) == "register_commands(cli: typer.Typer) -> None"


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_is_documented_with_signature_and_example(name):
    sections = _sections()
    assert name in sections, f"docs/hooks.md has no '## {name}' section for hook {name}"
    signature = signature_text(_hookspecs()[name])
    blocks = _code_blocks(sections[name])
    # a code block of its own holding exactly the signature (the example's ``def`` line does not count)
    assert any(b.strip() == signature for b in blocks), (
        f"docs/hooks.md, section '## {name}': no code block holds exactly the signature\n    {signature}"
    )
    _example(name)


@pytest.mark.parametrize("name", HOOKS)
def test_documented_example_registers_against_the_specs(name):
    """The example is valid Python and pluggy accepts it as an implementation of the hook."""
    module = types.ModuleType(f"hooks_md_example_{name}")
    exec(compile(_example(name), f"docs/hooks.md ({name} example)", "exec"), module.__dict__)
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(module)  # validates argument names against the spec
    pm.check_pending()  # no @hookimpl without a matching spec
    assert [impl.plugin for impl in getattr(pm.hook, name).get_hookimpls()] == [module]


def test_no_section_documents_a_hook_that_does_not_exist():
    stale = [h for h in _sections() if re.fullmatch(r"[a-z_][a-z0-9_]*", h) and h not in HOOKS]
    assert not stale, f"docs/hooks.md documents hooks that crystal.hookspecs does not define: {stale}"


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_has_a_test(name):
    pattern = re.compile(rf"^\s*(?:async\s+)?def test_hook_{name}\b", flags=re.M)
    files = [f for d in TEST_DIRS if d.is_dir() for f in sorted(d.rglob("*.py"))]
    hits = [f for f in files if pattern.search(f.read_text(encoding="utf-8"))]
    assert hits, f"no test function named test_hook_{name} under core/*/tests or tests"


# ============================================================================ hook tests
@contextlib.contextmanager
def registered(plugin: object, name: str) -> Iterator[pluggy.PluginManager]:
    """Register ``plugin`` on the process-wide plugin manager for the duration of a block."""
    pm = plugin_manager()
    pm.register(plugin, name=name)
    try:
        yield pm
    finally:
        pm.unregister(plugin)


def _bulk(limit: int | None = None) -> tuple[list[str], list[Any]]:
    """A small real dataset: four elemental and binary crystals from ase.build.bulk."""
    from ase.build import bulk
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = {
        "Cu": bulk("Cu", "fcc", a=3.61),
        "Si": bulk("Si", "diamond", a=5.431),
        "NaCl": bulk("NaCl", "rocksalt", a=5.64),
        "Fe": bulk("Fe", "bcc", a=2.87),
    }
    ids = list(atoms)[:limit]
    return ids, [AseAtomsAdaptor.get_structure(atoms[i]) for i in ids]


def _write_cifs(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for ident, structure in zip(*_bulk(), strict=True):
        structure.to(filename=str(folder / f"{ident}.cif"))
    return folder


def test_hook_register_commands(capsys):
    import typer
    from typer.testing import CliRunner

    from crystal_cli.main import app, main

    class CommandsPlugin:
        @hookimpl
        def register_commands(self, cli: typer.Typer) -> None:
            @cli.command("hooks-test-greet")
            def greet(name: str = "world") -> None:
                """Say hello (registered by a test plugin)."""
                typer.echo(f"hello {name}")

    runner = CliRunner()
    before = list(app.registered_commands)
    plugin = CommandsPlugin()
    try:
        with registered(plugin, "test-register-commands") as pm:
            pm.hook.register_commands(cli=app)
            result = runner.invoke(app, ["hooks-test-greet", "--name", "crystal"])
            assert result.exit_code == 0, result.output
            assert result.output == "hello crystal\n"
            assert "hooks-test-greet" in runner.invoke(app, ["--help"]).output
            # the console-script path registers plugin commands by itself
            app.registered_commands[:] = before
            assert main(["hooks-test-greet", "--name", "main"]) == 0
            assert capsys.readouterr().out == "hello main\n"
    finally:
        app.registered_commands[:] = before
    assert "hooks-test-greet" not in runner.invoke(app, ["--help"]).output
    assert main(["hooks-test-greet"]) == 2  # gone once the plugin is unregistered


def test_hook_register_datasets(tmp_path):
    from crystal.registries import DatasetSpec, datasets
    from crystal_pipeline import run_pipeline

    calls: list[int | None] = []

    def load(limit: int | None) -> tuple[list[str], list[Any]]:
        calls.append(limit)
        return _bulk(limit)

    class DatasetPlugin:
        @hookimpl
        def register_datasets(self, register):
            register(DatasetSpec(name="hooks-test-bulk", description="four ase.build.bulk crystals", load=load))

    with registered(DatasetPlugin(), "test-register-datasets"):
        found = datasets()
        assert "hooks-test-bulk" in found and "dcdft" in found  # core's own datasets stay
        assert calls == []  # registration does not load
        result = run_pipeline(
            {
                "source": {"type": "dataset", "name": "hooks-test-bulk", "limit": 3},
                "steps": [{"id": "count", "type": "metrics", "names": ["num_atoms"]}],
            },
            tmp_path / "run",
        )
        assert calls == [3]
        assert result.batch.ids == ["Cu", "Si", "NaCl"]
        assert result.batch.crystal_properties["num_atoms"].tolist() == [1.0, 2.0, 2.0]
        assert {r["source"] for r in result.rows} == {"dataset:hooks-test-bulk"}
        assert result.manifest["counts"] == {"inputs": 3, "ok": 3}

        class Duplicate:
            @hookimpl
            def register_datasets(self, register):
                register(DatasetSpec(name="hooks-test-bulk", description="again", load=load))

        with (
            registered(Duplicate(), "test-register-datasets-duplicate"),
            pytest.raises(ConfigError, match="registered twice"),
        ):
            datasets()

    assert "hooks-test-bulk" not in datasets()
    with pytest.raises(ConfigError, match="no dataset 'hooks-test-bulk'"):
        run_pipeline({"source": {"type": "dataset", "name": "hooks-test-bulk"}}, tmp_path / "run2")


def test_hook_register_metrics(tmp_path):
    import torch

    from crystal.registries import MetricSpec, metrics
    from crystal_pipeline import run_pipeline

    def heaviest(batch):
        out = torch.zeros(len(batch), dtype=batch.dtype, device=batch.device)
        return out.scatter_reduce(0, batch.batch, batch.atomic_numbers.to(batch.dtype), "amax", include_self=True)

    def refuses_silicon(batch):
        if (batch.atomic_numbers == 14).any():
            raise StructureError("no silicon, please")
        return batch.num_atoms.to(batch.dtype)

    class MetricsPlugin:
        @hookimpl
        def register_metrics(self, register):
            register(MetricSpec("hooks_test_heaviest_z", "", "largest atomic number in the cell", heaviest))
            register(MetricSpec("hooks_test_no_si", "atoms", "atom count; fails on Si", refuses_silicon))

    inputs = _write_cifs(tmp_path / "inputs")
    with registered(MetricsPlugin(), "test-register-metrics"):
        found = metrics()
        assert {"hooks_test_heaviest_z", "density"} <= set(found)
        assert found["hooks_test_heaviest_z"].unit == ""
        result = run_pipeline(
            {
                "source": {"type": "files", "paths": [str(inputs)]},
                "steps": [{"id": "m", "type": "metrics", "names": ["hooks_test_heaviest_z", "density"]}],
                "sinks": [{"type": "csv", "path": "table.csv", "columns": ["hooks_test_heaviest_z"]}],
            },
            tmp_path / "run",
        )
        z = dict(zip(result.batch.ids, result.batch.crystal_properties["hooks_test_heaviest_z"].tolist(), strict=True))
        assert z == {"Cu": 29.0, "Fe": 26.0, "NaCl": 17.0, "Si": 14.0}
        header = (tmp_path / "run" / "results.csv").read_text(encoding="utf-8").splitlines()[0]
        assert header.endswith(",hooks_test_heaviest_z,density")
        assert "hooks_test_heaviest_z" in (tmp_path / "run" / "table.csv").read_text(encoding="utf-8")

        # a metric failing on one crystal fails that crystal only (the chunk is bisected)
        result = run_pipeline(
            {
                "source": {"type": "files", "paths": [str(inputs)]},
                "steps": [{"id": "m", "type": "metrics", "names": ["hooks_test_no_si"]}],
            },
            tmp_path / "run-fail",
        )
        status = {r["id"]: (r["status"], r["reason"]) for r in result.rows}
        assert status["Si"] == ("failed", "no silicon, please")
        assert sorted(result.batch.ids) == ["Cu", "Fe", "NaCl"]

    with pytest.raises(ConfigError, match="unknown metric 'hooks_test_heaviest_z'"):
        run_pipeline(
            {
                "source": {"type": "files", "paths": [str(inputs)]},
                "steps": [{"id": "m", "type": "metrics", "names": ["hooks_test_heaviest_z"]}],
            },
            tmp_path / "run-unknown",
        )


def test_hook_pipeline_event(tmp_path, caplog):
    from crystal.events import PipelineEvent
    from crystal_pipeline import run_pipeline

    seen: list[PipelineEvent] = []
    raised: list[str] = []

    class Recorder:
        @hookimpl
        def pipeline_event(self, event: PipelineEvent) -> None:
            seen.append(event)

    class Broken:
        @hookimpl
        def pipeline_event(self, event: PipelineEvent) -> None:
            raised.append(event.kind)
            raise RuntimeError("listener bug")

    also_listened: list[str] = []
    run_dir = tmp_path / "run"
    with (
        registered(Broken(), "test-pipeline-event-broken"),
        registered(Recorder(), "test-pipeline-event-recorder"),
        caplog.at_level(logging.WARNING, logger="crystal_pipeline"),
    ):
        result = run_pipeline(
            {
                "source": {"type": "files", "paths": [str(_write_cifs(tmp_path / "inputs"))]},
                "steps": [
                    {"id": "m", "type": "metrics", "names": ["density"]},
                    {"id": "best", "type": "rank", "by": "density", "descending": True, "top": 2},
                ],
            },
            run_dir,
            listeners=[lambda e: also_listened.append(e.kind)],
        )

    assert result.manifest["status"] == "complete"  # the broken listener did not stop the run
    assert result.batch.ids == ["Cu", "Fe"]
    lifecycle = [(e.kind, e.step) for e in seen if e.kind != "progress"]
    assert lifecycle == [
        ("run_start", None),
        ("step_start", "source"),
        ("step_end", "source"),
        ("step_start", "m"),
        ("step_end", "m"),
        ("step_start", "best"),
        ("step_end", "best"),
        ("run_end", None),
    ]
    assert all(e.run_dir == str(run_dir) for e in seen)
    assert seen[2].done == 4 and seen[-2].done == 2  # source read 4 crystals, rank kept 2
    assert raised == [e.kind for e in seen]  # the broken one was called for every event too
    assert also_listened == [e.kind for e in seen]  # explicit listeners get the same events
    assert "hook pipeline_event of plugin test-pipeline-event-broken failed: listener bug" in caplog.text
