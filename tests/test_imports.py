"""The package's import graph: no two modules import each other.

Every import counts: at the top of a module, inside a function (a lazy import is still a
dependency, it only moves the failure to run time) and under ``if TYPE_CHECKING:`` (two modules
that need each other's names, even for annotations, are one concept split in two, or a lower
floor reaching up).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module → the modules of the package it imports (``from pkg import sub`` names ``pkg.sub``)."""
    paths = sorted((SRC / "promptbake").rglob("*.py"))
    modules = {module_name(p) for p in paths}
    graph: dict[str, set[str]] = {}
    for path in paths:
        me = module_name(path)
        package = me if path.name == "__init__.py" else me.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            else:
                continue
            edges.update(t for t in targets if t in modules and t != me)
        graph[me] = edges
    return graph


def test_the_walk_sees_the_imports():
    graph = import_graph()
    assert len(graph) > 50
    assert "promptbake.teacher.pool" in graph["promptbake.teacher.online"]  # top-level import
    assert "promptbake.curate.builder" in graph["promptbake.workflows.pipeline"]  # inside a function


def test_no_two_modules_import_each_other():
    graph = import_graph()
    circles = sorted(
        f"{a} <-> {b}" for a, edges in graph.items() for b in edges
        if a < b and a in graph.get(b, set())
    )
    assert circles == []
