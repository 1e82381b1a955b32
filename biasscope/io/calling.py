"""How a model is called, and which of a batch's inputs it takes.

biasscope calls a model as ``model(*args, **kwargs)`` from a batch (a dict batch by keyword,
a tuple batch by position, nested dicts rebuilt from their dotted keys). :func:`call_as`
adapts a model called another way (``model(batch)``, ``model(*values)``, or any function
of the batch); :func:`default_modalities` names the modalities of a zero-flag audit: the
inputs the forward takes (by name or position), an integer input at the layer that embeds it.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from ..runtime._batch import Batch
from ._sources import _import_callable
from ..errors import ConfigError, ModalityError
from ..measuring.modality import Modality, embedding_layer, is_compiled

__all__ = ["CALLS", "call_as", "default_modalities", "describe_default", "embedding_layer", "load_adapter"]

#: the call conventions: ``model(**inputs)`` (a tuple batch: ``model(*inputs)``),
#: ``model(*inputs.values())``, ``model(inputs)`` (one dict or tuple argument)
CALLS = ("kwargs", "positional", "batch")

Adapter = Callable[[Callable[..., Any], Any], Any]


def load_adapter(spec: str) -> Adapter:
    """Import an adapter ``"package.module:function"`` or ``"file.py:function"``: a function
    ``adapter(forward, inputs)`` that calls ``forward`` (the model) on the batch's inputs
    (a dict without the label, nested dicts restored, or a tuple) and returns its output."""
    return _import_callable(spec, error=ConfigError, what="adapter")


def call_as(model: nn.Module, *, call: str = "kwargs", adapter: Adapter | None = None) -> nn.Module:
    """``model``, to be called the biasscope way, when it is really called as ``call`` or by
    ``adapter(forward, inputs)``.

    Returns ``model`` itself for ``call="kwargs"`` without an adapter; else a shallow copy
    sharing every parameter, buffer and submodule (layer paths, ``state_dict`` and training
    are the model's own), whose ``forward`` makes the call. ``model`` is not changed.
    """
    if call not in CALLS:
        raise ConfigError(f"call must be one of {', '.join(CALLS)} (got {call!r}).", parameter="call")
    if call == "kwargs" and adapter is None:
        return model
    if is_compiled(model):
        raise ConfigError(
            f"A {type(model).__name__} (TorchScript or torch.export) runs the graph it was saved "
            "with and cannot be re-wired: call it as saved (drop --call and --adapter), or load "
            "its state dict with --factory."
        )
    clone = copy.copy(model)
    forward = type(model).forward.__get__(clone)  # the class's forward, bound to the copy

    def called(*args: Any, **kwargs: Any) -> Any:
        inputs: Any = kwargs if kwargs else tuple(args)
        if adapter is not None:
            return adapter(forward, inputs)
        if call == "batch":
            return forward(inputs)
        return forward(*args, *kwargs.values())

    clone.forward = called
    return clone


def _forward_parameters(model: nn.Module) -> tuple[list[str], bool, bool]:
    """The forward's named parameters (in order), and whether it takes ``*args`` / ``**kwargs``."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # builtins, some compiled modules: no signature
        return [], True, True
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return names, any(p.kind == p.VAR_POSITIONAL for p in params), any(p.kind == p.VAR_KEYWORD for p in params)


def _refuse(reason: str, batch: Batch) -> ModalityError:
    names = ", ".join(map(str, batch.input_names)) or "none"
    return ModalityError(
        f"No modality given, and biasscope cannot take them from the data: {reason} (the batch "
        f"holds inputs {names}). Name each modality: --modality NAME=input:KEY_OR_INDEX or "
        "NAME=layer:dotted.path (`biasscope layers MODEL --data DATA` lists the layers), a "
        "--preset for a known architecture (vilt, clip, ...), or Modality(name, input=...) in Python."
    )


def default_modalities(model: nn.Module, batch: Batch) -> list[Modality]:
    """One modality per model input when the forward takes the batch's keys by name (a dict
    batch) or its elements by position (a tuple batch, named after the forward's parameters):
    floating-point inputs as they are, integer inputs (token ids) at the layer that embeds
    them. Raises :class:`ModalityError` when the batch and the forward do not line up.

    Args:
        model: the model as biasscope calls it (after :func:`call_as`).
        batch: one batch of the data (label split off).
    """
    names, var_args, var_kwargs = _forward_parameters(model)
    if batch.kwargs:
        keys = list(batch.kwargs)
        if not var_kwargs and any(k.split(".")[0] not in names for k in keys):
            missing = ", ".join(k for k in keys if k.split(".")[0] not in names)
            hint = "; a forward that takes the whole batch as one argument needs --call batch" if len(names) == 1 else ""
            raise _refuse(f"the model's forward({', '.join(names)}) takes no input named {missing}{hint}", batch)
        pairs: list[tuple[str, str | int]] = [(str(k), k) for k in keys]
    else:
        if not var_args and len(batch.args) > len(names):
            raise _refuse(f"the forward takes {len(names)} inputs, the tuple batch holds {len(batch.args)}", batch)
        labels = names if not var_args else []
        pairs = [(labels[i] if i < len(labels) else f"input{i}", i) for i in range(len(batch.args))]
    out = []
    for name, key in pairs:
        value = batch.get_input(key)
        if not isinstance(value, Tensor) or value.dim() == 0 or value.shape[0] != batch.size:
            raise _refuse(f"input {key!r} is not a batch-first tensor", batch)
        if value.is_floating_point():
            out.append(Modality(name, input=key))
            continue
        layer = embedding_layer(model, batch, key)
        if layer is None:
            raise _refuse(f"input {key!r} holds integers that no layer embeds directly", batch)
        out.append(Modality(name, layer=layer))
    return out


def describe_default(modalities: list[Modality]) -> str:
    """The sentence that says where the modalities came from."""
    return "modalities taken from the data's keys: " + ", ".join(
        m.name if m.input is not None else f"{m.name} (at {m.layer}, the layer that embeds it)"
        for m in modalities
    )

