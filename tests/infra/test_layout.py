"""The package's layout: rooms without import cycles, no training code at query time, short
functions, short bench scripts (docs/architecture.md says what may import what)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "visualsearch"
TOP_LEVEL = {"__init__", "apps", "checks", "conf", "models"}
MAX_FUNCTION_LINES = 60
MAX_BENCH_FILE_LINES = 400


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    """``{dotted name: path}`` of the package's modules (migrations left out)."""
    found = {}
    for path in root.rglob("*.py"):
        if "migrations" in path.relative_to(root).parts:
            continue
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def import_graph(found: dict[str, Path]) -> dict[str, set[str]]:
    """Every import inside the package, at module level or inside functions alike."""

    def resolve(name: str) -> str | None:
        while name and name not in found:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in found}
    for name, path in found.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                module = resolve(target)
                if module and module != name:
                    graph[name].add(module)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
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


def test_no_import_cycles_inside_the_package():
    assert cycles(import_graph(modules())) == []


def test_the_cycle_finder_finds_a_new_cycle(tmp_path):
    """The check above would fail on a cycle: two modules that import each other."""
    package = tmp_path / "visualsearch"
    (package / "query").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "query" / "__init__.py").write_text("")
    (package / "query" / "a.py").write_text("def f():\n    from visualsearch.query import b\n")
    (package / "query" / "b.py").write_text("from visualsearch.query.a import f\n")
    found = modules(package)
    assert cycles(import_graph(found)) == [["visualsearch.query.a", "visualsearch.query.b"]]


def test_conf_is_a_leaf():
    graph = import_graph(modules())
    assert graph["visualsearch.conf"] == set()


@pytest.mark.parametrize("room", ["visualsearch.query", "visualsearch.ingest"])
def test_queries_and_ingestion_never_import_training_code(room):
    graph = import_graph(modules())
    reachable, todo = set(), [name for name in graph if name.startswith(room)]
    while todo:
        name = todo.pop()
        if name not in reachable:
            reachable.add(name)
            todo.extend(graph[name])
    assert not {name for name in reachable if name.startswith("visualsearch.learning")}


def test_only_the_django_entry_points_are_top_level_modules():
    top = {path.stem for path in PACKAGE.glob("*.py")}
    assert top == TOP_LEVEL


def test_no_function_over_60_lines():
    long = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines}")
    assert long == []


def test_no_bench_file_over_400_lines():
    long = [
        f"{path.relative_to(ROOT)}: {count}"
        for path in sorted((ROOT / "bench").rglob("*.py"))
        if (count := len(path.read_text().splitlines())) > MAX_BENCH_FILE_LINES
    ]
    assert long == []


def test_the_public_api_is_importable_from_the_package():
    import visualsearch
    from visualsearch.query import similar_products

    assert visualsearch.similar_products is similar_products
    for name in visualsearch.__all__:
        assert getattr(visualsearch, name) is not None
