"""Modality specs and the one mechanism that touches a model: apply a transform to each
modality's representation (an input tensor, or a submodule's output via a forward hook)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..runtime._batch import Batch, run_model
from ..runtime._device import model_device
from ..errors import ModalityError

__all__ = [
    "Modality", "check_distinct_sites", "intervene", "is_compiled", "tensor_elements",
    "validate_modalities", "embedding_layer",
]

Transform = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Modality:
    """One modality: a ``name`` and where to perturb it.

    ``input`` names a model input (a keyword of a dict batch, or a positional index of a
    tuple batch); ``layer`` names a submodule (dotted path, as in ``model.get_submodule``)
    whose output is perturbed. Exactly one of the two is given. When the layer returns
    several tensors (a tuple, a dict, a ModelOutput), ``element`` picks one (an index or a
    key, e.g. ``Modality("text", layer="rnn", element=0)``). ``batch_dim`` says which
    dimension of a layer's output is the batch when it is not the first (a GRU's final
    hidden state ``(layers, batch, hidden)``: ``Modality("text", layer="rnn", element=1,
    batch_dim=1)``, on the command line ``text=layer:rnn#1@1``); the perturbation sees the
    representation with the batch moved to the front.
    """

    name: str
    input: str | int | None = None
    layer: str | None = None
    element: int | str | None = None
    batch_dim: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ModalityError(f"A modality needs a non-empty name, got {self.name!r}.")
        if (self.input is None) == (self.layer is None):
            raise ModalityError(
                f"Modality {self.name!r} needs exactly one of input=... (an input name or "
                "index) or layer=... (a submodule path), e.g. Modality('text', layer='encoders.text')."
            )
        if self.element is not None and self.layer is None:
            raise ModalityError(f"Modality {self.name!r}: element= applies to layer modalities only.")
        if isinstance(self.batch_dim, bool) or not isinstance(self.batch_dim, int) or self.batch_dim < 0:
            raise ModalityError(
                f"Modality {self.name!r}: batch_dim must be a dimension index >= 0, got "
                f"{self.batch_dim!r}."
            )
        if self.batch_dim and self.layer is None:
            raise ModalityError(
                f"Modality {self.name!r}: batch_dim= applies to layer modalities only; inputs "
                "must be batch-first (the batch is split, repeated and shuffled along dim 0)."
            )

    @property
    def site(self) -> str:
        """Where the modality is perturbed, as written on the command line."""
        if self.input is not None:
            return f"input:{self.input}"
        element = f"#{self.element}" if self.element is not None else ""
        return f"layer:{self.layer}{element}" + (f"@{self.batch_dim}" if self.batch_dim else "")

    @classmethod
    def parse(cls, spec: str) -> Modality:
        """Parse ``NAME=input:KEY_OR_INDEX`` or ``NAME=layer:dotted.path[#ELEMENT][@BATCH_DIM]``."""
        name, sep, where = spec.partition("=")
        kind, sep2, target = where.partition(":")
        if not sep or not sep2 or not name or not target.strip() or kind not in ("input", "layer"):
            raise ModalityError(
                f"Cannot read the modality {spec!r}: write NAME=input:KEY_OR_INDEX "
                "(e.g. image=input:0 or image=input:pixel_values) or NAME=layer:dotted.path, "
                "with #ELEMENT for a layer that returns several tensors and @DIM when the "
                "batch is not its first dimension (e.g. text=layer:encoders.text, "
                "text=layer:rnn#0, or text=layer:rnn#1@1 for a GRU's final hidden state)."
            )
        if kind == "input":
            return cls(name.strip(), input=_key(target.strip()))
        rest, at, dim = target.strip().rpartition("@") if "@" in target else (target.strip(), "", "")
        if at and not dim.isdigit():
            raise ModalityError(
                f"Cannot read the modality {spec!r}: @ takes the batch dimension of the layer's "
                f"output, a number (e.g. {name.strip()}=layer:rnn#1@1), not {dim!r}."
            )
        path, _, element = rest.partition("#")
        return cls(
            name.strip(), layer=path, element=_key(element) if element else None,
            batch_dim=int(dim) if at else 0,
        )


def _key(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def is_compiled(model: nn.Module) -> bool:
    """Whether ``model`` runs a compiled graph that forward hooks cannot see into: TorchScript,
    or biasscope's adapter for ``torch.export`` programs (recognised by its
    ``_biasscope_exported`` class attribute, so this module imports no loader)."""
    return isinstance(model, torch.jit.ScriptModule) or bool(
        getattr(type(model), "_biasscope_exported", False)
        or type(model).__name__ == "ExportedModule"
    )


def _resolve_layer(model: nn.Module, path: str, name: str) -> nn.Module:
    if is_compiled(model):
        raise ModalityError(
            f"Modality {name!r}: {type(model).__name__} models (TorchScript, torch.export) run "
            "compiled graphs that forward hooks cannot see into, so layer modalities are out of "
            "reach. Perturb float inputs (NAME=input:KEY), or load the model from its state "
            "dict with --factory to perturb layers such as embeddings."
        )
    names = [n for n, _ in model.named_modules() if n]
    if path not in names:
        close = difflib.get_close_matches(path, names, n=5, cutoff=0.5)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise ModalityError(
            f"Modality {name!r}: the model has no submodule {path!r}.{hint} "
            "Run `biasscope layers MODEL --data DATA` to list the module tree with output shapes."
        )
    return model.get_submodule(path)


def tensor_elements(output: Any) -> list[tuple[int | str | None, Tensor]]:
    """The tensors a module returned: ``[(None, t)]`` for a tensor, ``[(index, t), ...]`` for
    a tuple or list, ``[(key, t), ...]`` for a dict or ModelOutput."""
    if isinstance(output, Tensor):
        return [(None, output)]
    if isinstance(output, (tuple, list)):
        return [(i, v) for i, v in enumerate(output) if isinstance(v, Tensor)]
    if isinstance(output, Mapping) or hasattr(output, "keys"):
        return [(k, output[k]) for k in output.keys() if isinstance(output[k], Tensor)]
    return []


def _element_error(modality: Modality, output: Any, what: str, listing: str) -> ModalityError:
    return ModalityError(
        f"Modality {modality.name!r}: layer {modality.layer!r} returns {type(output).__name__} "
        f"with {what} ({listing}). Pick the one the model reads: "
        f"--modality {modality.name}=layer:{modality.layer}#ELEMENT, or "
        f"Modality({modality.name!r}, layer={modality.layer!r}, element=...)."
    )


def _batch_first(fn: Transform, modality: Modality) -> Transform:
    """``fn`` applied to the representation with its batch dimension moved to the front, the
    result moved back (``Modality.batch_dim``)."""
    dim = modality.batch_dim
    if dim == 0:
        return fn

    def moved(h: Tensor) -> Tensor:
        if h.dim() <= dim:
            raise ModalityError(
                f"Modality {modality.name!r}: {modality.site} names batch dimension {dim}, but "
                f"the output has shape {tuple(h.shape)} ({h.dim()} dimensions). `biasscope "
                "layers` shows each output's shape and where its batch is."
            )
        return fn(h.movedim(dim, 0)).movedim(0, dim)

    return moved


def _replace_element(output: Any, fn: Transform, modality: Modality) -> Any:
    fn = _batch_first(fn, modality)
    elements = tensor_elements(output)
    if len(elements) == 1 and elements[0][0] is None:
        if modality.element is not None:
            raise ModalityError(
                f"Modality {modality.name!r}: layer {modality.layer!r} returns a single tensor "
                f"{tuple(output.shape)}, so it has no element #{modality.element}. Drop the "
                f"#{modality.element}: --modality {modality.name}=layer:{modality.layer}, or "
                f"Modality({modality.name!r}, layer={modality.layer!r})."
            )
        return fn(output)
    keys = [k for k, _ in elements]
    listing = ", ".join(f"#{k} {tuple(t.shape)}" for k, t in elements) or "no tensor"
    if modality.element is None and len(elements) == 1:
        key = keys[0]
    elif modality.element in keys:
        key = modality.element
    else:
        what = "several tensors" if modality.element is None else f"no element {modality.element!r}"
        raise _element_error(modality, output, what, listing)
    if isinstance(output, (tuple, list)):
        items = list(output)
        items[key] = fn(items[key])
        return type(output)(items) if not hasattr(output, "_fields") else type(output)(*items)
    output[key] = fn(output[key])
    return output


def check_distinct_sites(modalities: Iterable[Modality]) -> None:
    """Refuse two modalities on one site: the same input, or the same layer and element (a
    layer named without an element clashes with any element of it)."""
    seen: dict[Any, Modality] = {}
    layers: dict[str, list[Modality]] = {}
    for m in modalities:
        if m.input is not None:
            other = seen.get(("input", m.input))
            seen.setdefault(("input", m.input), m)
        else:
            same = layers.setdefault(m.layer, [])
            other = next((o for o in same if None in (o.element, m.element) or o.element == m.element), None)
            same.append(m)
        if other is not None:
            raise ModalityError(
                f"Modalities {other.name!r} ({other.site}) and {m.name!r} ({m.site}) name the "
                "same site, so they would be one modality counted twice. Give each modality its "
                "own input or layer (`biasscope layers` lists the layers and their outputs)."
            )


@contextmanager
def intervene(
    model: nn.Module, batch: Batch, transforms: Mapping[Modality, Transform]
) -> Iterator[Batch]:
    """Yield the batch to run ``model`` on, with each transform applied at its modality's
    site during that forward pass (input modalities are transformed in the batch; layer
    modalities by a forward hook, removed on exit). A layer must run exactly once per pass."""
    check_distinct_sites(transforms)
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
                return _replace_element(output, _fn, _m)

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


def validate_modalities(
    batch: Batch, modalities: Sequence[Modality], *, perturbable: bool = True
) -> None:
    """Check names are unique and input modalities exist as batch-first tensors, floating
    point when they are to take Gaussian noise (``perturbable``; permuting needs no float)."""
    if not modalities:
        raise ModalityError(
            "No modality given: name at least one, e.g. --modality image=input:0 or "
            "Modality('image', input='image')."
        )
    names = [m.name for m in modalities]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ModalityError(f"Modality names must be unique; repeated: {', '.join(dupes)}.")
    check_distinct_sites(modalities)
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
        if not isinstance(value, Tensor) or value.dim() == 0 or value.shape[0] != batch.size:
            raise ModalityError(
                f"Modality {m.name!r}: input {m.input!r} is not a batch-first tensor, so it "
                "cannot be perturbed or permuted across examples."
            )
        if perturbable and not value.is_floating_point():
            raise ModalityError(
                f"Modality {m.name!r}: input {m.input!r} holds integers ({value.dtype}), e.g. "
                "token ids, which cannot take Gaussian noise. Perturb the layer that embeds "
                "them instead: Modality(name, layer='path.to.embeddings') or "
                f"--modality {m.name}=layer:path.to.embeddings."
            )


def embedding_layer(model: nn.Module, batch: Batch, key: str | int) -> str | None:
    """The path of the layer that embeds the integer input ``key``: the innermost submodule
    that receives that very tensor and returns floats shaped like it plus feature dimensions
    (found in one forward pass); None when no layer does."""
    batch = batch.to(model_device(model))
    ids = batch.get_input(key)
    found: list[str] = []

    def hook(name: str):
        def fn(_module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            takes = any(a is ids for a in (*args, *kwargs.values()))
            if takes and isinstance(output, Tensor) and output.is_floating_point() \
                    and output.shape[: ids.dim()] == ids.shape and output.dim() > ids.dim():
                found.append(name)  # post-hooks complete innermost first

        return fn

    handles = [m.register_forward_hook(hook(n), with_kwargs=True) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            run_model(model, batch)
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None
