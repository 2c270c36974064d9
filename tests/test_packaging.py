"""What pyproject promises: Python 3.10 (`requires-python`), and a `test` extra that installs without torch or triton.

This machine has no Python 3.10 (CI's `.ci/run` runs the suite on one where it finds it); these checks hold the code to
3.10 here: every module parses as 3.10 syntax, and a module new in 3.11 (tomllib) is imported only with its fallback.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SOURCES = sorted(p for p in ROOT.rglob("*.py") if not any(part.startswith(".") or part in ("build", "dist")
                                                            for part in p.relative_to(ROOT).parts))
NEW_IN_311 = {"tomllib", "wsgiref.types"}
ENGINE_WHEELS = {"torch", "triton", "transformers", "nvidia-ml-py"}


def _requirement_names(extra: str) -> set[str]:
    requirements = PYPROJECT["project"]["optional-dependencies"][extra]
    return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower() for r in requirements}


def _with_a_fallback(node: ast.AST) -> bool:
    """A `try` that catches ImportError/ModuleNotFoundError, or an `if` on `sys.version_info`."""
    if isinstance(node, ast.Try):
        return any(isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                   for h in node.handlers)
    return isinstance(node, ast.If) and "version_info" in ast.unparse(node.test)


def _unguarded_new_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of each import of a module new in 3.11 outside a block with a fallback."""
    guarded = {n.lineno for block in ast.walk(tree) if _with_a_fallback(block)
               for stmt in block.body for n in ast.walk(stmt) if isinstance(n, ast.stmt)}
    found = []
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        found += [(node.lineno, name) for name in names if name in NEW_IN_311 and node.lineno not in guarded]
    return found


def test_requires_python_is_3_10_and_ruff_holds_the_code_to_it():
    assert PYPROJECT["project"]["requires-python"] == ">=3.10"
    assert PYPROJECT["tool"]["ruff"]["target-version"] == "py310"
    assert any(r.startswith("tomli") and "python_version < '3.11'" in r for r in PYPROJECT["project"]["dependencies"])


def test_the_scan_sees_the_package():
    names = {p.relative_to(ROOT).as_posix() for p in SOURCES}
    assert {"__init__.py", "sim/compare.py", "traces/loaders.py", "tests/test_packaging.py"} <= names


def test_every_module_is_python_3_10():
    problems = []
    for path in SOURCES:
        name = path.relative_to(ROOT).as_posix()
        try:
            tree = ast.parse(path.read_text(), name, feature_version=(3, 10))  # 3.11 syntax (except*) fails here
        except SyntaxError as err:
            problems.append(f"{name}:{err.lineno}: not Python 3.10 syntax: {err.msg}")
            continue
        problems += [f"{name}:{line}: imports {module}, new in Python 3.11, without a fallback"
                     for line, module in _unguarded_new_imports(tree)]
    assert not problems, "\n".join(problems)


def test_the_check_finds_an_unguarded_tomllib_and_accepts_the_fallback():
    assert _unguarded_new_imports(ast.parse("import tomllib\n")) == [(1, "tomllib")]
    assert _unguarded_new_imports(ast.parse("try:\n    import tomllib\nexcept ModuleNotFoundError:\n"
                                            "    import tomli as tomllib\n")) == []


def test_the_test_extra_installs_without_the_engines_wheels():
    test, dev = _requirement_names("test"), _requirement_names("dev")
    assert {"pytest", "hypothesis", "ruff"} <= test and not test & ENGINE_WHEELS
    assert "tokenjoule" in dev and any("test" in r for r in PYPROJECT["project"]["optional-dependencies"]["dev"])
    assert {"torch", "triton"} <= dev
