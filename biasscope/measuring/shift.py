"""Accuracy on shifted data: labelled examples where the suspected shortcut is broken
(decorrelated), or simply a later or other-source sample. From in-distribution data alone
no tool can tell which of two modalities is the shortcut; a shifted set can, so ``fix`` keeps
the weights that score best on it, and the audits and ``compare`` report and gate on it
(docs/benchmarks.md, "Shifted data")."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ..runtime._batch import Batch, OutputSpec, call_model, split_batch
from ..runtime._device import model_device, on_device
from ..errors import DataLoadError

__all__ = ["shift_accuracy", "shift_batches"]


def shift_batches(data: Iterable[Any], *, label_key: str | None = "label") -> list[Batch]:
    """The shifted data as labelled :class:`Batch` es; refuses unlabelled or empty data."""
    batches = [split_batch(b, label_key=label_key) for b in data]
    if not batches or not any(b.size for b in batches):
        raise DataLoadError("The shifted data (shift_data, --shift-data) holds no example.")
    if any(b.label is None for b in batches):
        raise DataLoadError(
            f"The shifted data (shift_data, --shift-data) has no labels under {label_key!r}: "
            "its accuracy is what it is for, so give labelled examples (--label-key names the column)."
        )
    return batches


@torch.no_grad()
def shift_accuracy(
    model: nn.Module,
    batches: Sequence[Batch],
    *,
    output: OutputSpec | None = None,
    device: torch.device | None = None,
) -> float:
    """The model's accuracy over ``batches`` (from :func:`shift_batches`), in eval mode; the
    model goes back to its device and mode after."""
    device = device or model_device(model)
    correct = total = 0
    with on_device(model, device):
        for b in batches:
            moved = b.to(device)
            logits = call_model(model, moved, output or OutputSpec())
            correct += int((logits.argmax(dim=1) == moved.label).sum())
            total += moved.size
    return correct / total
