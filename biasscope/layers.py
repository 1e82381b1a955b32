"""The layer table: every submodule of a model with the shape of its output on one batch, so
a user can choose the submodules whose outputs are the modality representations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._batch import run_model, split_batch
from .modality import tensor_elements

__all__ = ["LayerInfo", "layer_table"]


@dataclass(frozen=True)
class LayerInfo:
    """One submodule: its dotted path (``""`` is the model itself), class name, output shape
    and dtype on the batch (None when it did not run), and parameter count (its subtree)."""

    path: str
    type: str
    output_shape: tuple[int, ...] | None
    dtype: str | None
    n_params: int
    elements: tuple[tuple[int | str, tuple[int, ...]], ...] = ()  # when it returns several tensors


def _type_name(module: nn.Module) -> str:
    # TorchScript modules keep the scripted class name in original_name
    name = getattr(module, "original_name", None)
    return name if isinstance(name, str) and name else type(module).__name__


def _n_params(module: nn.Module) -> int:
    try:
        return sum(p.numel() for p in module.parameters())
    except Exception:  # some scripted containers cannot enumerate parameters
        return 0


def layer_table(
    model: nn.Module, batch: Any, *, label_key: str | None = "label"
) -> list[LayerInfo]:
    """List every named submodule of ``model`` (``model.named_modules()`` order, the model
    itself first with path ``""``) with the shape of its output on one forward pass.

    Args:
        model: the model (its train/eval mode is left as it is).
        batch: a dict batch, a tuple batch (label last) or a :class:`~biasscope._batch.Batch`.
        label_key: the label's key in a dict batch (None: the batch has no label).
    """
    b = split_batch(batch, label_key=label_key)
    modules = list(model.named_modules())
    outputs: dict[int, list] = {}
    handles = []

    def make_hook(i: int):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if i not in outputs:  # a module called twice reports its first call
                outputs[i] = tensor_elements(output)

        return hook

    try:
        for i, (_, module) in enumerate(modules):
            if i == 0:
                continue  # the model's own output is read from the call itself
            try:
                handles.append(module.register_forward_hook(make_hook(i)))
            except Exception:  # TorchScript submodules do not take Python hooks
                pass
        with torch.no_grad():
            result = run_model(model, b)
        outputs[0] = tensor_elements(result)
    finally:
        for h in handles:
            h.remove()

    table = []
    for i, (path, module) in enumerate(modules):
        found = outputs.get(i) or []
        out = found[0][1] if found else None
        table.append(
            LayerInfo(
                path=path,
                type=_type_name(module),
                output_shape=tuple(int(d) for d in out.shape) if out is not None else None,
                dtype=str(out.dtype).removeprefix("torch.") if out is not None else None,
                n_params=_n_params(module),
                elements=tuple((k, tuple(int(d) for d in t.shape)) for k, t in found)
                if len(found) > 1 else (),
            )
        )
    return table
