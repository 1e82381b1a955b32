"""The examples in the public docstrings run (doctest): every public module of the library
(not ``_private`` ones, not the CLI) is searched, and each docstring that shows an example
must show it as a runnable ``>>>`` session."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil
import re

import pytest
import torch

import biasscope


def _public_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(biasscope.__path__, "biasscope."):
        parts = info.name.split(".")
        if any(p.startswith("_") for p in parts[1:]) or parts[1] == "cli":
            continue
        names.append(info.name)
    return sorted(names)


MODULES = _public_modules()


def _tests(module_name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    return [t for t in finder.find(module) if t.examples]


def _all_tests() -> list:
    return [pytest.param(t, id=t.name) for name in MODULES for t in _tests(name)]


def test_there_are_public_modules_and_examples() -> None:
    assert "biasscope.fixing.regularizer" in MODULES and "biasscope.runtime.options" in MODULES
    assert len(_all_tests()) >= 3


@pytest.mark.parametrize("test", _all_tests())
def test_docstring_example_runs(test: doctest.DocTest) -> None:
    torch.set_num_threads(1)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    result = runner.run(test, out=lambda text: print(text, end=""))
    assert result.failed == 0, f"{test.name}: {result.failed} of {result.attempted} examples failed (output above)"


#: a docstring section that shows an example: "Example:", "Examples::", "Example (...):"
_EXAMPLE_HEADING = re.compile(r"^\s*Examples?\b[^\n]*:\s*$", re.M)


@pytest.mark.parametrize("module_name", MODULES)
def test_examples_are_doctests(module_name: str) -> None:
    """A docstring with an example section shows it as ``>>>`` lines, so that it is run."""
    module = importlib.import_module(module_name)
    stale = []
    for name, obj in vars(module).items():
        if getattr(obj, "__module__", None) != module_name or name.startswith("_"):
            continue
        for member in [obj, *(vars(obj).values() if inspect.isclass(obj) else [])]:
            doc = inspect.getdoc(member) if callable(member) or inspect.isclass(member) else None
            if doc and _EXAMPLE_HEADING.search(doc) and ">>>" not in doc:
                stale.append(f"{name}")
    assert not stale, f"{module_name}: examples that are not doctests in {stale}"
