"""Modality specs and the one mechanism that touches a model: apply a transform to each
modality's representation (an input tensor, or a submodule's output via a forward hook)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ._batch import Batch
from .errors import ModalityError

__all__ = ["Modality", "intervene", "validate_modalities"]

Transform = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Modality:
    """One modality: a ``name`` and where to perturb it.

    ``input`` names a model input (a keyword of a dict batch, or a positional index of a
    tuple batch); ``layer`` names a submodule (dotted path, as in ``model.get_submodule``)
    whose output is perturbed. Exactly one of the two is given.
    """

    name: str
    input: str | int | None = None
    layer: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ModalityError(f"A modality needs a non-empty name, got {self.name!r}.")
        if (self.input is None) == (self.layer is None):
            raise ModalityError(
                f"Modality {self.name!r} needs exactly one of input=... (an input name or "
                "index) or layer=... (a submodule path), e.g. Modality('text', layer='encoders.text')."
            )

    @property
    def site(self) -> str:
        """Where the modality is perturbed, as written on the command line."""
        return f"input:{self.input}" if self.input is not None else f"layer:{self.layer}"

    @classmethod
    def parse(cls, spec: str) -> Modality:
        """Parse ``NAME=input:KEY_OR_INDEX`` or ``NAME=layer:dotted.path``."""
        name, sep, where = spec.partition("=")
        kind, sep2, target = where.partition(":")
        if not sep or not sep2 or not name or not target or kind not in ("input", "layer"):
            raise ModalityError(
                f"Cannot read the modality {spec!r}: write NAME=input:KEY_OR_INDEX "
                "(e.g. image=input:0 or text=input:input_ids... for float inputs) or "
                "NAME=layer:dotted.path (e.g. text=layer:encoders.text)."
            )
        if kind == "layer":
            return cls(name.strip(), layer=target.strip())
        target = target.strip()
        return cls(name.strip(), input=int(target) if target.lstrip("-").isdigit() else target)


def _resolve_layer(model: nn.Module, path: str, name: str) -> nn.Module:
    names = [n for n, _ in model.named_modules() if n]
    if path not in names:
        close = difflib.get_close_matches(path, names, n=5, cutoff=0.5)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise ModalityError(
            f"Modality {name!r}: the model has no submodule {path!r}.{hint} "
            "Run `biasscope layers MODEL --data DATA` to list the module tree with output shapes."
        )
    return model.get_submodule(path)


def _replace_first_tensor(output: Any, fn: Transform) -> Any:
    if isinstance(output, Tensor):
        return fn(output)
    if isinstance(output, tuple) and not hasattr(output, "_fields"):
        items = list(output)
        for i, item in enumerate(items):
            if isinstance(item, Tensor):
                items[i] = fn(item)
                return type(output)(items)
    if isinstance(output, list):
        return _replace_first_tensor(tuple(output), fn)
    if isinstance(output, Mapping) or hasattr(output, "keys"):
        for key in output.keys():
            if isinstance(output[key], Tensor):
                output[key] = fn(output[key])
                return output
    raise ModalityError(
        f"A layer returned {type(output).__name__}, which holds no tensor to perturb; "
        "name a submodule that returns a tensor."
    )


@contextmanager
def intervene(
    model: nn.Module, batch: Batch, transforms: Mapping[Modality, Transform]
) -> Iterator[Batch]:
    """Yield the batch to run ``model`` on, with each transform applied at its modality's
    site during that forward pass (input modalities are transformed in the batch; layer
    modalities by a forward hook, removed on exit). A layer must run exactly once per pass."""
    handles = []
    calls: dict[str, int] = {}
    try:
        for modality, fn in transforms.items():
            if modality.input is not None:
                batch = batch.with_input(modality.input, fn(batch.get_input(modality.input)))
                continue
            module = _resolve_layer(model, modality.layer, modality.name)

            def hook(_module, _args, output, *, _fn=fn, _m=modality):
                calls[_m.name] = calls.get(_m.name, 0) + 1
                if calls[_m.name] > 1:
                    raise ModalityError(
                        f"Modality {_m.name!r}: layer {_m.layer!r} runs more than once per "
                        "forward pass (a shared module); name a submodule that runs once."
                    )
                return _replace_first_tensor(output, _fn)

            try:
                handles.append(module.register_forward_hook(hook))
            except Exception as exc:  # TorchScript modules refuse hooks
                raise ModalityError(
                    f"Modality {modality.name!r}: cannot hook layer {modality.layer!r} of a "
                    f"{type(model).__name__} ({exc}). TorchScript and torch.export models support "
                    "input modalities only; load the model from a state dict with --factory to "
                    "perturb layers."
                ) from exc
        yield batch
    finally:
        for h in handles:
            h.remove()
    for modality in transforms:
        if modality.layer is not None and calls.get(modality.name, 0) == 0:
            raise ModalityError(
                f"Modality {modality.name!r}: the forward pass never reached layer "
                f"{modality.layer!r}, so it cannot be perturbed. Choose a layer that runs "
                "(`biasscope layers` marks those that do); compiled/exported graphs inline "
                "their submodules, so use an input modality or load an nn.Module instead."
            )


def validate_modalities(batch: Batch, modalities: Sequence[Modality]) -> None:
    """Check names are unique and input modalities exist and are floating point."""
    if not modalities:
        raise ModalityError(
            "No modality given: name at least one, e.g. --modality image=input:0 or "
            "Modality('image', input='image')."
        )
    names = [m.name for m in modalities]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ModalityError(f"Modality names must be unique; repeated: {', '.join(dupes)}.")
    for m in modalities:
        if m.input is None:
            continue
        available = batch.input_names
        if m.input not in available:
            raise ModalityError(
                f"Modality {m.name!r}: the batch has no input {m.input!r}; it has "
                f"{', '.join(map(repr, available))} (dict batches by key, tuple batches by index)."
            )
        value = batch.get_input(m.input)
        if not isinstance(value, Tensor):
            raise ModalityError(f"Modality {m.name!r}: input {m.input!r} is not a tensor.")
        if not value.is_floating_point():
            raise ModalityError(
                f"Modality {m.name!r}: input {m.input!r} holds integers ({value.dtype}), e.g. "
                "token ids, which cannot take Gaussian noise. Perturb the layer that embeds "
                "them instead: Modality(name, layer='path.to.embeddings') or "
                f"--modality {m.name}=layer:path.to.embeddings."
            )
