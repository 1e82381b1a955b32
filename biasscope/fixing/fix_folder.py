"""The output folder of a fix run: what it writes, what in it this tool wrote (its
manifest, or while a run is unfinished its ``STATUS``), the checks before any work, and the
undoing of a run's writes when it fails late.

Nothing here deletes a file the tool did not write: a model folder or file that no manifest
or STATUS lists is refused before any work, never replaced."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..runtime._distributed import is_writer
from ..runtime._files import MANIFEST_NAME, check_output_folder, manifest_names, write_atomic
from ..errors import ConfigError, OutputPathError

__all__ = ["STATUS_NAME", "check_fix_output", "check_not_model_folder", "fix_output_names", "model_dest_name",
           "owned_names", "undo_on_error", "write_status"]

STATUS_NAME = "STATUS"
_REPORTS = ("before/", "before/audit.json", "before/report.html", "after/", "after/audit.json",
            "after/report.html", "compare.html", "training_log.csv", "training_log.json")
#: the STATUS line that lists what this tool wrote in the folder (while no manifest does)
_OWNED = "written by biasscope: "


def model_dest_name(model_path: str | Path) -> str:
    """Where fix writes the fixed model inside its output folder: ``model/`` for a Hugging
    Face folder, else ``model`` with the input's suffix (``.pt`` without one)."""
    path = Path(model_path)
    return "model/" if path.is_dir() else f"model{path.suffix or '.pt'}"


def fix_output_names(model_path: str | Path) -> list[str]:
    """Every file and folder (ending in ``/``) a fix run writes in its output folder."""
    return [model_dest_name(model_path), *_REPORTS, STATUS_NAME, "checkpoints/", MANIFEST_NAME]


def owned_names(out: Path) -> set[str]:
    """What this tool wrote in ``out``: the files its manifest lists, or, while a run is
    unfinished, those its STATUS lists."""
    owned = manifest_names(out)
    try:
        for line in (out / STATUS_NAME).read_text(encoding="utf-8").splitlines():
            if line.startswith(_OWNED):
                owned |= set(json.loads(line[len(_OWNED):]))
    except (OSError, ValueError, TypeError):
        pass
    return owned


def _check_model_owned(out: Path, model_path: str | Path) -> None:
    """The fixed model replaces ``out/model*``: refuse when something there was not written
    by this tool (biasscope never deletes what its manifest does not list)."""
    name = model_dest_name(model_path).rstrip("/")
    dest = out / name
    if not (dest.exists() or dest.is_symlink()):
        return
    owned = owned_names(out)
    if name in owned or f"{name}/" in owned:
        return
    files = [p.relative_to(out).as_posix() for p in dest.rglob("*") if p.is_file()] if dest.is_dir() else [name]
    foreign = sorted(set(files) - owned)
    if foreign or not files:
        raise OutputPathError(
            f"{str(dest)!r} exists and biasscope did not write it ({', '.join(foreign[:3]) or 'an empty folder'} "
            f"is not in {MANIFEST_NAME} there); fix would replace it with the fixed model. Move it "
            "away, or choose another out: biasscope never deletes what it did not write.",
            parameter="out",
        )


def check_fix_output(out: str | Path, model_path: str | Path, inputs: Sequence[str | Path] = ()) -> Path:
    """Every check of a fix's output folder, before any work: a writable folder whose every
    file to write is neither an input nor in the way (:func:`check_output_folder`), not the
    input model's folder, and no model there that this tool did not write."""
    check_output_folder(out, fix_output_names(model_path), inputs=[model_path, *inputs])
    out = check_not_model_folder(out, model_path)
    _check_model_owned(out, model_path)
    return out


def check_not_model_folder(out: str | Path, model_path: str | Path) -> Path:
    """Refuse an output folder that is, contains, or lies inside the input model's folder
    (fix would write beside, or over, its input). Returns ``out`` as a Path."""
    out, src = Path(out).resolve(), Path(model_path).resolve()
    folder = src if src.is_dir() else src.parent
    if out == folder or out in folder.parents or (src.is_dir() and src in out.parents):
        raise ConfigError(
            f"out ({out}) holds the input model {src}: fix writes the fixed model, checkpoints "
            "and reports there, next to or over its input. Choose an output folder outside "
            f"{folder}.", parameter="out",
        )
    return Path(out)


def write_status(out: Path, lines: list[str], owned: Sequence[str] = ()) -> None:
    """Write ``out/STATUS``: what is missing and how to finish, and (the last line) what this
    tool wrote there, so that a later run may replace it."""
    if is_writer():  # under torchrun rank 0 alone writes
        owned = sorted({*owned, *owned_names(out)})
        write_atomic(out / STATUS_NAME, "\n".join([*lines, _OWNED + json.dumps(owned)]) + "\n")



def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


@contextmanager
def undo_on_error(out: Path, model_name: str) -> Iterator[None]:
    """Around a fix run: on an error (not an interrupt, which keeps what ``--resume`` needs),
    remove what this run wrote in ``out``: its STATUS (the previous one is put back), a
    checkpoints folder it created, the model it wrote, and ``out`` itself when it created it."""
    existed = out.exists()
    status = out / STATUS_NAME
    old_status = status.read_bytes() if status.is_file() else None
    had_checkpoints = (out / "checkpoints").exists()
    model = out / model_name.rstrip("/")
    model_stamp = _stamp(model)
    try:
        yield
    except Exception:
        if is_writer():
            if not existed:
                shutil.rmtree(out, ignore_errors=True)
                raise
            if old_status is None:
                status.unlink(missing_ok=True)
            else:
                write_atomic(status, old_status)
            if not had_checkpoints:
                shutil.rmtree(out / "checkpoints", ignore_errors=True)
            if _stamp(model) != model_stamp and _stamp(model) is not None:
                shutil.rmtree(model) if model.is_dir() and not model.is_symlink() else model.unlink()
        raise
