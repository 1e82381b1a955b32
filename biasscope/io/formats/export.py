"""``torch.export`` programs (``.pt2``): inspected for pickles first (see
:mod:`._pt2_safety`), loaded from memory with ``torch.export.load`` and wrapped in
:class:`~biasscope.io._exported.ExportedModule`; saved by re-exporting the fine-tuned module."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._exported import ExportedModule
from .._sources import first_line
from ...errors import ModelLoadError
from ._base import (
    LoadedModel, LoadRequest, SaveRequest, atomic_file, corrupt, quiet_logger, set_eval,
)
from ._pt2_safety import check_pt2_archive

KIND = "export"
# torch logs its own tracebacks for a failed load (and a fallback to unpickling)
_TORCH_LOGGERS = ("torch.export", "torch._export")


def load(p: Path, request: LoadRequest) -> LoadedModel:
    """Load a ``.pt2`` program; refuse one that needs unpickling unless ``trust_pickle``."""
    try:
        payload = p.read_bytes()
    except OSError as exc:
        raise corrupt(p, "a torch.export program", exc) from exc
    if not request.trust_pickle:
        check_pt2_archive(p, payload)
    try:
        with quiet_logger(*_TORCH_LOGGERS):
            # the checked bytes themselves, not the file again (it may change in between)
            program = torch.export.load(io.BytesIO(payload))
        module = program.module()
    except Exception as exc:
        raise corrupt(p, "a torch.export program", exc) from exc
    # .module() makes .train()/.eval() raise; biasscope calls them, so restore nn.Module's
    # (they set the flags only: the graph keeps the behaviour it was exported with)
    for name in ("train", "eval"):
        module.__dict__.pop(name, None)
    if str(request.map_location) != "cpu":
        module = module.to(request.map_location)
    module = ExportedModule(
        module, batch_size=_static_batch_size(program), arg_names=_positional_names(program)
    )
    return LoadedModel(
        module=module, kind=KIND, path=p, sha256=request.digest,
        example_inputs=getattr(program, "example_inputs", None),
    )


def _static_batch_size(program: Any) -> int | None:
    """The batch size an exported program was traced with, when its batch dim is static."""
    names = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        val = node.meta.get("val") if node.op == "placeholder" and node.name in names else None
        if isinstance(val, Tensor) and val.dim() > 0:
            return val.shape[0] if isinstance(val.shape[0], int) else None
    return None


def _positional_names(program: Any) -> tuple[str, ...] | None:
    """The argument names of a program exported with positional inputs only (None when it
    was exported with keyword inputs): dict batches are then passed by position."""
    example = getattr(program, "example_inputs", None)
    if not example or example[1]:
        return None
    return tuple(program.graph_signature.user_inputs)


def save(loaded: LoadedModel, module: nn.Module, out: Path, request: SaveRequest) -> None:
    """Re-export ``module`` in eval mode and write it with ``torch.export.save``."""
    program = _export(loaded, module, request)
    atomic_file(out, lambda tmp: torch.export.save(program, str(tmp)), suffix=".pt2")


def _export(loaded: LoadedModel, module: nn.Module, request: SaveRequest) -> Any:
    example_inputs, example_kwargs = request.example_inputs, request.example_kwargs
    dynamic_shapes = request.dynamic_shapes
    if example_inputs is None and example_kwargs is None:
        if loaded.example_inputs is None:
            raise ModelLoadError(
                "Saving a torch.export model re-exports it, which needs example inputs, and the "
                f"input {str(loaded.path)!r} stored none. Pass example_inputs=(...) (one batch of "
                "the model's inputs) to save_model."
            )
        example_inputs, example_kwargs = loaded.example_inputs
    if isinstance(module, ExportedModule):
        if dynamic_shapes is None and module.batch_size is None:  # keep a dynamic batch dynamic
            dynamic_shapes = _dynamic_batch(example_inputs, example_kwargs)
        module = module.module
    modes = {m: m.training for m in module.modules()}
    set_eval(module)
    try:
        return torch.export.export(
            module, tuple(example_inputs or ()), dict(example_kwargs or {}),
            dynamic_shapes=dynamic_shapes,
        )
    except Exception as exc:
        raise ModelLoadError(
            f"torch.export could not export the model ({type(exc).__name__}: {first_line(exc)}). "
            "Check that example_inputs match the model's forward, or save a state dict instead."
        ) from exc
    finally:
        for m, mode in modes.items():
            m.training = mode


def _dynamic_batch(args: Any, kwargs: Any) -> Any:
    """``dynamic_shapes`` marking dim 0 of every tensor input as dynamic."""
    if kwargs and args:
        return None

    def spec(v: Any) -> Any:
        return {0: torch.export.Dim.DYNAMIC} if isinstance(v, Tensor) and v.dim() > 0 else None

    if kwargs:
        return {k: spec(v) for k, v in kwargs.items()}
    return tuple(spec(v) for v in args or ())
