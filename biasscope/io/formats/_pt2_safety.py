"""Inspect a ``.pt2`` archive (a zip) before ``torch.export.load`` sees it, so that nothing
in it is unpickled or run unless the caller passed ``trust_pickle=True``.

``torch.export.load`` unpickles with ``weights_only=False`` in several places: sample inputs
that do not load with ``weights_only=True`` (it falls back), weights and constants marked
``use_pickle``, opaque and custom-object constants, the legacy single-file weights, and the
pre-2.8 archive layout; it also loads AOTInductor shared libraries. Each is refused here.

The check mirrors how torch finds records, not the names torch writes: its reader
(``PyTorchFileReader``, miniz) strips the archive's root folder and matches names without
regard to case, and it loads every program under ``models/``. So every record is classified
by its case-folded name below the root, every record of a sensitive folder is inspected (of
every program, whatever its name), and an archive where two records resolve to the same name
(duplicates, case variants, two root folders) is refused: torch would read one of them and
this check may have read the other."""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch

from ...errors import ModelLoadError

__all__ = ["check_pt2_archive"]

_WEIGHTS_DIR = "data/weights/"
_CONSTANTS_DIR = "data/constants/"
_SAMPLE_INPUTS_DIR = "data/sample_inputs/"
_AOTI_DIR = "data/aotinductor/"
_PICKLED_CONSTANT_PREFIXES = ("custom_obj", "opaque_obj")


def resolved_name(zip_name: str) -> str:
    """The name torch's reader resolves a record by: below the archive's root folder, with
    ``\\`` as ``/``, case-folded."""
    name = zip_name.replace("\\", "/")
    _, sep, rest = name.partition("/")
    return (rest if sep else name).casefold()


def _records(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """Each record by its resolved name; raises when two records resolve to one name."""
    out: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        if info.is_dir():
            continue
        key = resolved_name(info.filename)
        if key in out:
            raise _Ambiguous(f"two records resolve to {key!r} ({out[key].filename!r} and {info.filename!r})")
        out[key] = info
    return out


class _Ambiguous(Exception):
    """Two records that torch's reader cannot tell apart."""


def _unsafe_entries(archive: zipfile.ZipFile, records: dict[str, zipfile.ZipInfo]) -> list[str]:
    """What in the archive would be unpickled or run, one phrase each (empty: nothing)."""
    found: list[str] = []
    layout = records.get("archive_format")
    if layout is None or archive.read(layout) != b"pt2":
        found.append("an archive layout older than torch 2.8's (its weights are pickled)")
    for name, info in records.items():
        payloads = name.startswith((_WEIGHTS_DIR, _CONSTANTS_DIR))
        if name.startswith(_AOTI_DIR):
            found.append(f"AOTInductor compiled code ({info.filename}: a shared library that would be loaded)")
        elif payloads and name.endswith(".pt"):
            found.append(f"legacy pickled weights ({info.filename})")
        elif payloads and name.endswith(".json"):
            found.extend(_pickled_payloads(name, json.loads(archive.read(info))))
        elif name.startswith(_SAMPLE_INPUTS_DIR):
            found.extend(_pickled_sample_inputs(info.filename, archive.read(info)))
    return found


def _pickled_payloads(name: str, config: Any) -> list[str]:
    entries = config.get("config", {}) if isinstance(config, dict) else {}
    if not isinstance(entries, dict):
        raise ValueError(f"{name} is not a payload config")
    found = []
    for fqn, meta in entries.items():
        if not isinstance(meta, dict):
            raise ValueError(f"{name}: entry {fqn!r} is not a payload description")
        path_name = str(meta.get("path_name", "")).casefold()
        if meta.get("use_pickle") or path_name.startswith(_PICKLED_CONSTANT_PREFIXES):
            what = "weight" if name.startswith(_WEIGHTS_DIR) else "constant"
            found.append(f"the {what} {fqn!r}, stored as a pickle")
    return found


def _pickled_sample_inputs(name: str, payload: bytes) -> list[str]:
    if not payload:
        return []
    try:
        torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception:  # not tensors only: torch would retry with weights_only=False
        return [f"sample inputs ({name}) that only load by unpickling Python objects"]
    return []


def check_pt2_archive(p: Path, payload: bytes) -> None:
    """Raise :class:`ModelLoadError` unless ``payload`` (the bytes of ``p``) is a ``.pt2``
    archive that ``torch.export.load`` reads without unpickling or running anything."""
    try:
        with zipfile.ZipFile(io.BytesIO(payload)) as archive:
            found = _unsafe_entries(archive, _records(archive))
    except _Ambiguous as exc:
        found = [f"{exc}, so what torch would load is not what was checked"]
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, KeyError, EOFError, RecursionError,
            NotImplementedError, RuntimeError) as exc:
        raise ModelLoadError(
            f"Cannot read {str(p)!r} as a torch.export program ({type(exc).__name__}: "
            f"{str(exc)[:200]}). The file may be corrupt or truncated; save it again with "
            "torch.export.save."
        ) from exc
    if found:
        raise ModelLoadError(
            f"{str(p)!r} is a torch.export program holding {'; '.join(found[:5])}. Loading it "
            "would unpickle Python objects (or load compiled code) stored in the file, which "
            "runs arbitrary code, so biasscope refuses by default. If you trust the file, allow "
            "it with trust_pickle. Better: re-export with torch.export.save from torch >= 2.8 "
            "with tensors-only sample inputs and weights."
        )
