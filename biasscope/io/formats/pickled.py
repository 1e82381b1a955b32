"""Pickled modules (``torch.save(model)``), opt-in only: every ``torch.save`` file is first
read with ``weights_only=True``; unpickling Python objects needs ``trust_pickle=True``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._sources import describe_obj, first_line
from ...errors import ModelLoadError
from ._base import LoadedModel, LoadRequest, SaveRequest, atomic_file, corrupt, naming

KIND = "pickle"
_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def read_torch_file(p: Path, *, map_location: Any, trust_pickle: bool) -> Any:
    """``torch.load`` with ``weights_only=True``; only with ``trust_pickle`` a file holding
    other Python objects is unpickled in full."""
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:
        message = str(exc)
        if "Unsupported global" not in message:
            raise corrupt(p, "a torch.save file", exc) from exc
        match = _GLOBAL_RE.search(message)
        if not trust_pickle:
            raise pickle_refused(p, match.group(1) if match else None) from None
    try:  # reached only with trust_pickle: the user's explicit opt-in to run the file's pickle
        return torch.load(p, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise ModelLoadError(
            f"Unpickling {str(p)!r} failed ({type(exc).__name__}: {first_line(exc)}). A pickled "
            "module needs its class importable under the same module name as when it was saved: "
            "run from the project that defines it (or add it to PYTHONPATH); better, save a state "
            "dict and load it with its model factory, or save TorchScript / torch.export."
        ) from exc


def pickle_refused(p: Path, global_name: str | None) -> ModelLoadError:
    ref = f" (it references {global_name})" if global_name else ""
    return ModelLoadError(
        f"{str(p)!r} holds pickled Python objects{ref}, not only tensors. Unpickling runs "
        "arbitrary code stored in the file, so biasscope refuses by default. If you trust the "
        "file, allow it with trust_pickle. Better: save a state dict "
        "(torch.save(model.state_dict(), path)) and load it with its model factory, or save the "
        "model with "
        "torch.jit.save or torch.export.save."
    )


def from_module(p: Path, obj: nn.Module, request: LoadRequest) -> LoadedModel:
    """The record for a module already unpickled from ``p``."""
    return LoadedModel(module=obj.to(request.map_location), kind=KIND, path=p, sha256=request.digest)


def load(p: Path, request: LoadRequest) -> LoadedModel:
    """Load a pickled module (``kind="pickle"``); refused without ``trust_pickle``."""
    if not request.trust_pickle:
        raise pickle_refused(p, None)
    obj = read_torch_file(p, map_location=request.map_location, trust_pickle=True)
    if not isinstance(obj, nn.Module):
        raise naming(ModelLoadError(
            f"{str(p)!r} holds {describe_obj(obj)}, not a pickled torch.nn.Module. Leave kind "
            "out to detect the format (a state dict needs its model factory)."
        ), "kind")
    return from_module(p, obj, request)


def save(loaded: LoadedModel, module: nn.Module, out: Path, request: SaveRequest) -> None:
    """Write ``torch.save(module)``."""
    atomic_file(out, lambda tmp: torch.save(module, tmp))
