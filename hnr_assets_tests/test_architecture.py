"""The layering the project promises, read from the source: no import cycle, a Dagster-free `lib/` with a
sub-package per stage, a thin Dagster layer."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hnr_assets"
STAGES = ("data", "retrieval", "mining", "generation", "training", "evaluation", "runtime")
LIB_MAY_NOT_IMPORT = ("dagster", "hnr_assets.defs", "hnr_assets.resources", "hnr_assets.profiles")
DEFS_FUNCTION_MAX_LINES = 80


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(path: Path) -> list[str]:
    """Every module an `import` names, at module level or inside a function (lazy imports count)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return names


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of `graph` (empty when there is none)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_no_import_cycle_inside_hnr_assets() -> None:
    modules = _modules()
    graph = {name: {t for t in _imports(path) if t in modules and t != name} for name, path in modules.items()}
    assert _cycle(graph) == []


def test_the_cycle_finder_finds_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_lib_imports_neither_dagster_nor_the_layers_above() -> None:
    bad = [
        f"{name} imports {target}"
        for name, path in _modules().items()
        if name.startswith("hnr_assets.lib")
        for target in _imports(path)
        if any(target == banned or target.startswith(banned + ".") for banned in LIB_MAY_NOT_IMPORT)
    ]
    assert not bad


def test_lib_has_a_sub_package_per_stage_and_no_loose_module() -> None:
    lib = PACKAGE / "lib"
    assert sorted(p.name for p in lib.iterdir() if (p / "__init__.py").is_file()) == sorted(STAGES)
    assert [p.name for p in lib.glob("*.py")] == ["__init__.py"]


def test_no_function_in_defs_is_longer_than_80_lines() -> None:
    long = []
    for path in (PACKAGE / "defs").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > DEFS_FUNCTION_MAX_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long
