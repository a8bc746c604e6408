"""The package's import graph runs one way: entry points -> adapt -> train -> evaluation -> viz ->
runtime -> progress -> models, data -> body -> geometry, safe_io, atomic; no module imports one
above it (lazy imports inside functions included) and no modules import each other in a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

LAYERS = [
    {"adapt"},
    {"train"},
    {"evaluation"},
    {"viz"},
    {"runtime"},
    {"progress"},
    {"models", "data"},
    {"body"},
    {"geometry", "safe_io", "atomic"},
]
RANK = {part: rank for rank, layer in enumerate(LAYERS) for part in layer}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the cemr modules it imports anywhere in its file (resolved to existing modules)."""
    files = {module_name(p): p for p in (REPO / "cemr").rglob("*.py")}
    graph = {}
    for name, path in files.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cemr"):
                targets = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names if alias.name.startswith("cemr")]
            for target in targets:
                if target in files:
                    found.add(target)
        graph[name] = found - {name}
    return graph


def part(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "cemr"


def test_every_package_has_a_layer():
    parts = {part(m) for m in import_graph()} - {"cemr"}
    assert parts <= set(RANK), f"add {sorted(parts - set(RANK))} to LAYERS"


def test_no_module_imports_a_package_above_its_own():
    upward = [
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if part(module) != "cemr"
        and part(target) != part(module)
        and RANK[part(target)] <= RANK[part(module)]
    ]
    assert not upward, "\n".join(upward)


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return path + [module, target]
            if target not in state:
                cycle = visit(target, path + [module])
                if cycle:
                    return cycle
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module, [])
            assert cycle is None, " -> ".join(cycle)
