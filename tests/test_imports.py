"""The package's modules form a layered graph: no import cycle, however an import is written.

Every ``import`` of a package module counts, at module level, under ``TYPE_CHECKING`` and
inside functions alike: a lazy import hides a cycle from the interpreter, not from a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

import automl_hiap
import automl_hiap.strategies

PACKAGE = "automl_hiap"
ROOTS = {
    PACKAGE: Path(automl_hiap.__file__).parent,
    f"{PACKAGE}.strategies": Path(automl_hiap.strategies.__file__).parent,
}


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the installed package."""
    found: dict[str, Path] = {}
    for prefix, root in ROOTS.items():
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join([prefix, *parts])
            if prefix == PACKAGE and name.startswith(f"{PACKAGE}.strategies"):
                continue  # the strategies live in their own folder (package-dir mapping)
            found[name] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports (a ``from x import y`` names module x.y when that is
    a module, else x)."""
    is_package = path.name == "__init__.py"
    base = name if is_package else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                anchor = base.split(".")[: len(base.split(".")) - node.level + 1]
                module = ".".join([*anchor, module] if module else anchor)
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                targets.add(sub if sub in known else module)
    resolved = set()
    for target in targets:
        while target and target not in known:  # a name inside a module: the module
            target = target.rpartition(".")[0]
        if target and target != name and not name.startswith(f"{target}."):
            resolved.add(target)  # (a module importing its own package is no cycle)
    return resolved


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_cycle() -> None:
    files = modules()
    graph = {name: imports_of(name, path, set(files)) for name, path in files.items()}
    assert graph[f"{PACKAGE}.search"], "the scan found no imports: it is broken"
    assert cycles(graph) == []


def test_the_cycle_check_sees_a_lazy_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
