"""The training batches of a fix run: reshuffled by example each epoch from the seed, so a
resumed run sees the same order."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from ..runtime._batch import Batch, split_batch
from ..errors import DataLoadError

__all__ = ["TrainingData", "first_examples", "with_last"]


def _concat(batches: list[Batch]) -> Batch | None:
    """All examples of ``batches`` as one Batch, or None when they cannot be concatenated
    (different structure or feature shapes)."""
    first = batches[0]

    def batched(v: Any, b: Batch) -> bool:
        return isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == b.size

    def cat(values: list[Any], owners: list[Batch]) -> Any:
        if not all(batched(v, b) for v, b in zip(values, owners, strict=True)):
            if any(batched(v, b) for v, b in zip(values, owners, strict=True)):
                raise ValueError
            return values[0]  # not per-example: keep the first batch's
        if any(v.shape[1:] != values[0].shape[1:] or v.dtype != values[0].dtype for v in values):
            raise ValueError
        return torch.cat(values, dim=0)

    try:
        if any(
            len(b.args) != len(first.args) or b.kwargs.keys() != first.kwargs.keys()
            for b in batches
        ):
            raise ValueError
        if any((b.label is None) != (first.label is None) for b in batches):
            raise ValueError
        args = tuple(cat([b.args[i] for b in batches], batches) for i in range(len(first.args)))
        kwargs = {k: cat([b.kwargs[k] for b in batches], batches) for k in first.kwargs}
        label = torch.cat([b.label for b in batches]) if first.label is not None else None
    except ValueError:
        return None
    return Batch(args, kwargs, label, sum(b.size for b in batches))


class TrainingData:
    """Training batches per epoch. A list/tuple of batches is reshuffled each epoch by
    example (a generator seeded from ``seed`` and the epoch, so a resumed run sees the same
    order), re-split into batches of the first batch's size; any other iterable is iterated
    as it is each epoch."""

    def __init__(
        self, data: Iterable[Any], *, label_key: str | None, seed: int, shuffle: bool
    ) -> None:
        self.label_key, self.seed = label_key, seed
        self.batches: list[Batch] | None = None
        self.full: Batch | None = None
        if iter(data) is data:  # a one-shot iterator: keep its batches for every epoch
            data = list(data)
        self.iterable = data
        if isinstance(data, (list, tuple)) and data and not isinstance(data[0], Tensor):
            self.batches = [split_batch(b, label_key=label_key) for b in data]
            if shuffle:
                self.full = _concat(self.batches)
            self.shuffle = shuffle
            self.batch_size = self.batches[0].size
        elif isinstance(data, (list, tuple)) and not data:
            raise DataLoadError("The training data is empty: it holds no batch.")

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch (0 when the iterable has no length)."""
        if self.full is not None:
            return -(-self.full.size // self.batch_size)
        if self.batches is not None:
            return len(self.batches)
        try:
            return len(self.iterable)  # type: ignore[arg-type]
        except TypeError:
            return 0

    def epoch(self, epoch: int) -> Iterator[Batch]:
        if self.batches is None:
            for raw in self.iterable:
                yield split_batch(raw, label_key=self.label_key)
            return
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.full is not None:
            order = torch.randperm(self.full.size, generator=g)
            for start in range(0, self.full.size, self.batch_size):
                yield self.full.select(order[start : start + self.batch_size])
        elif self.shuffle:
            for i in torch.randperm(len(self.batches), generator=g).tolist():
                yield self.batches[i]
        else:
            yield from self.batches


def with_last(items: Iterable[Any]) -> Iterator[tuple[int, Any, bool]]:
    """(index, item, is_last) with one item of lookahead."""
    it = iter(items)
    try:
        current = next(it)
    except StopIteration:
        return
    i = 0
    for nxt in it:
        yield i, current, False
        current, i = nxt, i + 1
    yield i, current, True


def first_examples(batches: Iterable[Batch], n: int) -> list[Batch]:
    """The first ``n`` examples of ``batches`` (the last batch cut to fit)."""
    out: list[Batch] = []
    count = 0
    for b in batches:
        if count >= n:
            break
        take = min(b.size, n - count)
        out.append(b if take == b.size else b.select(torch.arange(take)))
        count += take
    return out
