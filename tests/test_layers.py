"""The package's imports point one way: ground → design → config → engine → run → cli.

Every import counts, at module level or inside a function (a function-local import may keep
torch lazy, never hide a cycle); only ``if TYPE_CHECKING:`` blocks are left out, since they never
run. A module may import its own layer or a lower one, and the whole graph has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "edmgrid"

#: Layer of each top-level module or sub-package, bottom first.
LAYERS = {
    "errors": 0,
    "registry": 0,
    "lazy": 0,
    "files": 0,
    "datafiles": 0,
    "design": 1,
    "config": 2,
    "engine": 3,
    "run": 4,
    "api": 5,
    "cli": 6,
    "__main__": 6,
    "__init__": 0,  # __version__; its public names resolve lazily, by importlib and name
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS["__init__" if len(parts) == 1 else parts[1]]


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(path: Path) -> set[str]:
    """The edmgrid modules ``path`` imports at run time (module or function level)."""
    found: set[str] = set()
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("edmgrid"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edmgrid"):
            for a in node.names:  # `from edmgrid.engine import fid` names a module
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in modules else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found - {module_name(path)}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_has_a_layer() -> None:
    for module in graph():
        layer(module)  # a KeyError names a module missing from LAYERS


def test_imports_never_point_up() -> None:
    upward = [
        f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
        for a, targets in graph().items()
        for b in sorted(targets)
        if layer(b) > layer(a)
    ]
    assert not upward, "\n".join(upward)


def test_import_graph_has_no_cycle() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    cycles: list[str] = []

    def walk(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, set())):
            if state.get(nxt) == 1:
                cycles.append(" → ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                walk(nxt, [*stack, nxt])
        state[node] = 2

    for start in edges:
        if start not in state:
            walk(start, [start])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("from edmgrid.run.store import Store\n", "imports edmgrid.run.store"),
        ("def f():\n    from edmgrid.engine.train import train\n", "imports edmgrid.engine.train"),
    ],
)
def test_an_upward_import_is_caught(tmp_path: Path, source: str, message: str) -> None:
    path = PACKAGE / "config" / "_probe_layers.py"
    path.write_text(source)
    try:
        with pytest.raises(AssertionError, match=message):
            test_imports_never_point_up()
    finally:
        path.unlink()
