"""State dicts and checkpoints (``.pt``/``.pth``/``.ckpt`` read with ``weights_only=True``,
``.safetensors``) loaded into the model a factory builds; saved back with the input's
checkpoint structure (wrapper dict, key prefix, other entries, key order)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._sources import call_factory, describe_obj
from ...errors import ModelLoadError
from . import pickled
from ._base import (
    SUPPORTED_MODELS, LoadedModel, LoadRequest, SaveRequest, atomic_file, corrupt, naming,
)
from ._keys import WRAPPER_KEYS, find_state_dict, load_into

KIND = "state_dict"


def load(p: Path, request: LoadRequest) -> LoadedModel:
    """Load a state dict or checkpoint into the factory's model (a ``torch.save`` file that
    holds a whole module goes to :mod:`.pickled`, when ``trust_pickle`` allows it)."""
    if p.suffix == ".safetensors":
        container, obj = "safetensors", _read_safetensors(p, request.map_location)
    else:
        container = "torch"
        obj = pickled.read_torch_file(
            p, map_location=request.map_location, trust_pickle=request.trust_pickle
        )
    if isinstance(obj, nn.Module):
        if request.forced:
            raise naming(ModelLoadError(
                f"{str(p)!r} holds a pickled module, not a state dict. Leave kind out (with "
                "trust_pickle the module is used as is)."
            ), "kind")
        return pickled.from_module(p, obj, request)
    found = find_state_dict(obj)
    if found is None:
        raise ModelLoadError(
            f"{str(p)!r} holds {describe_obj(obj)}, which is neither a state dict (a dict of "
            f"tensors) nor a checkpoint with one under {', '.join(map(repr, WRAPPER_KEYS))}. "
            f"Supported: {SUPPORTED_MODELS}."
        )
    wrapper_key, state = found
    module = _build(p, wrapper_key, state, request.factory)
    prefix = load_into(module, state, p, request.factory or "")
    module.to(request.map_location)
    model_keys = {prefix + k for k in module.state_dict()}
    rest = {k: v for k, v in state.items() if k not in model_keys}
    checkpoint: Any = rest if wrapper_key is None else {**obj, wrapper_key: rest}
    return LoadedModel(
        module=module, kind=KIND, path=p, sha256=request.digest, factory=request.factory,
        wrapper_key=wrapper_key, key_prefix=prefix, container=container,
        checkpoint=checkpoint, key_order=tuple(state),
    )


def _build(p: Path, wrapper_key: str | None, state: dict[str, Any], factory: str | None) -> nn.Module:
    """The untrained model from ``factory`` (an error naming what to pass when there is none)."""
    if factory is None:
        where = f"under {wrapper_key!r} " if wrapper_key else ""
        raise naming(ModelLoadError(
            f"{str(p)!r} is a state dict {where}({len(state)} tensors), which holds weights but "
            "not the model's code. Pass factory='package.module:function' or "
            "factory='path/to/model.py:function', a function with no arguments that builds the "
            "untrained model; or save the model as TorchScript or torch.export."
        ), "factory")
    module = call_factory(factory, error=ModelLoadError, what="model")
    if not isinstance(module, nn.Module):
        raise ModelLoadError(
            f"The model factory {factory!r} returned {describe_obj(module)}, not a "
            "torch.nn.Module. Make it return the (untrained) model instance."
        )
    return module


def _read_safetensors(p: Path, map_location: Any) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(p), device=str(map_location))
    except Exception as exc:
        raise corrupt(p, "a safetensors state dict", exc) from exc


def save(loaded: LoadedModel, module: nn.Module, out: Path, request: SaveRequest) -> None:
    """Write the weights in the input's container and checkpoint structure."""
    payload = _checkpoint_payload(loaded, module)
    if loaded.container == "safetensors":
        from safetensors.torch import save_file

        flat = {k: v.contiguous().clone() for k, v in payload.items()}
        atomic_file(out, lambda tmp: save_file(flat, str(tmp)))
    else:
        atomic_file(out, lambda tmp: torch.save(payload, tmp))


def _checkpoint_payload(loaded: LoadedModel, module: nn.Module) -> Any:
    module = getattr(module, "_orig_mod", module)  # torch.compile wrapper: save the model itself
    weights = {
        loaded.key_prefix + k: v.detach().cpu() if isinstance(v, Tensor) else v
        for k, v in module.state_dict().items()
    }
    previous = loaded.checkpoint if isinstance(loaded.checkpoint, Mapping) else {}
    rest = previous if loaded.wrapper_key is None else previous.get(loaded.wrapper_key, {})
    merged = {**rest, **weights}
    order = [k for k in loaded.key_order if k in merged]
    seen = set(order)
    state = {k: merged[k] for k in [*order, *(k for k in merged if k not in seen)]}
    if loaded.wrapper_key is None:
        return state
    return {**previous, loaded.wrapper_key: state}
