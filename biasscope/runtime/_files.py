"""Atomic file output: write to a temp file in the target's folder, then rename, so an
interrupted run never leaves a half-written file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import BiasscopeError

__all__ = [
    "MANIFEST_NAME", "atomic_path", "check_output_file", "check_output_folder", "clean_stale",
    "file_digests", "manifest_names", "utf8", "write_atomic", "write_outputs", "check_regular",
    "read_json_object",
]


_TMP_MARK = "biasscope-tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: Path, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it replaces ``path`` (with the usual
    0666 & ~umask permissions), on any error it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.{_TMP_MARK}{os.getpid()}-", suffix=suffix
    )
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def utf8(text: str) -> bytes:
    """``text`` as UTF-8; a file name that is not UTF-8 (held as lone surrogates by Python)
    is written as its ``\\udcNN`` escape, so that any path the OS accepts can be reported."""
    if not isinstance(text, str):
        raise TypeError(f"expected text or bytes, got a {type(text).__name__}")
    return text.encode("utf-8", errors="backslashreplace")


def write_atomic(path: Path, content: str | bytes) -> Path:
    """Write ``content`` (text as UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        if isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            tmp.write_bytes(utf8(content))
    return path


MANIFEST_NAME = "biasscope-manifest.json"
_STAGING_PREFIX = ".biasscope-staging-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(folder: Path) -> list[Path]:
    """Remove the temporary files and staging folders that an interrupted run of this tool
    left in ``folder`` (those whose writing process is gone). Returns what was removed."""
    import shutil

    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        name = entry.name
        if name.startswith(_STAGING_PREFIX):
            pid = name[len(_STAGING_PREFIX):].split("-", 1)[0]
            if pid.isdigit() and _pid_alive(int(pid)) and int(pid) != os.getpid():
                continue
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
        elif name.startswith(".") and _TMP_MARK in name and entry.is_file():
            pid = name.split(_TMP_MARK, 1)[1].split("-", 1)[0]
            if pid.isdigit() and _pid_alive(int(pid)) and int(pid) != os.getpid():
                continue
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def file_digests(folder: Path, names: Iterable[str]) -> dict[str, str]:
    """The sha256 of each named file of ``folder``, a named folder standing for every file
    inside it (``model`` -> ``model/config.json``, ...)."""
    import hashlib

    out: dict[str, str] = {}
    for name in names:
        path = folder / name
        paths = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for p in paths:
            out[p.relative_to(folder).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def manifest_names(folder: Path) -> set[str]:
    """The files the manifest of ``folder`` lists (written by this tool), whether or not they
    still match it; empty without a readable manifest."""
    import json

    try:
        files = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))["files"]
        return {str(name) for name in files}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def write_outputs(folder: Path, files: dict[str, str | bytes], *, run: dict | None = None,
                  written: Iterable[str] = ()) -> dict[str, Path]:
    """Write several files into ``folder`` as one unit.

    Every file is first written in full to a staging folder inside ``folder``; then the old
    manifest is removed, the files are renamed into place, and a new manifest
    (``biasscope-manifest.json``: run info and each file's sha256, with the files and folders
    ``written`` already by this run, such as a saved model) is written last. A reader
    who finds the manifest and matching hashes sees one run's complete output; an interrupted
    write leaves no manifest (and its staging folder is removed by the next run).
    """
    import hashlib
    import json
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    clean_stale(folder)
    staging = Path(tempfile.mkdtemp(dir=folder, prefix=f"{_STAGING_PREFIX}{os.getpid()}-"))
    try:
        digests = {}
        for name, content in files.items():
            data = utf8(content) if isinstance(content, str) else content
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(data)
            os.chmod(staging / name, 0o666 & ~_umask())
            digests[name] = hashlib.sha256(data).hexdigest()
        manifest = folder / MANIFEST_NAME
        manifest.unlink(missing_ok=True)
        out = {}
        for name in files:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, folder / name)
            out[name] = folder / name
        digests.update(file_digests(folder, written))
        body = json.dumps({"run": run or {}, "files": digests}, indent=2)
        write_atomic(manifest, body)
        return out
    finally:
        shutil.rmtree(staging, ignore_errors=True)


_PSEUDO_ROOTS = ("/proc", "/sys", "/dev")


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _overwrites(target: Path, source: Path) -> bool:
    """Whether writing ``target`` (a file, or a folder replaced whole) would overwrite
    ``source``: the same file (through symlinks or hard links), or ``source`` inside it."""
    if _same(target, source):
        return True
    real_target, real_source = Path(os.path.realpath(target)), Path(os.path.realpath(source))
    return real_target == real_source or real_target in real_source.parents


def _writable_ancestor(path: Path, parameter: str) -> None:
    """The nearest existing ancestor of ``path`` must be a writable folder on a real file
    system, so that ``path`` can be created."""
    from ..errors import OutputPathError

    resolved = Path(os.path.abspath(path))
    if any(resolved == Path(root) or Path(root) in resolved.parents for root in _PSEUDO_ROOTS):
        raise OutputPathError(
            f"{parameter} {str(path)!r} is under {resolved.parts[0]}{resolved.parts[1]}, a "
            "system pseudo file system where no report can be written; choose a folder of "
            "your own.", parameter=parameter,
        )
    ancestor = resolved
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputPathError(
            f"{parameter} {str(path)!r} cannot be created: {str(ancestor)!r} is a file, not a "
            "folder; choose another path.", parameter=parameter,
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputPathError(
            f"{parameter} {str(path)!r} cannot be written: the folder {str(ancestor)!r} is "
            "read-only for this user; choose a writable folder.", parameter=parameter,
        )


def check_output_folder(
    folder: str | os.PathLike[str],
    names: list[str] | tuple[str, ...] = (),
    *,
    inputs: list[str | os.PathLike[str]] | tuple = (),
    parameter: str = "out",
) -> Path:
    """Check, before any work, that ``folder`` can receive the files ``names`` (a name
    ending in ``/`` is a folder the run writes): it is not a file, not under a pseudo file
    system, writable (or creatable), no file to write is an existing folder (nor a folder to
    write an existing file), and neither the folder nor anything written is, or holds, one of
    ``inputs`` (resolved: symlinks and hard links count).
    Raises :class:`~biasscope.errors.OutputPathError` naming ``parameter``."""
    from ..errors import OutputPathError

    folder = Path(folder)
    input_paths = [Path(p) for p in inputs if p is not None]
    for source in input_paths:
        if _same(folder, source):
            raise OutputPathError(
                f"{parameter} {str(folder)!r} is an input path; write the outputs elsewhere "
                "(an input is never overwritten).", parameter=parameter,
            )
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(
            f"{parameter} {str(folder)!r} is a file; {parameter} is the folder the outputs go "
            "in: give a folder path (it is created when missing).", parameter=parameter,
        )
    _writable_ancestor(folder, parameter)
    for name in names:
        target = folder / name
        if name.endswith("/") and (target.exists() or target.is_symlink()) and not target.is_dir():
            raise OutputPathError(
                f"{str(target)!r} is a file, but the run writes a folder there; move or remove "
                f"it, or choose another {parameter}.", parameter=parameter,
            )
        if not name.endswith("/") and target.is_dir():
            raise OutputPathError(
                f"{str(target)!r} is a folder, but the run writes a file there; move or remove "
                f"it, or choose another {parameter}.", parameter=parameter,
            )
        hit = next((source for source in input_paths if _overwrites(target, source)), None)
        if hit is not None:
            raise OutputPathError(
                f"Writing {str(target)!r} would overwrite the input {str(hit)!r}; choose another "
                f"{parameter} (an input is never overwritten).", parameter=parameter,
            )
    return folder


def check_output_file(
    path: str | os.PathLike[str],
    *,
    inputs: list[str | os.PathLike[str]] | tuple = (),
    parameter: str = "out",
) -> Path:
    """Check, before any work, that one output file can be written at ``path`` and is not
    one of ``inputs``."""
    from ..errors import OutputPathError

    path = Path(path)
    if any(_same(path, Path(source)) for source in inputs if source is not None):
        raise OutputPathError(
            f"{parameter} {str(path)!r} is one of the inputs; writing there would overwrite "
            "it. Choose another file name.", parameter=parameter,
        )
    if path.is_dir():
        raise OutputPathError(
            f"{parameter} {str(path)!r} is a folder; give a file name (e.g. compare.html).",
            parameter=parameter,
        )
    _writable_ancestor(path.parent if str(path.parent) else Path("."), parameter)
    return path


def check_regular(path: Path, *, what: str, error: type[BiasscopeError], folder_ok: bool = False) -> None:
    """Refuse, before opening it, a path that is not a regular file (a named pipe, a device
    such as /dev/zero, a socket: reading one may block or never end), or a folder where a file
    is expected; inside a folder (a Hugging Face model) every entry must be a file or folder."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing: the caller says so in its own words
    if stat.S_ISDIR(mode) and folder_ok:
        for entry in path.rglob("*"):
            check_regular(entry, what=what, error=error, folder_ok=True)
        return
    if stat.S_ISREG(mode):
        return
    kind = "a folder" if stat.S_ISDIR(mode) else "a named pipe" if stat.S_ISFIFO(mode) else (
        "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
    raise error(
        f"The {what} {str(path)!r} is {kind}; biasscope reads {what} from regular files only "
        f"(reading {kind} could block or never end). Give the path of a {what} file."
    )


def _finite_float(text: str) -> float:
    """A JSON number as a float; one too large for a float (``1e400``) is an error, not inf."""
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def read_json_object(path: str | os.PathLike[str], *, what: str, file_name: str, made_by: str,
                     error: type[BiasscopeError]) -> dict:
    """The JSON object in ``path`` (a ``what`` written by ``made_by``), with a specific message
    for a folder, a file that is not regular, invalid JSON (also ``1e400``, a 5,000-digit
    integer, deep nesting) and a JSON that is not an object."""
    import json

    path = Path(path)
    if path.is_dir():
        hint = f" (it holds an {file_name}: give that file)" if (path / file_name).is_file() else ""
        raise error(f"{path} is a folder, not an {what}{hint}; give the {file_name} file.")
    check_regular(path, what=what, error=error)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"No {what} at {path}; run `{made_by}` first.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"Cannot read {path} as an {what} ({exc}).") from None
    try:
        data = json.loads(text, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:
        raise error(f"{path} is not valid JSON for an {what.removesuffix(' JSON')} ({type(exc).__name__}: "
                    f"{str(exc)[:160]}); give a file written by `{made_by}`.") from None
    if not isinstance(data, dict):
        raise error(f"{path} holds a JSON {type(data).__name__}, not an object: give one file written "
                    f"by `{made_by}` (not a list of them).")
    return data
