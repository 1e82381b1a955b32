"""The layout (issue #20, docs/architecture.md): a few modules at the top, subpackages that say
what they may import, no import circles, and a CLI that uses only public modules."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "biasscope"
SUBPACKAGES = sorted(p.parent.name for p in PKG.glob("*/__init__.py"))


def _module_name(path: Path) -> str:
    if path.is_relative_to(ROOT / "cli"):
        parts = ["biasscope", "cli", *path.relative_to(ROOT / "cli").with_suffix("").parts]
    else:
        parts = ["biasscope", *path.relative_to(PKG).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> list[Path]:
    return sorted([*PKG.rglob("*.py"), *(ROOT / "cli").glob("*.py")])


MODULES = {_module_name(p): p for p in _sources()}


def _imports(path: Path) -> set[str]:
    """Every biasscope module a file imports, at the top or inside a function."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                found.add(full if full in MODULES else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _layer(module: str) -> str:
    """The part of the library a module belongs to: a subpackage, or the top level."""
    parts = module.split(".")
    if len(parts) > 2 and parts[1] in SUBPACKAGES:
        return parts[1]
    if len(parts) == 2 and parts[1] in SUBPACKAGES:
        return parts[1]
    return "top" if len(parts) > 1 else "root"


def _allowed(subpackage: str) -> set[str] | None:
    """The ``May import:`` line of a subpackage's docstring."""
    doc = ast.get_docstring(ast.parse((PKG / subpackage / "__init__.py").read_text())) or ""
    match = re.search(r"May import: ([^\n]*)", doc)
    if match is None:
        return None
    names = match.group(1).strip().rstrip(".")
    return set() if names == "nothing" else {n.strip() for n in names.split(",")}


def test_few_modules_at_the_top():
    top = sorted(p.name for p in PKG.glob("*.py"))
    assert len(top) <= 15, top


@pytest.mark.parametrize("subpackage", SUBPACKAGES)
def test_every_subpackage_says_what_it_holds_and_may_import(subpackage):
    doc = ast.get_docstring(ast.parse((PKG / subpackage / "__init__.py").read_text()))
    assert doc and len(doc.split()) > 8, f"{subpackage}: no docstring"
    assert _allowed(subpackage) is not None, f"{subpackage}: no 'May import:' line"


@pytest.mark.parametrize("subpackage", [s for s in SUBPACKAGES if s != "cli"])
def test_imports_follow_the_allowed_directions(subpackage):
    allowed = _allowed(subpackage) | {subpackage, "root"}
    wrong = sorted(
        f"{m} -> {dep}"
        for m, deps in GRAPH.items()
        if _layer(m) == subpackage
        for dep in deps
        if _layer(dep) not in allowed and not (dep.startswith("biasscope.errors"))
    )
    assert not wrong, wrong


def test_the_direction_check_sees_a_wrong_import():
    assert _layer("biasscope.auditing.verdict") == "auditing"
    assert "auditing" not in _allowed("measuring")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    # a package's __init__ that re-exports its modules is not a circle with them
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in GRAPH.items()}
    assert _cycles(graph) == []


def test_the_circle_check_sees_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_cli_imports_only_public_modules():
    private = sorted(
        f"{m} -> {dep}"
        for m, deps in GRAPH.items()
        if m.startswith("biasscope.cli")
        for dep in deps
        if not dep.startswith("biasscope.cli") and any(p.startswith("_") for p in dep.split(".")[1:])
    )
    assert not private, private
