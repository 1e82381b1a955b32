"""The audit over ``torchrun`` processes: each process measures a contiguous share of the
examples (:func:`biasscope.runtime._distributed.shard`), and the per-example arrays are gathered
in global order before the summary, so the intervals are computed on the global arrays and
every process holds the single-process result (the noise belongs to the example)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ._state import MeasuredValues
from ..runtime._batch import Batch
from ..runtime._distributed import gather_rows, is_distributed
from .diagnostics import OutputCheck
from ..errors import DataLoadError

__all__ = ["local_batches", "gather_values", "gather_check"]


def local_batches(batches: Sequence[Batch], mine: range) -> list[Batch]:
    """The parts of ``batches`` (with their global ``index``) whose examples are in ``mine``."""
    if not len(mine):
        raise DataLoadError(
            "There are fewer examples than processes: give at least one example per process "
            "(or start fewer processes with torchrun --nproc-per-node)."
        )
    out = []
    for b in batches:
        lo, hi = int(b.index[0]), int(b.index[-1]) + 1
        start, stop = max(lo, mine.start), min(hi, mine.stop)
        if start < stop:
            out.append(b if (start, stop) == (lo, hi) else b.select(torch.arange(start - lo, stop - lo)))
    return out


def _gather(array: np.ndarray) -> np.ndarray:
    return gather_rows(torch.from_numpy(np.ascontiguousarray(array))).numpy()


def gather_values(values: MeasuredValues) -> MeasuredValues:
    """Every process's per-example arrays, concatenated in rank (= global) order."""
    if not is_distributed():
        return values
    return MeasuredValues(
        per_modality={name: {k: _gather(v) for k, v in per.items()} for name, per in values.per_modality.items()},
        joint={k: _gather(v) for k, v in values.joint.items()},
        predictions=_gather(values.predictions),
    )


def gather_check(check: OutputCheck) -> OutputCheck:
    """The output check with every process's predictions and labels."""
    if not is_distributed():
        return check
    pred = _gather(np.asarray(check.predictions, dtype=np.int64)).tolist()
    labels = None if check.labels is None else _gather(np.asarray(check.labels, dtype=np.int64)).tolist()
    return OutputCheck(width=check.width, other_width=check.other_width, other_size=check.other_size,
                       size=check.size, predictions=pred, labels=labels)
