"""TorchScript models (``torch.jit.save`` archives): loaded with ``torch.jit.load``, whose
unpickler only builds TorchScript types; saved back with ``torch.jit.save``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .._sources import first_line
from ...errors import ModelLoadError
from ._base import LoadedModel, LoadRequest, SaveRequest, atomic_file, corrupt, quiet_jit

KIND = "torchscript"


def load(p: Path, request: LoadRequest) -> LoadedModel:
    """Load a TorchScript archive."""
    try:
        with quiet_jit():
            module = torch.jit.load(str(p), map_location=request.map_location)
    except Exception as exc:
        raise corrupt(p, "TorchScript", exc) from exc
    return LoadedModel(module=module, kind=KIND, path=p, sha256=request.digest)


def save(loaded: LoadedModel, module: nn.Module, out: Path, request: SaveRequest) -> None:
    """Write ``module`` as TorchScript (scripting it first when it is a plain module)."""
    script = module
    if not isinstance(module, torch.jit.ScriptModule):
        try:
            with quiet_jit():
                script = torch.jit.script(module)
        except Exception as exc:
            raise ModelLoadError(
                f"The input was TorchScript, but the model to save is a "
                f"{type(module).__name__} that torch.jit.script cannot compile "
                f"({first_line(exc)}). Pass the loaded ScriptModule (it is trainable)."
            ) from exc

    def write_script(tmp: Path) -> None:
        with quiet_jit():
            torch.jit.save(script, str(tmp))

    atomic_file(out, write_script)
