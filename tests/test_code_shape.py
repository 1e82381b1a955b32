"""The code's shape (issue #11): no function over 80 lines, no module over 400, in the library
and the CLI; the CLI imports no private module of the library."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.joinpath("biasscope").rglob("*.py"), *ROOT.joinpath("cli").glob("*.py")])
MAX_FUNCTION, MAX_MODULE = 80, 400


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_and_functions_are_small(path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE, f"{path.name}: {len(text.splitlines())} lines"
    long = [
        f"{f.name} ({f.end_lineno - f.lineno + 1} lines)"
        for f in _functions(ast.parse(text))
        if f.end_lineno - f.lineno + 1 > MAX_FUNCTION
    ]
    assert not long, f"{path.name}: " + ", ".join(long)


def test_the_check_sees_a_long_function():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION + 1))
    (f,) = _functions(ast.parse(f"def f():\n{body}\n"))
    assert f.end_lineno - f.lineno + 1 > MAX_FUNCTION
