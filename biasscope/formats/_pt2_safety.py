"""Inspect a ``.pt2`` archive (a zip) before ``torch.export.load`` sees it, so that nothing
in it is unpickled or run unless the caller passed ``trust_pickle=True``.

``torch.export.load`` unpickles with ``weights_only=False`` in several places: sample inputs
that do not load with ``weights_only=True`` (it falls back), weights and constants marked
``use_pickle``, opaque and custom-object constants, the legacy single-file weights, and the
pre-2.8 archive layout; it also loads AOTInductor shared libraries. Each is refused here."""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelLoadError

__all__ = ["check_pt2_archive"]

_WEIGHTS_DIR = "data/weights/"
_CONSTANTS_DIR = "data/constants/"
_SAMPLE_INPUTS_DIR = "data/sample_inputs/"
_AOTI_DIR = "data/aotinductor/"
_PICKLED_CONSTANT_PREFIXES = ("custom_obj", "opaque_obj")


def _archive_names(archive: zipfile.ZipFile) -> dict[str, str]:
    """Map each entry's name inside the archive root (``"models/model.json"``) to its zip name."""
    out: dict[str, str] = {}
    for name in archive.namelist():
        root, sep, rest = name.partition("/")
        out[rest if sep else name] = name
    return out


def _unsafe_entries(archive: zipfile.ZipFile, names: dict[str, str]) -> list[str]:
    """What in the archive would be unpickled or run, one phrase each (empty: nothing)."""
    found: list[str] = []
    if names.get("archive_format") is None or archive.read(names["archive_format"]) != b"pt2":
        found.append("an archive layout older than torch 2.8's (its weights are pickled)")
    if any(n.startswith(_AOTI_DIR) for n in names):
        found.append("AOTInductor compiled code (a shared library that would be loaded)")
    for rest, name in names.items():
        if rest.startswith((_WEIGHTS_DIR, _CONSTANTS_DIR)) and rest.endswith(".pt"):
            found.append(f"legacy pickled weights ({rest})")
        elif rest.startswith((_WEIGHTS_DIR, _CONSTANTS_DIR)) and rest.endswith("config.json"):
            found.extend(_pickled_payloads(rest, json.loads(archive.read(name))))
        elif rest.startswith(_SAMPLE_INPUTS_DIR):
            found.extend(_pickled_sample_inputs(rest, archive.read(name)))
    return found


def _pickled_payloads(rest: str, config: Any) -> list[str]:
    entries = config.get("config", {}) if isinstance(config, dict) else {}
    if not isinstance(entries, dict):
        raise ValueError(f"{rest} is not a payload config")
    found = []
    for fqn, meta in entries.items():
        if not isinstance(meta, dict):
            raise ValueError(f"{rest}: entry {fqn!r} is not a payload description")
        path_name = str(meta.get("path_name", ""))
        if meta.get("use_pickle") or path_name.startswith(_PICKLED_CONSTANT_PREFIXES):
            what = "weight" if rest.startswith(_WEIGHTS_DIR) else "constant"
            found.append(f"the {what} {fqn!r}, stored as a pickle")
    return found


def _pickled_sample_inputs(rest: str, payload: bytes) -> list[str]:
    if not payload:
        return []
    try:
        torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception:  # not tensors only: torch would retry with weights_only=False
        return [f"sample inputs ({rest}) that only load by unpickling Python objects"]
    return []


def check_pt2_archive(p: Path, payload: bytes) -> None:
    """Raise :class:`ModelLoadError` unless ``payload`` (the bytes of ``p``) is a ``.pt2``
    archive that ``torch.export.load`` reads without unpickling or running anything."""
    try:
        with zipfile.ZipFile(io.BytesIO(payload)) as archive:
            found = _unsafe_entries(archive, _archive_names(archive))
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, KeyError, EOFError) as exc:
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
