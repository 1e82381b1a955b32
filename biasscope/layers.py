"""The layer table: every submodule of a model with the shape of its output on one batch, so
a user can choose the submodules whose outputs are the modality representations."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ._batch import split_batch
from .errors import BiasscopeError, ModelOutputError

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


def _first_tensor(output: Any) -> Tensor | None:
    """The first tensor in a tensor / tuple / list / dict / ModelOutput (depth first)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping) or (hasattr(output, "keys") and hasattr(output, "values")):
        values = output.values()
    elif isinstance(output, (tuple, list)):
        values = output
    else:
        return None
    for v in values:
        found = _first_tensor(v)
        if found is not None:
            return found
    return None


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
    outputs: dict[int, Tensor | None] = {}
    handles = []

    def make_hook(i: int):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if i not in outputs:  # a module called twice reports its first call
                outputs[i] = _first_tensor(output)

        return hook

    try:
        for i, (_, module) in enumerate(modules):
            if i == 0:
                continue  # the model's own output is read from the call itself
            try:
                handles.append(module.register_forward_hook(make_hook(i)))
            except Exception:  # TorchScript submodules do not take Python hooks
                pass
        try:
            with torch.no_grad():
                result = model(*b.args, **b.kwargs)
        except BiasscopeError:
            raise
        except Exception as exc:
            shapes = ", ".join(
                f"{k}: {tuple(v.shape)} {v.dtype}"
                if isinstance(v, Tensor)
                else f"{k}: {type(v).__name__}"
                for k, v in [*enumerate(b.args), *b.kwargs.items()]
            )
            raise ModelOutputError(
                f"The model rejected its inputs while listing its layers ({type(exc).__name__}: "
                f"{exc}). It was called with [{shapes}]. Check that the data matches the model "
                "(dict batches call model(**batch) without the label; tuple batches call "
                "model(*batch[:-1]))."
            ) from exc
        outputs[0] = _first_tensor(result)
    finally:
        for h in handles:
            h.remove()

    table = []
    for i, (path, module) in enumerate(modules):
        out = outputs.get(i)
        table.append(
            LayerInfo(
                path=path,
                type=_type_name(module),
                output_shape=tuple(int(d) for d in out.shape) if out is not None else None,
                dtype=str(out.dtype).removeprefix("torch.") if out is not None else None,
                n_params=_n_params(module),
            )
        )
    return table
