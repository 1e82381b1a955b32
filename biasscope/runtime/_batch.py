"""Batches and model calls: split a batch into model inputs and labels, repeat it for K
noise samples, move it between devices, and read logits out of whatever the model returns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import BiasscopeError, DataLoadError, ModelOutputError

__all__ = [
    "Batch", "OutputSpec", "split_batch", "run_model", "call_model", "logits_from_output", "find_output",
    "nest_inputs",
]


@dataclass(frozen=True)
class Batch:
    """Model inputs of one batch: positional ``args``, keyword ``kwargs``, optional ``label``,
    and optionally ``index``: the examples' global positions in the dataset (int64 (size,),
    on CPU), which key their random draws (:mod:`biasscope.measuring._noise`)."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    label: Tensor | None
    size: int
    index: Tensor | None = None

    def map_tensors(self, fn) -> Batch:
        """Apply ``fn`` to every tensor whose first dimension is the batch dimension."""

        def one(v: Any) -> Any:
            if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == self.size:
                return fn(v)
            return v

        label = fn(self.label) if self.label is not None else None
        return Batch(
            tuple(one(a) for a in self.args),
            {k: one(v) for k, v in self.kwargs.items()},
            label,
            self.size,
            self.index,
        )

    def to(self, device: torch.device | str) -> Batch:
        moved = self.map_tensors(lambda t: t.to(device))
        # tensors without a batch dimension still need to follow the model
        args = tuple(a.to(device) if isinstance(a, Tensor) else a for a in moved.args)
        kwargs = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in moved.kwargs.items()}
        return replace(moved, args=args, kwargs=kwargs)

    def repeat(self, k: int) -> Batch:
        """The batch repeated ``k`` times, sample-major: row ``s * size + i`` is example ``i``
        (``index`` stays the ``size`` examples' indices)."""
        if k == 1:
            return self
        out = self.map_tensors(lambda t: t.repeat(k, *([1] * (t.dim() - 1))))
        return replace(out, size=self.size * k)

    def select(self, index: Tensor) -> Batch:
        """The rows ``index`` of the batch (used to permute or subsample)."""
        out = self.map_tensors(lambda t: t[index.to(t.device)])
        kept = self.index[index.to(self.index.device)] if self.index is not None else None
        return replace(out, size=int(index.numel()), index=kept)

    def get_input(self, key: str | int) -> Tensor:
        if isinstance(key, int):
            return self.args[key]
        return self.kwargs[key]

    def with_input(self, key: str | int, value: Tensor) -> Batch:
        if isinstance(key, int):
            args = list(self.args)
            args[key] = value
            return replace(self, args=tuple(args))
        return replace(self, kwargs={**self.kwargs, key: value})

    @property
    def input_names(self) -> list[str | int]:
        return [*range(len(self.args)), *self.kwargs]


@dataclass(frozen=True)
class OutputSpec:
    """Where the logits are in the model's output (a tensor, a dict/ModelOutput, a tuple),
    and what they hold (``kind``: :data:`biasscope.measuring.output_kinds.OUTPUT_KINDS`)."""

    key: str = "logits"
    index: int | None = None
    kind: str = "auto"


def _batch_size(tensors: Sequence[Any]) -> int:
    for t in tensors:
        if isinstance(t, Tensor) and t.dim() > 0:
            return int(t.shape[0])
    raise DataLoadError(
        "A batch holds no tensor with a batch dimension. Each batch must be a dict of "
        "tensors or a tuple of tensors whose first dimension is the batch."
    )


def split_batch(batch: Any, *, label_key: str | None = "label") -> Batch:
    """Split a dict batch (``model(**inputs)``, label under ``label_key``) or a tuple batch
    (``model(*inputs)``, label last) into a :class:`Batch`.

    ``label_key=None`` means the batch has no label (a dict keeps every entry; a tuple
    passes every element to the model).
    """
    if isinstance(batch, Batch):
        return batch
    if isinstance(batch, Mapping):
        kwargs = dict(batch)
        label = kwargs.pop(label_key, None) if label_key is not None else None
        kwargs = _flatten(kwargs)
        if not kwargs:
            raise DataLoadError(
                f"A dict batch holds only the label {label_key!r}; it needs the model's inputs too."
            )
        size = _batch_size(list(kwargs.values()))
        return Batch((), kwargs, _as_label(label), size)
    if isinstance(batch, (tuple, list)):
        items = list(batch)
        if label_key is not None and len(items) >= 2:
            label, items = items[-1], items[:-1]
        else:
            label = None
        if not items:
            raise DataLoadError("An empty tuple batch: it needs the model's inputs (label last).")
        return Batch(tuple(items), {}, _as_label(label), _batch_size(items))
    if isinstance(batch, Tensor):
        return Batch((batch,), {}, None, _batch_size([batch]))
    raise DataLoadError(
        f"A batch of type {type(batch).__name__} is not supported: use a dict of tensors "
        "(model(**batch), label under 'label') or a tuple of tensors (model(*batch), label last)."
    )


def _flatten(inputs: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts of inputs as one level with dotted keys (``{"a": {"b": x}}`` ->
    ``{"a.b": x}``), so that a modality names ``input:a.b``; :func:`nest_inputs` undoes it."""
    out: dict[str, Any] = {}
    for key, value in inputs.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def nest_inputs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys back to nested dicts: the keyword arguments the model is called with."""
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        *parents, leaf = str(key).split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _as_label(label: Any) -> Tensor | None:
    """Class indices where the label is one: (N, 1) is squeezed, one-hot rows become their
    argmax, integral floats become int64; anything else is returned as is."""
    if label is None:
        return None
    label = torch.as_tensor(label)
    if label.dim() == 2 and label.shape[1] == 1:
        label = label[:, 0]
    elif label.dim() == 2 and label.numel() and ((label == 0) | (label == 1)).all() and (label.sum(1) == 1).all():
        label = label.argmax(dim=1)
    if label.is_floating_point() and label.dim() == 1 and torch.all(label == label.round()):
        label = label.long()
    elif not label.is_floating_point() and not label.is_complex() and label.dtype != torch.int64:
        label = label.long()  # int8/16/32, uint8..64, bool: class indices, as gather() needs
    return label


def logits_from_output(output: Any, spec: OutputSpec = OutputSpec()) -> Tensor:
    """The (N, C) logits in ``output``; a single logit (N,) or (N, 1) becomes two classes
    ``[0, x]`` so that softmax gives ``[1 - sigmoid(x), sigmoid(x)]``; probabilities
    (``spec.kind == "probs"``) become their log; multi-label and regression outputs are kept
    as (N, C) (:mod:`biasscope.measuring.output_kinds`)."""
    found = _find_logits(output, spec)
    if not isinstance(found, Tensor) or not found.is_floating_point():
        raise ModelOutputError(
            f"The model's output holds no floating-point logits ({_describe(output)}). "
            "Choose them with --output-key NAME (dict/ModelOutput) or --output-index I (tuple)."
        )
    if spec.kind in ("multilabel", "regression"):
        found = found.reshape(found.shape[0], -1) if found.dim() == 2 else found.reshape(-1, 1)
    elif found.dim() == 1 or (found.dim() == 2 and found.shape[1] == 1):
        x = found.reshape(-1, 1)
        found = torch.cat([torch.zeros_like(x), x], dim=1)
    if found.dim() != 2:
        raise ModelOutputError(
            f"The model's logits have shape {tuple(found.shape)}; biasscope needs (batch, classes). "
            "Wrap the model so that it returns one row of class scores per example."
        )
    if spec.kind == "probs":
        found = found.clamp_min(torch.finfo(found.dtype).tiny).log()
    return found


def _find_logits(output: Any, spec: OutputSpec) -> Any:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping) or hasattr(output, "keys"):
        keys = list(output.keys())
        if spec.key in keys:
            return output[spec.key]
        raise ModelOutputError(
            f"The model returned a mapping without {spec.key!r} (it holds {keys}). "
            "Pass --output-key with the entry that holds the logits."
        )
    if isinstance(output, (tuple, list)):
        index = spec.index if spec.index is not None else 0
        if not -len(output) <= index < len(output):
            raise ModelOutputError(
                f"The model returned a {len(output)}-tuple; --output-index {index} is out of range."
            )
        return output[index]
    return output


def _describe(output: Any) -> str:
    if isinstance(output, Tensor):
        return f"a {output.dtype} tensor of shape {tuple(output.shape)}"
    if isinstance(output, Mapping) or hasattr(output, "keys"):
        return "a mapping with keys " + ", ".join(
            f"{k}: {_describe(v)}" for k, v in output.items()
        )
    if isinstance(output, (tuple, list)):
        return f"a {len(output)}-tuple of [" + "; ".join(_describe(v) for v in output) + "]"
    return f"a {type(output).__name__}"


def find_output(model: nn.Module, batch: Batch, spec: OutputSpec = OutputSpec()) -> Tensor:
    """The output tensor ``spec`` points at, as the model returns it (no conversion)."""
    found = _find_logits(run_model(model, batch), spec)
    if not isinstance(found, Tensor):
        return logits_from_output(found, spec)  # raises the message that says what is there
    return found


def run_model(model: nn.Module, batch: Batch) -> Any:
    """``model(*args, **kwargs)``, with a clear error when the model rejects the inputs."""
    try:
        return model(*batch.args, **nest_inputs(batch.kwargs))
    except BiasscopeError:
        raise
    except Exception as exc:  # any failure inside a user's forward is a user-input problem
        shapes = ", ".join(
            f"{k}: {tuple(v.shape)} {v.dtype}" if isinstance(v, Tensor) else f"{k}: {type(v).__name__}"
            for k, v in [*enumerate(batch.args), *batch.kwargs.items()]
        )
        raise ModelOutputError(
            f"The model rejected its inputs ({type(exc).__name__}: {exc}). It was called with "
            f"[{shapes}]. Check that the data matches the model (dict batches call model(**batch) "
            "without the label; tuple batches call model(*batch[:-1])); a model called another "
            "way takes --call batch|positional or --adapter module:function."
        ) from exc


def call_model(model: nn.Module, batch: Batch, spec: OutputSpec = OutputSpec()) -> Tensor:
    """Run the model on the batch and return its (N, C) logits."""
    return logits_from_output(run_model(model, batch), spec)
