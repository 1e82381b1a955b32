"""Where models and data come from: ``"package.module:function"`` / ``"file.py:function"``
factory strings, and sha256 fingerprints of files and directories."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from ..runtime._files import check_regular
from ..errors import BiasscopeError, DataLoadError

__all__ = ["check_regular", "fingerprint", "split_spec", "call_factory", "first_line", "describe_obj"]


def _sha256(path: Path) -> str:
    """sha256 of a file, or of a directory as the sorted (relative name, bytes) pairs: each
    file contributes ``name \\0 len(bytes) as 8 little-endian bytes, bytes``."""
    h = hashlib.sha256()
    if path.is_dir():
        files = sorted(
            (p.relative_to(path).as_posix(), p) for p in path.rglob("*") if p.is_file()
        )
        for rel, p in files:
            h.update(rel.encode("utf-8", "surrogateescape") + b"\0" + p.stat().st_size.to_bytes(8, "little"))
            _hash_file_into(h, p)
    else:
        _hash_file_into(h, path)
    return h.hexdigest()


def _hash_file_into(h: Any, path: Path) -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def fingerprint(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file or a directory (same digest as :attr:`LoadedModel.sha256`)."""
    p = Path(path)
    check_regular(p, what="input", error=DataLoadError, folder_ok=True)
    if not p.exists():
        raise DataLoadError(
            f"Cannot fingerprint {str(p)!r}: no such file or directory. Check the path."
        )
    return _sha256(p)




def split_spec(spec: str) -> tuple[str, str] | None:
    """``("target", "attr.path")`` for a ``"target:attr"`` string, else None."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        return None
    if not all(part.isidentifier() for part in attr.split(".")):
        return None
    return target, attr


def _is_file_target(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


# exceptions a user factory may raise that are not Exceptions, and which must not end the
# run as if it succeeded (sys.exit(0) would exit 0 with nothing written)
_ESCAPES = (Exception, SystemExit, KeyboardInterrupt, GeneratorExit)


def _escape_name(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit (sys.exit({exc.code!r}))"
    return type(exc).__name__


def _import_callable(spec: str, *, error: type[BiasscopeError], what: str) -> Callable[..., Any]:
    """Import ``"package.module:function"`` or ``"path/to/file.py:function"``.

    Args:
        spec: the factory string.
        error: the error class to raise (ModelLoadError or DataLoadError).
        what: what the factory builds, for messages ("model", "data").
    """
    form = (
        f"Write it as 'package.module:function' (an importable module) or "
        f"'path/to/file.py:function'; the function takes no arguments and returns the {what}."
    )
    if not isinstance(spec, str):
        raise error(f"The {what} factory must be a string, got {type(spec).__name__}. {form}")
    parts = split_spec(spec)
    if parts is None:
        raise error(f"The {what} factory {spec!r} is malformed. {form}")
    target, attr = parts
    if _is_file_target(target):
        module = _import_file(target, spec=spec, error=error, what=what)
    else:
        module = _import_module(target, attr, spec=spec, error=error, what=what, form=form)
    obj: Any = module
    for name in attr.split("."):
        if not hasattr(obj, name):
            available = sorted(
                n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
            )
            raise error(
                f"The {what} factory {spec!r}: {target!r} has no attribute {attr!r}. "
                f"Callables it defines: {', '.join(available) or 'none'}. Fix the name after ':'."
            )
        obj = getattr(obj, name)
    _check_factory_object(obj, spec=spec, attr=attr, error=error, what=what)
    return obj


def _check_factory_object(
    obj: Any, *, spec: str, attr: str, error: type[BiasscopeError], what: str
) -> None:
    """A factory must be a Python function (or method) or a class: builtins such as
    ``os.abort`` or ``sys.exit`` are refused before anything is called."""
    if not callable(obj):
        raise error(
            f"The {what} factory {spec!r} names {attr!r}, a {type(obj).__name__}, which is not "
            f"callable. Point it at a function that takes no arguments and returns the {what}."
        )
    function = getattr(obj, "__func__", obj)  # a bound or class method: its function
    if inspect.isfunction(function) or inspect.isclass(obj):
        return
    kind = "a built-in function" if inspect.isbuiltin(obj) else f"a {type(obj).__name__} object"
    raise error(
        f"The {what} factory {spec!r} names {attr!r}, {kind}, not a Python function or class. "
        f"A factory must be a Python function (or class) that takes no arguments and returns "
        f"the {what}; write one, e.g. 'my_project/build.py:make_{what}'."
    )


def _import_module(
    target: str, attr: str, *, spec: str, error: type[BiasscopeError], what: str, form: str
) -> Any:
    if not all(p.isidentifier() for p in target.split(".")):
        raise error(
            f"The {what} factory {spec!r} is malformed: {target!r} is not a module name. {form}"
        )
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (exc.name == target or target.startswith(exc.name + ".")):
            raise error(
                f"The {what} factory {spec!r} names module {target!r}, which cannot be imported "
                f"({exc}). Install the package or run from the directory that holds it (it must "
                f"be on PYTHONPATH), or give a file path instead: 'path/to/file.py:{attr}'."
            ) from exc
        raise error(
            f"Importing module {target!r} for the {what} factory {spec!r} failed: {exc}. "
            f"Install the missing dependency {exc.name!r} or fix the import in {target!r}."
        ) from exc
    except _ESCAPES as exc:
        raise error(
            f"Importing module {target!r} for the {what} factory {spec!r} raised "
            f"{_escape_name(exc)}: {first_line(exc)}. Fix that module and try again."
        ) from exc


def _import_file(target: str, *, spec: str, error: type[BiasscopeError], what: str) -> Any:
    path = Path(target)
    if not path.is_file():
        raise error(
            f"The {what} factory {spec!r} points at {target!r}, which is not a file. "
            f"Check the path (relative paths start from the current directory: {os.getcwd()})."
        )
    resolved = path.resolve()
    name = "_biasscope_factory_" + hashlib.sha256(os.fsencode(resolved)).hexdigest()[:16]
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, resolved)
    if module_spec is None or module_spec.loader is None:
        raise error(
            f"The {what} factory file {target!r} cannot be imported as Python. Give a .py file."
        )
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    # the file's own directory is importable while it runs, so `from model import Net` works
    parent = str(resolved.parent)
    sys.path.insert(0, parent)
    try:
        module_spec.loader.exec_module(module)
    except _ESCAPES as exc:
        sys.modules.pop(name, None)
        raise error(
            f"Running the {what} factory file {target!r} raised {_escape_name(exc)}: "
            f"{first_line(exc)}. Fix the error in that file (or a module it imports) and try again."
        ) from exc
    finally:
        try:
            sys.path.remove(parent)
        except ValueError:
            pass
    return module


def call_factory(spec: str, *, error: type[BiasscopeError], what: str) -> Any:
    """Import and call a factory string; whatever it raises (``sys.exit`` and Ctrl-C
    included) becomes ``error`` naming the factory.

    Args:
        spec: ``"package.module:function"`` or ``"path/to/file.py:function"``.
        error: the error class to raise (ModelLoadError or DataLoadError).
        what: what the factory builds, for messages ("model", "data").
    """
    fn = _import_callable(spec, error=error, what=what)
    try:
        return fn()
    except BiasscopeError:
        raise
    except _ESCAPES as exc:
        raise error(
            f"The {what} factory {spec!r} raised {_escape_name(exc)}: {first_line(exc)}. It is "
            f"called with no arguments and must return the {what}; fix the function (or wrap it "
            "in one that supplies its arguments)."
        ) from exc


_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 300 characters, no terminal codes)."""
    text = _ANSI_RE.sub("", str(exc)).strip().splitlines()
    return text[0][:300] if text else ""




def describe_obj(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = list(obj)[:8]
        more = ", ..." if len(obj) > 8 else ""
        return f"a dict with keys [{', '.join(map(repr, keys))}{more}]"
    if isinstance(obj, Tensor):
        return f"a tensor of shape {tuple(obj.shape)}"
    return f"a {type(obj).__name__}"


