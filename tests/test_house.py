"""The house rules that keep pipeline/ readable, checked on the source itself (ast, not the code under test).

The layers contract (core -> data -> model -> probe -> lesson -> analysis -> report | scale | explore -> cli) is import-linter's, run by
``make test``; these tests add what it cannot see: imports hidden inside functions, and module size.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
MAX_LINES = 550  # "about 500": a module past this wants splitting


def _function_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    found = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipeline":
                found.append((node.lineno, node.module))
            elif isinstance(node, ast.Import):
                found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "pipeline"]
    return found


def test_the_package_has_modules_to_check():
    assert len(MODULES) > 40 and (PACKAGE / "core" / "io.py") in MODULES


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_pipeline_import_hides_in_a_function(path):
    rel = str(path.relative_to(PACKAGE))
    hidden = _function_imports(path)
    assert not hidden, f"{rel}: imports inside functions {hidden}; import at the top (the layers have no cycles)"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_too_long_to_read(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {n} lines; split it along what it does"


def test_the_checker_sees_a_hidden_import(tmp_path):
    """The oracle itself: a function-level import must be found."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from pipeline.core import io\n    import pipeline.data.labels\n")
    assert _function_imports(f) == [(2, "pipeline.core"), (3, "pipeline.data.labels")]
