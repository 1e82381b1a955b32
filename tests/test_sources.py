"""biasscope.io._sources: factory strings. Whatever a factory does (sys.exit, Ctrl-C, a crash)
ends as an error naming it, and builtins (os.abort, sys.exit) are refused before any call."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

import _loading_factories as fx  # noqa: E402,F401

from biasscope.io._sources import call_factory  # noqa: E402
from biasscope.io.data import load_data  # noqa: E402
from biasscope.errors import DataLoadError, ModelLoadError  # noqa: E402
from biasscope.io.loading import load_model  # noqa: E402


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "w.pt"
    torch.save(nn.Linear(6, 3).state_dict(), path)
    return path


@pytest.mark.parametrize(
    ("factory", "needle"),
    [
        ("_loading_factories:make_exit", "SystemExit (sys.exit(0))"),
        ("_loading_factories:make_interrupt", "KeyboardInterrupt"),
        ("_loading_factories:make_raises", "ValueError: weights directory not configured"),
    ],
)
def test_model_factory_escapes_become_errors(weights: Path, factory: str, needle: str) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_model(weights, factory=factory)
    message = str(info.value)
    assert f"The model factory {factory!r} raised" in message
    assert needle in message


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ("_loading_factories:data_exit", "The data factory '_loading_factories:data_exit' raised SystemExit (sys.exit(3))"),
        ("_loading_factories:make_exiting_dataset", "raised SystemExit"),
    ],
)
def test_data_factory_escapes_become_errors(source: str, needle: str) -> None:
    with pytest.raises(DataLoadError) as info:
        load_data(source)
    assert needle in str(info.value)
    assert "_loading_factories" in str(info.value)


def test_factory_file_that_exits_on_import(tmp_path: Path, weights: Path) -> None:
    (tmp_path / "quits.py").write_text("import sys\nsys.exit(0)\n")
    with pytest.raises(ModelLoadError, match=r"raised SystemExit \(sys.exit\(0\)\)") as info:
        load_model(weights, factory=f"{tmp_path / 'quits.py'}:make")
    assert "quits.py" in str(info.value)


@pytest.mark.parametrize(
    "spec", ["sys:exit", "os:abort", "builtins:print", "_loading_factories:CALLABLE_INSTANCE"]
)
def test_non_python_functions_refused_up_front(weights: Path, spec: str) -> None:
    with pytest.raises(ModelLoadError, match="not a Python function or class") as info:
        load_model(weights, factory=spec)
    assert spec in str(info.value)
    with pytest.raises(DataLoadError, match="not a Python function or class"):
        load_data(spec)


def test_classes_and_methods_are_factories(weights: Path) -> None:
    built = call_factory("_loading_factories:Builder", error=ModelLoadError, what="model")
    assert isinstance(built, fx.Builder)
    loaded = load_model(weights, factory="_loading_factories:Builder.build")
    assert isinstance(loaded.module, nn.Linear)


@pytest.mark.slow  # a fresh Python process that imports torch
def test_cli_like_process_survives_abort_and_exit_factories(tmp_path: Path, weights: Path) -> None:
    """In a fresh process (os.abort would kill this one): each builtin is refused with an
    error, and the process reaches its end (exit 0 from the script, not 134 or sys.exit's)."""
    script = textwrap.dedent(f"""
        from biasscope.io.data import load_data
        from biasscope.errors import BiasscopeError
        from biasscope.io.loading import load_model
        for call in (lambda: load_model({str(weights)!r}, factory="os:abort"),
                     lambda: load_data("os:abort"), lambda: load_data("sys:exit")):
            try:
                call()
            except BiasscopeError as exc:
                print("refused:", str(exc)[:40])
        print("finished")
    """)
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("refused:") == 3
    assert res.stdout.rstrip().endswith("finished")
