"""Who may import whom: the layering rules of docs/architecture.md, checked on the source.

Every project .py file is parsed with `ast`; every import counts, at module level and
inside functions alike (a function-local import that dodges a cycle at import time is
still a cycle in the design). The rules are data, at the top, so the docs can quote them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# --- the rules ---------------------------------------------------------------------------
# The project's own top-level packages: imports between their modules form the graph.
PACKAGES = (
    "accounts",
    "modules",
    "jobs",
    "builds",
    "clones",
    "consoles",
    "ruddervirt",
    "bench",
    "tools",
)

# Rule (a): no cycle between any two modules of PACKAGES.

# Rule (b): the core is plain Python. These packages import no Django app and not Django
# (nor the Django-bound libraries below), and none of the project layer (settings, urls,
# runtime, ...). What they may import of ruddervirt besides the core: CORE_HELPERS.
CORE = (
    "ruddervirt.engine",
    "ruddervirt.guest",
    "ruddervirt.hypervisor",
    "ruddervirt.manifest",
    "ruddervirt.rubric",
    "ruddervirt.spec",
)
CORE_HELPERS = (
    "ruddervirt.fetchpolicy",
    "ruddervirt.hostfiles",
    "ruddervirt.proc",
    "ruddervirt.programs",
)
CORE_FORBIDDEN_LIBRARIES = ("django", "channels", "django_rq", "rq", "daphne")

# Rule (c): the Django apps, lowest first. An app may import the modules of the apps before
# it (their models, services, refs, ...), never those of an app after it.
APP_ORDER = ("accounts", "modules", "jobs", "builds", "clones", "consoles")


# --- the checker ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Import:
    """`source` (a project module) imports `target` (a dotted name) at `line`."""

    source: str
    target: str
    line: int


def project_modules(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Every module of `packages` under `root`, by dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if "migrations" in parts:
                continue  # generated; they name models by string
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The dotted module `node` imports from, relative levels resolved against `module`."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(module: str, path: Path) -> Iterator[Import]:
    """Every name `module` imports, wherever the import statement is (functions included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, is_package)
            for alias in node.names:
                yield Import(module, f"{base}.{alias.name}" if base else alias.name, node.lineno)


def resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The project module `target` names (`from x import name` may name a module or an
    object in it: the longest dotted prefix that is a module), or None outside the project."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        if name in modules:
            return name
    return None


def import_graph(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, list[Import]]:
    """For each project module, its imports of other project modules."""
    modules = project_modules(root, packages)
    graph: dict[str, list[Import]] = {}
    for module, path in modules.items():
        edges = []
        for imp in imports_of(module, path):
            target = resolve(imp.target, modules)
            if target is not None and target != module:
                edges.append(Import(module, target, imp.line))
        graph[module] = edges
    return graph


def cycles(graph: dict[str, list[Import]]) -> list[list[str]]:
    """One cycle path (first module repeated at the end) per strongly connected group."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for edge in graph.get(node, ()):
            if edge.target not in index:
                visit(edge.target)
                low[node] = min(low[node], low[edge.target])
            elif edge.target in on_stack:
                low[node] = min(low[node], index[edge.target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_path_within(graph, group) for group in groups]


def _path_within(graph: dict[str, list[Import]], group: set[str]) -> list[str]:
    """A shortest cycle through the group's first module, staying inside the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for edge in graph[node]:
                if edge.target == start:
                    return [*paths[node], start]
                if edge.target in group and edge.target not in paths:
                    paths[edge.target] = [*paths[node], edge.target]
                    following.append(edge.target)
        frontier = following
    raise AssertionError(f"{sorted(group)} is not a cycle")


def _within(module: str, prefixes: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def core_violations(root: Path, packages: Iterable[str] = PACKAGES) -> list[str]:
    """Imports by core modules of anything but the core, its helpers and non-Django code."""
    modules = project_modules(root, packages)
    found = []
    for module, path in modules.items():
        if not _within(module, CORE):
            continue
        for imp in imports_of(module, path):
            target = resolve(imp.target, modules) or imp.target
            own = target.split(".")[0] in PACKAGES
            if _within(target, CORE_FORBIDDEN_LIBRARIES) or (
                own and not _within(target, CORE + CORE_HELPERS) and target != "ruddervirt"
            ):
                found.append(f"{module}:{imp.line} imports {imp.target}")
    return found


def app_order_violations(graph: dict[str, list[Import]]) -> list[str]:
    """Imports of a higher app by a lower one (APP_ORDER)."""
    rank = {app: i for i, app in enumerate(APP_ORDER)}
    found = []
    for edges in graph.values():
        for edge in edges:
            source, target = edge.source.split(".")[0], edge.target.split(".")[0]
            if source in rank and target in rank and rank[target] > rank[source]:
                found.append(f"{edge.source}:{edge.line} imports {edge.target}")
    return found


def problems(root: Path, packages: Iterable[str] = PACKAGES) -> list[str]:
    """Every broken rule under `root`, one line each."""
    graph = import_graph(root, packages)
    found = ["cycle: " + " -> ".join(path) for path in cycles(graph)]
    found += ["core imports outside the core: " + v for v in core_violations(root, packages)]
    found += ["lower app imports a higher one: " + v for v in app_order_violations(graph)]
    return found


# --- the tests -----------------------------------------------------------------------------
PROJECT = Path(__file__).resolve().parent.parent


def test_the_project_keeps_its_layers():
    assert problems(PROJECT) == []


def test_every_core_package_and_app_exists():
    modules = project_modules(PROJECT)
    for name in (*CORE, *CORE_HELPERS, *APP_ORDER):
        assert name in modules, f"{name} is named by a rule but is not a module"


def _plant(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_planted_cycle_core_import_and_upward_app_import_are_each_reported(tmp_path):
    _plant(
        tmp_path,
        {
            "ruddervirt/__init__.py": "",
            "ruddervirt/engine/__init__.py": "",
            "ruddervirt/engine/a.py": "from . import b\n",
            "ruddervirt/engine/b.py": "def f():\n    from ruddervirt.engine.c import g\n",
            "ruddervirt/engine/c.py": "import ruddervirt.engine.a\n",
            "ruddervirt/spec/__init__.py": "def load():\n    from builds.models import Build\n",
            "ruddervirt/guest/__init__.py": "from django.conf import settings\n",
            "builds/__init__.py": "",
            "builds/models.py": "from clones import services\n",
            "clones/__init__.py": "",
            "clones/services.py": "from builds.models import Build\n",
        },
    )
    found = problems(tmp_path, ("ruddervirt", "builds", "clones"))
    assert found == [
        "cycle: builds.models -> clones.services -> builds.models",
        "cycle: ruddervirt.engine.a -> ruddervirt.engine.b -> ruddervirt.engine.c"
        " -> ruddervirt.engine.a",
        "core imports outside the core: ruddervirt.guest:1 imports django.conf.settings",
        "core imports outside the core: ruddervirt.spec:2 imports builds.models.Build",
        "lower app imports a higher one: builds.models:1 imports clones.services",
    ]


@pytest.mark.parametrize(
    ("text", "is_package", "expected"),
    [
        ("from . import x", False, "pkg.sub.x"),
        ("from .. import x", False, "pkg.x"),
        ("from .mod import x", True, "pkg.sub.mod.x"),
    ],
)
def test_relative_imports_resolve_against_the_importing_module(
    tmp_path, text, is_package, expected
):
    path = tmp_path / ("__init__.py" if is_package else "here.py")
    path.write_text(text + "\n")
    module = "pkg.sub" if is_package else "pkg.sub.here"
    assert [imp.target for imp in imports_of(module, path)] == [expected]
