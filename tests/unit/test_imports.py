"""The package's imports run one way: geometry/io -> steps -> workflow glue -> cli/bench, no circles.

The graph is read from the source with ``ast`` (top-level and function-level imports alike: a
function-level import hides a circle from Python but not from a reader), over msimaging.* only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "msimaging"


def _modules(package: Path = PACKAGE) -> dict[str, Path]:
    mods = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """{module: msimaging modules it imports}, ``from msimaging import io`` counted as msimaging.io."""
    mods = _modules(package)
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names}
        resolved = set()
        for t in targets:
            while t and t not in mods:
                t = t.rpartition(".")[0]
            if t and t != name:
                resolved.add(t)
        graph[name] = resolved
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_reader_sees_function_level_imports_and_circles(tmp_path):
    pkg = tmp_path / "msimaging"
    (pkg / "bench").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "bench" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from msimaging import b\n")
    (pkg / "b.py").write_text("def f():\n    from msimaging.c import g\n")
    (pkg / "c.py").write_text("import msimaging.a\n")
    (pkg / "bench" / "x.py").write_text("from .. import a\nfrom . import y\n")
    (pkg / "bench" / "y.py").write_text("")
    graph = import_graph(pkg)
    assert graph["msimaging.b"] == {"msimaging.c"}
    assert graph["msimaging.bench.x"] == {"msimaging.a", "msimaging.bench.y"}
    assert cycles(graph) == [["msimaging.a", "msimaging.b", "msimaging.c"]]


def test_the_package_has_no_import_cycles():
    graph = import_graph()
    assert {"msimaging.preprocess", "msimaging.register", "msimaging.outcome", "msimaging.recovery"} <= set(graph)
    assert cycles(graph) == []


@pytest.mark.parametrize("low", ["msimaging.geometry", "msimaging.io"])
def test_geometry_and_io_are_the_bottom_layer(low):
    assert import_graph()[low] <= {"msimaging", "msimaging.geometry"}


def test_only_the_entry_points_sit_on_top():
    """Nothing imports the CLI, and only the benchmarks and the CLI import the benchmarks."""
    graph = import_graph()
    for name, deps in graph.items():
        assert "msimaging.cli" not in deps, name
        if not name.startswith("msimaging.bench") and name != "msimaging.cli":
            assert not any(d.startswith("msimaging.bench") for d in deps), (name, deps)
