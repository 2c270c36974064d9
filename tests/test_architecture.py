"""The import rules of the package (STYLE.md section 1), checked on the source with `ast`, not by importing it.

- kernels never imports calibrate or sim; traces imports no other subpackage (anywhere, lazy imports included);
- sim and traces never import torch at module level (simulating works on a laptop);
- no private name (`_x`) is imported from another module;
- module-level imports form no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUBPACKAGES = ("traces", "kernels", "calibrate", "sim")

# Known violations being fixed on other branches of the restructure; the integrator empties this after merging.
ALLOWED_PRIVATE_IMPORTS: set[tuple[str, str, str]] = set()
ALLOWED_CYCLES: set[frozenset[str]] = set()


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(("tokenjoule", *parts))


def _package_files() -> dict[str, Path]:
    files = [p for p in ROOT.glob("*.py") if p.name != "setup.py"]
    for sub in SUBPACKAGES:
        files += (ROOT / sub).rglob("*.py")
    return {_module_name(p): p for p in sorted(files)}


MODULES = _package_files()
TREES = {name: ast.parse(path.read_text(), filename=str(path)) for name, path in MODULES.items()}


def _imports(tree: ast.Module, module: str, top_level_only: bool) -> list[tuple[str, str | None]]:
    """(imported module, imported name or None) for each import in `tree` (of `module`)."""
    nodes = _top_level_nodes(tree) if top_level_only else list(ast.walk(tree))
    found: list[tuple[str, str | None]] = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{module}: relative import; the package uses absolute imports"
            found += [(node.module or "", alias.name) for alias in node.names]
    return found


def _top_level_nodes(tree: ast.Module) -> list[ast.stmt]:
    """Statements run on import: the module body, and the bodies of its top-level if/try blocks (not functions)."""
    out: list[ast.stmt] = []
    todo = list(tree.body)
    while todo:
        node = todo.pop(0)
        out.append(node)
        if isinstance(node, ast.If) and not _is_type_checking(node.test):
            todo += node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "tokenjoule" and parts[1] in SUBPACKAGES else None


def _target(imported: str, name: str | None) -> str | None:
    """The package module an import loads (`from a.b import c` is module a.b.c when that is a module)."""
    if name is not None and f"{imported}.{name}" in MODULES:
        return f"{imported}.{name}"
    return imported if imported in MODULES else None


def test_the_scan_sees_every_subpackage():
    assert {_subpackage(m) for m in MODULES} >= set(SUBPACKAGES)
    assert "tokenjoule.calibrate.pipeline" in MODULES and "tokenjoule.cli" in MODULES


@pytest.mark.parametrize(("package", "forbidden"), [("kernels", {"calibrate", "sim"}),
                                                     ("traces", {"kernels", "calibrate", "sim"})])
def test_lower_layers_never_import_upper_ones(package, forbidden):
    bad = [(module, imported) for module, tree in TREES.items() if _subpackage(module) == package
           for imported, _ in _imports(tree, module, top_level_only=False) if _subpackage(imported) in forbidden]
    assert not bad, f"{package} must not import {sorted(forbidden)}: {bad}"


@pytest.mark.parametrize("package", ["sim", "traces"])
def test_simulating_never_imports_torch_at_module_level(package):
    bad = [module for module, tree in TREES.items() if _subpackage(module) == package
           for imported, _ in _imports(tree, module, top_level_only=True) if imported.split(".")[0] == "torch"]
    assert not bad, f"these {package} modules import torch on import: {bad}"


def test_no_private_name_is_imported_from_another_module():
    bad = {(module, imported, name) for module, tree in TREES.items()
           for imported, name in _imports(tree, module, top_level_only=False)
           if name and name.startswith("_") and not name.startswith("__") and imported.startswith("tokenjoule")
           and imported != module}
    assert bad - ALLOWED_PRIVATE_IMPORTS == set(), "make these public in the module whose job they are"
    assert ALLOWED_PRIVATE_IMPORTS <= bad, f"fixed, so drop from the allow-list: {ALLOWED_PRIVATE_IMPORTS - bad}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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


def test_no_module_level_import_cycles():
    graph = {module: {t for imported, name in _imports(tree, module, top_level_only=True)
                      if (t := _target(imported, name)) is not None and t != module}
             for module, tree in TREES.items()}
    cycles = [c for c in _cycles(graph) if frozenset(c) not in ALLOWED_CYCLES]
    assert not cycles, f"module-level import cycles: {cycles}"
