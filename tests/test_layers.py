"""The layers of the workspace, enforced on the source trees (a small AST check, no install).

Who may import whom (docs/architecture.md draws it)::

    crystal_cli                                   everything
    crystal_pipeline                              core + sim + metrics
    crystal_metrics                               core + sim
    crystal_sim, crystal_train, crystal_xrd       core
    crystal_report                                core (crystal-xrd through its entry point)
    crystal (crystal-core)                        nothing above it, and none of HEAVY
    plugins (plugins/*, the template)             core + the crystal-* distributions they declare

Every ``import`` counts for the layers, also those inside functions (a lazy import is still
a dependency), except under ``if TYPE_CHECKING:`` for third-party packages (annotations need
no install). Every distribution must also declare in its ``pyproject.toml`` ``dependencies``
each ``crystal_*`` package it imports. The cycle check looks at module-level imports only
(those that run at import time): no ``TYPE_CHECKING`` blocks, no imports inside functions.
"""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# import name -> source folder of the distributions with a fixed place in the layers
LAYERED = {
    "crystal": "core/crystal",
    "crystal_sim": "core/sim",
    "crystal_train": "core/train",
    "crystal_metrics": "core/metrics",
    "crystal_report": "core/report",
    "crystal_pipeline": "core/pipeline",
    "crystal_xrd": "plugins/xrd",
    "crystal_cli": "cli",
}
# which crystal_* packages each layer may import (plugins: whatever they declare)
ALLOWED = {
    "crystal": set(),
    "crystal_sim": {"crystal"},
    "crystal_train": {"crystal"},
    "crystal_xrd": {"crystal"},
    "crystal_metrics": {"crystal", "crystal_sim"},
    "crystal_report": {"crystal"},
    # characterize steps reach the xrd representation through entry points, never an import
    "crystal_pipeline": {"crystal", "crystal_sim", "crystal_metrics"},
    "crystal_cli": None,  # anything
}
# optional heavy dependencies that a plugin author must never have to install for crystal-core
HEAVY = {"lightning", "pytorch_lightning", "matplotlib", "scipy", "smact", "typer", "rich"}


@dataclass(frozen=True)
class Import:
    module: str  # absolute dotted name, as written (``from a.b import c`` -> ``a.b``)
    names: tuple[str, ...]  # ``from`` imports: the names imported; plain imports: ()
    where: str  # path:line
    module_level: bool  # runs at import time (not in a function, not under TYPE_CHECKING)
    type_checking: bool


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, module: str, is_package: bool) -> Iterator[Import]:
    """Every import in ``path`` (the module ``module``), relative ones made absolute."""
    rel = path.relative_to(ROOT)

    def visit(node: ast.AST, module_level: bool, type_checking: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(alias.name, (), f"{rel}:{child.lineno}", module_level, type_checking)
            elif isinstance(child, ast.ImportFrom):
                base = module.split(".") if is_package else module.split(".")[:-1]
                if child.level:
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join([*base, *([child.module] if child.module else [])])
                else:
                    target = child.module or ""
                names = tuple(a.name for a in child.names)
                yield Import(target, names, f"{rel}:{child.lineno}", module_level, type_checking)
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                yield from visit(child, False, type_checking)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    yield from visit(ast.Module(body=[stmt], type_ignores=[]), False, True)
                for stmt in child.orelse:
                    yield from visit(ast.Module(body=[stmt], type_ignores=[]), module_level, type_checking)
            else:
                yield from visit(child, module_level, type_checking)

    yield from visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), True, False)


@cache
def _file_imports(path: Path, module: str, is_package: bool) -> tuple[Import, ...]:
    return tuple(_imports(path, module, is_package))


@dataclass
class Distribution:
    folder: Path  # holds pyproject.toml and src/
    name: str  # distribution name
    packages: dict[str, Path]  # import name -> package folder
    dependencies: set[str]  # required, normalised distribution names
    extras: set[str]  # optional-dependencies other than the test extras

    def modules(self) -> Iterator[tuple[str, Path, bool]]:
        """``(dotted name, file, is a package __init__)`` of every module it ships."""
        for folder in self.packages.values():
            for path in sorted(folder.rglob("*.py")):
                parts = path.relative_to(folder.parent).with_suffix("").parts
                is_package = parts[-1] == "__init__"
                yield ".".join(parts[:-1] if is_package else parts), path, is_package


def _normalise(requirement: str) -> str:
    name = re.split(r"[\s<>=!~;\[(@]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def distributions() -> tuple[Distribution, ...]:
    folders = [ROOT / f for f in LAYERED.values()]
    folders += [p.parent for p in sorted((ROOT / "plugins").glob("*/pyproject.toml"))]
    folders += [ROOT / "docs" / "plugin-template"]
    found = []
    for folder in dict.fromkeys(folders):
        project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
        src = folder / "src"
        packages = {p.name: p for p in sorted(src.iterdir()) if (p / "__init__.py").is_file()}
        extras = {
            _normalise(r)
            for group, reqs in project.get("optional-dependencies", {}).items()
            if group != "test"
            for r in reqs
        }
        deps = {_normalise(r) for r in project.get("dependencies", [])}
        found.append(Distribution(folder, project["name"], packages, deps, extras))
    return tuple(found)


def _top_level_packages() -> dict[str, Distribution]:
    return {pkg: d for d in distributions() for pkg in d.packages}


def _distribution_id(d: Distribution) -> str:
    return d.folder.relative_to(ROOT).as_posix()


def test_every_layered_package_is_found():
    owners = _top_level_packages()
    for pkg, folder in LAYERED.items():
        assert pkg in owners, f"{pkg} not found under {folder}/src"
        assert owners[pkg].folder == ROOT / folder
    plugins = {p for p in owners if p not in LAYERED}
    assert {"crystal_example", "crystal_chgnet", "crystal_xrdcnn"} <= plugins


@pytest.mark.parametrize("dist", distributions(), ids=_distribution_id)
def test_layers(dist: Distribution):
    """No package imports one above it; core imports no battery, CLI, plugin or HEAVY package."""
    owners = _top_level_packages()
    problems = []
    for module, path, is_package in dist.modules():
        pkg = module.split(".")[0]
        allowed = ALLOWED.get(
            pkg, {"crystal"} | {p for p, d in owners.items() if _normalise(d.name) in dist.dependencies}
        )
        for imp in _file_imports(path, module, is_package):
            top = imp.module.split(".")[0]
            if top == pkg:
                continue
            if top.startswith("crystal") and allowed is not None and top not in allowed:
                problems.append(f"{imp.where}: {pkg} may not import {imp.module} (allowed: {sorted(allowed)})")
            if pkg == "crystal" and top in HEAVY and not imp.type_checking:
                problems.append(f"{imp.where}: crystal-core may not import {imp.module} (an optional dependency)")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("dist", distributions(), ids=_distribution_id)
def test_imported_distributions_are_declared(dist: Distribution):
    """Each crystal_* package imported is declared in pyproject.toml: in ``dependencies``, or,
    for imports inside functions only, in a non-test extra."""
    owners = _top_level_packages()
    problems = []
    for module, path, is_package in dist.modules():
        for imp in _file_imports(path, module, is_package):
            top = imp.module.split(".")[0]
            if top not in owners or owners[top] is dist:
                continue
            needed = _normalise(owners[top].name)
            declared = dist.dependencies if imp.module_level else dist.dependencies | dist.extras
            if needed not in declared:
                problems.append(f"{imp.where}: imports {imp.module} but {dist.name} does not depend on {needed}")
    assert not problems, "\n".join(problems)


def _module_graph() -> dict[str, dict[str, str]]:
    """module -> {module it imports at import time: where}, over every distribution."""
    files = {module: (path, is_package) for d in distributions() for module, path, is_package in d.modules()}
    graph: dict[str, dict[str, str]] = {}
    for module, (path, is_package) in files.items():
        edges = graph.setdefault(module, {})
        for imp in _file_imports(path, module, is_package):
            if not imp.module_level:
                continue
            # ``from pkg import sub`` imports the module pkg.sub when there is one
            targets = [f"{imp.module}.{n}" for n in imp.names if f"{imp.module}.{n}" in files]
            if imp.module in files and len(targets) < len(imp.names or ("",)):
                targets.append(imp.module)
            for target in targets:
                if target != module:
                    edges.setdefault(target, imp.where)
    return graph


def _cycles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph.get(child, {}))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _describe(component: list[str], graph: dict[str, dict[str, str]]) -> str:
    members = set(component)
    edges = [f"  {a} -> {b} ({graph[a][b]})" for a in component for b in graph[a] if b in members]
    return "cycle between " + ", ".join(component) + ":\n" + "\n".join(edges)


def test_no_import_cycles():
    """No two modules import each other, directly or through others, at import time."""
    graph = _module_graph()
    assert len(graph) > 100
    cycles = _cycles(graph)
    assert not cycles, "\n".join(_describe(c, graph) for c in cycles)


def test_the_checks_catch_what_they_should(tmp_path: Path):
    """The AST walk sees what it must (and only that): a guard against a vacuous test."""
    src = tmp_path / "m.py"
    src.write_text(
        "from typing import TYPE_CHECKING\n"
        "import crystal_sim.relax\n"
        "from . import sibling\n"
        "if TYPE_CHECKING:\n    import typer\n"
        "def f():\n    import scipy\n"
    )
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        found = {i.module: (i.module_level, i.type_checking) for i in _imports(src, "pkg.m", False)}
    finally:
        ROOT = saved
    assert found == {
        "typing": (True, False),
        "crystal_sim.relax": (True, False),
        "pkg": (True, False),
        "typer": (False, True),
        "scipy": (False, False),
    }
    assert _cycles({"a": {"b": ""}, "b": {"c": ""}, "c": {"a": ""}, "d": {"a": ""}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b": ""}, "b": {}}) == []
