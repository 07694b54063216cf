"""The import graph of the repository: no cycles, and each layer imports only the layers below it.

Every ``.py`` file is read with ``ast`` (nothing is imported); imports inside functions count, imports under
``if TYPE_CHECKING:`` do not (they never run: annotations only). Layers, bottom to top::

    utilities                      leaf helpers: import nothing of the project
    metrics                        utilities only
    architectures, datasets, criteria
    compat                         the reference implementation's options, files and weights
    engine                         training, evaluation, inference
    config                         the composition root: schema, command line, checkpoint -> model
    main.py, eval.py, ...          entry points
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SKIPPED_FOLDERS = {"tests", ".git", ".venv", "runs", "data"}

# package -> packages it must not import (at any depth, inside functions too)
FORBIDDEN: dict[str, set[str]] = {
    "metrics": {"criteria", "architectures", "datasets", "engine", "compat", "config"},
    "architectures": {"engine", "compat", "config"},
    "criteria": {"engine", "compat", "config"},
    "datasets": {"engine", "compat", "config"},
    "compat": {"engine", "config"},
    "engine": {"config"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    """Module name -> file, for every Python file outside tests/ (benchmarks and entry points included)."""
    modules = {}
    for path in sorted(REPO_ROOT.rglob("*.py")):
        relative = path.relative_to(REPO_ROOT)
        if relative.parts[0] in SKIPPED_FOLDERS or any(part.startswith(".") for part in relative.parts):
            continue
        modules[_module_name(path)] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, package: str) -> Iterator[str]:
    """Dotted names imported anywhere in `tree` (function bodies included, TYPE_CHECKING blocks left out);
    `from a import b` yields ``a.b`` (a submodule, or a name that resolves to module ``a``)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from (name for child in node.orelse for name in _imports(child, package))
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            yield from (f"{base}.{alias.name}" for alias in node.names)
        yield from _imports(node, package)


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module a dotted import name lands in (None: not the project's)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    modules = project_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(), filename=str(path))
        targets = {_resolve(imported, modules) for imported in _imports(tree, package)}
        graph[name] = {target for target in targets if target is not None and target != name}
    return graph


def _top(module: str) -> str:
    return module.split(".")[0]


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        edges = packages.setdefault(_top(module), set())
        edges.update(_top(target) for target in targets if _top(target) != _top(module))
    return packages


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_graph_is_read(graph) -> None:
    """The reader sees imports inside functions (a guard against a reader that silently finds nothing)."""
    assert "engine.trainer" in graph and "criteria" in graph["engine.trainer"]
    assert "main" in graph and "engine.trainer" in graph["main"]


def test_no_cycle_between_packages(graph) -> None:
    assert cycles(package_graph(graph)) == []


def test_no_cycle_between_files(graph) -> None:
    assert cycles(graph) == []


def test_utilities_import_nothing_of_the_project(graph) -> None:
    offending = {
        module: sorted(t for t in targets if _top(t) != "utilities")
        for module, targets in graph.items()
        if _top(module) == "utilities"
    }
    assert {module: targets for module, targets in offending.items() if targets} == {}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers_import_only_below_themselves(graph, package: str) -> None:
    offending = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if _top(module) == package
        for target in targets
        if _top(target) in FORBIDDEN[package]
    )
    assert offending == []


def test_no_import_by_string(graph) -> None:
    """`importlib.import_module` hides an edge from this graph; the project does not use it."""
    hidden = [
        str(path.relative_to(REPO_ROOT))
        for path in project_modules().values()
        if "import_module(" in path.read_text() and path.parts[-2] != "benchmarks"
    ]
    assert hidden == []


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
