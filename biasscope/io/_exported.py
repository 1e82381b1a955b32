"""The adapter that makes a ``torch.export`` program's module callable like the original
model (no file I/O here: :mod:`biasscope.io.formats.export` reads and writes ``.pt2`` files)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ExportedModule"]


class ExportedModule(nn.Module):
    """A ``torch.export`` program's module, callable like the original: keyword inputs are
    passed by position when it was exported with positional ones, and a program exported
    with a static batch size runs on batches of any size, in slices of that size (the last
    padded with copies of its final row, trimmed after)."""

    #: the marker by which modality.is_compiled recognises this adapter (no import of it needed)
    _biasscope_exported = True

    def __init__(
        self, module: nn.Module, *, batch_size: int | None, arg_names: tuple[str, ...] | None
    ) -> None:
        super().__init__()
        self.module = module
        self.batch_size = batch_size
        self.arg_names = arg_names

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs and self.arg_names is not None and set(kwargs) <= set(self.arg_names[len(args):]):
            args = (*args, *(kwargs.pop(name) for name in self.arg_names[len(args):] if name in kwargs))
        tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, Tensor) and v.dim() > 0]
        n = int(tensors[0].shape[0]) if tensors else self.batch_size
        if self.batch_size is None or n == self.batch_size:
            return self.module(*args, **kwargs)
        outs, size = [], self.batch_size

        def piece(v: Any, start: int) -> Any:
            if not (isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == n):
                return v
            part = v[start : start + size]
            if part.shape[0] < size:
                part = torch.cat([part, part[-1:].expand(size - part.shape[0], *part.shape[1:])])
            return part

        for start in range(0, n, size):
            out = self.module(
                *(piece(a, start) for a in args), **{k: piece(v, start) for k, v in kwargs.items()}
            )
            outs.append(_map_tensors(out, lambda t, keep=min(size, n - start): t[:keep]))
        return _concat_outputs(outs)


def _map_tensors(out: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(out, Tensor):
        return fn(out) if out.dim() > 0 else out
    if isinstance(out, (tuple, list)):
        return type(out)(_map_tensors(o, fn) for o in out)
    if isinstance(out, Mapping):
        return {k: _map_tensors(v, fn) for k, v in out.items()}
    return out


def _concat_outputs(outs: list[Any]) -> Any:
    first = outs[0]
    if isinstance(first, Tensor):
        return torch.cat(outs) if first.dim() > 0 else first
    if isinstance(first, (tuple, list)):
        return type(first)(_concat_outputs([o[i] for o in outs]) for i in range(len(first)))
    if isinstance(first, Mapping):
        return {k: _concat_outputs([o[k] for o in outs]) for k in first}
    return first
