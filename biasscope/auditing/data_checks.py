"""Data checks run before the audit, reported as :class:`~biasscope.results.Diagnostic` s.

None aborts except where no audit number could be meaningful, which raise
:class:`~biasscope.errors.DataLoadError`:

- non-finite values (nan, inf) in a modality's input: the noise scale, every divergence
  and every permutation become nan;
- labels outside the model's class range 0..n_classes-1: the likelihood, accuracy and
  every reliance measure are undefined.

The others are diagnostics (code, severity):

- ``label_balance`` (info): the class counts and the majority-class rate (chance);
  ``labels_imbalanced`` (warning) when the rarest class is 10x rarer than the commonest,
  ``single_class`` (warning) when one class holds every example;
- ``constant_features`` (info; warning over half): features of a modality constant over
  the data (they get zero noise, sigma = 0, and are never perturbed);
- ``modality_constant`` (error): a modality identical in every example: nothing can be
  measured about it (noise scale 0, permutation a no-op);
- ``duplicate_examples`` (info; warning over 10%): examples identical in every input,
  with ``duplicates_conflicting_labels`` (warning) when copies disagree on the label;
- ``non_finite_input`` (warning): nan/inf in an input that is not a modality;
- ``duplicate_modalities`` (warning): two modalities carrying the same data (equal, or
  correlated above 0.999 feature by feature): shuffling one alone leaves the other, so its
  permutation drop understates its use (the Shapley values share the joint effect).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ..runtime._batch import Batch
from ..errors import DataLoadError
from ..measuring.modality import Modality
from ..results import Diagnostic

__all__ = [
    "data_checks", "duplicate_modality_checks", "label_checks", "feature_checks", "std_checks", "duplicate_checks", "finite_checks",
]

#: a feature is near-constant when its std is below this times (1 + |mean|)
NEAR_CONSTANT = 1e-6
IMBALANCE_RATIO = 10.0
DUPLICATE_WARNING = 0.1


def _tensors(batch: Batch) -> list[tuple[str | int, Tensor]]:
    return [(k, v) for k in batch.input_names if isinstance(v := batch.get_input(k), Tensor)]


def finite_checks(batches: Sequence[Batch], modalities: Sequence[Modality]) -> list[Diagnostic]:
    """Raise for nan/inf in a modality's input; warn for nan/inf in any other input."""
    inputs = {m.input: m.name for m in modalities if m.input is not None}
    bad: dict[str | int, int] = {}
    for batch in batches:
        for key, v in _tensors(batch):
            if v.is_floating_point() or v.is_complex():
                count = int((~torch.isfinite(v)).sum())
                if count:
                    bad[key] = bad.get(key, 0) + count
    for key, count in bad.items():
        if key in inputs:
            raise DataLoadError(
                f"Modality {inputs[key]!r}: input {key!r} holds {count} non-finite values (nan or "
                "inf), so no noise scale, divergence or permutation of it can be computed. Clean "
                "or impute them (e.g. torch.nan_to_num) before the audit."
            )
    return [
        Diagnostic(
            "non_finite_input", "warning",
            f"Input {key!r} holds {count} non-finite values (nan or inf).",
            "Clean or impute them unless the model handles them on purpose.",
        )
        for key, count in bad.items()
    ]


def label_checks(labels: Tensor | None, *, n_classes: int | None = None) -> list[Diagnostic]:
    """Label balance and chance; raise for labels outside 0..n_classes-1."""
    if labels is None or labels.numel() == 0:
        return []
    labels = labels.reshape(-1).long().cpu()
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or (n_classes is not None and high >= n_classes):
        classes = f"0..{n_classes - 1}" if n_classes is not None else "non-negative indices"
        raise DataLoadError(
            f"Labels range over [{low}, {high}] but the model's classes are {classes}; labels "
            "must be class indices (check label_key, or map the labels to 0..C-1)."
        )
    values, counts = np.unique(labels.numpy(), return_counts=True)
    chance = float(counts.max() / counts.sum())
    listing = ", ".join(f"{int(v)}: {int(c)}" for v, c in zip(values, counts))
    out = [Diagnostic(
        "label_balance", "info",
        f"{len(values)} classes ({listing}); the majority class holds {100 * chance:.1f}% of "
        "the examples: the accuracy of always guessing it (chance).",
    )]
    if len(values) == 1:
        out.append(Diagnostic(
            "single_class", "warning",
            f"Every example has label {int(values[0])}: accuracy says nothing about reliance.",
            "Audit on data with several classes (e.g. the validation split).",
        ))
    elif counts.max() >= IMBALANCE_RATIO * counts.min():
        out.append(Diagnostic(
            "labels_imbalanced", "warning",
            f"The rarest class has {int(counts.min())} examples, the commonest {int(counts.max())}: "
            "accuracy drops are dominated by the common classes.",
            "Read the per-class means, or audit on a class-balanced sample.",
        ))
    return out


def _constant_diagnostics(name: str, constant: Tensor) -> list[Diagnostic]:
    """The diagnostics of one modality from its per-feature "constant" mask."""
    fraction = float(constant.double().mean()) if constant.numel() else 0.0
    if fraction == 1.0:
        return [Diagnostic(
            "modality_constant", "error",
            f"`{name}` is the same in every example: its noise scale is 0 and shuffling it "
            "changes nothing, so no measure of it means anything.",
            f"Check that `{name}` is loaded (not a placeholder) and that its site is the right one.",
            name,
        )]
    if fraction > 0:
        return [Diagnostic(
            "constant_features", "warning" if fraction > 0.5 else "info",
            f"{100 * fraction:.1f}% of the features of `{name}` ({int(constant.sum())} of "
            f"{constant.numel()}) are (near-)constant over the data: they get no noise.",
            "Expected for padding or image borders; otherwise check the preprocessing.",
            name,
        )]
    return []


def feature_checks(representations: Mapping[str, Tensor | None]) -> list[Diagnostic]:
    """Constant features and constant modalities, from each modality's (N, *feat) values
    (a feature is constant when its std <= NEAR_CONSTANT x (1 + |mean|))."""
    out = []
    for name, h in representations.items():
        if h is None or h.shape[0] < 2:
            continue
        x = h.detach().reshape(h.shape[0], -1).double().cpu()
        std, mean = x.std(dim=0, unbiased=False), x.mean(dim=0)
        out += _constant_diagnostics(name, std <= NEAR_CONSTANT * (1 + mean.abs()))
    return out


def std_checks(stds: Mapping[str, Tensor]) -> list[Diagnostic]:
    """The same checks from per-feature standard deviations alone (the audit's noise
    scales, e.g. for layer sites): constant when std <= NEAR_CONSTANT."""
    return [d for name, std in stds.items() for d in _constant_diagnostics(name, std.detach().cpu() <= NEAR_CONSTANT)]


def _row_digests(batch: Batch) -> list[bytes]:
    """One digest per example over every batch-first input tensor."""
    hashes = [hashlib.blake2b(digest_size=16) for _ in range(batch.size)]
    for key, v in _tensors(batch):
        if v.dim() == 0 or v.shape[0] != batch.size:
            continue
        v = v.detach().cpu()
        if v.dtype in (torch.bfloat16, torch.float16):  # numpy has no bfloat16: widen (exact)
            v = v.float()
        rows = v.contiguous().reshape(batch.size, -1).numpy()
        for h, row in zip(hashes, rows):
            h.update(str(key).encode() + str(row.shape).encode() + row.tobytes())
    return [h.digest() for h in hashes]


def duplicate_checks(batches: Sequence[Batch]) -> list[Diagnostic]:
    """Examples identical in every input, and copies that disagree on the label."""
    seen: dict[bytes, set[int | None]] = {}
    n = 0
    for batch in batches:
        labels = batch.label.reshape(-1).tolist() if batch.label is not None and batch.label.dim() else None
        for i, d in enumerate(_row_digests(batch)):
            seen.setdefault(d, set()).add(labels[i] if labels is not None and i < len(labels) else None)
            n += 1
    duplicates = n - len(seen)
    if duplicates == 0:
        return []
    fraction = duplicates / n
    out = [Diagnostic(
        "duplicate_examples", "warning" if fraction > DUPLICATE_WARNING else "info",
        f"{duplicates} of {n} examples ({100 * fraction:.1f}%) repeat an earlier example in every "
        "input: they count several times in every mean and interval.",
        "Deduplicate the audit set (the intervals assume independent examples).",
    )]
    conflicting = sum(1 for labels in seen.values() if len(labels) > 1)
    if conflicting:
        out.append(Diagnostic(
            "duplicates_conflicting_labels", "warning",
            f"{conflicting} groups of identical examples carry different labels.",
            "Check the labels: identical inputs cannot be told apart by any model.",
        ))
    return out


def data_checks(
    batches: Sequence[Batch],
    modalities: Sequence[Modality],
    *,
    n_classes: int | None = None,
    representations: Mapping[str, Tensor | None] | None = None,
) -> list[Diagnostic]:
    """Every data check, in report order (see the module docstring).

    Args:
        n_classes: the model's number of class scores (labels must lie in 0..n_classes-1).
        representations: modality name -> (N, *feat) values at its site over the audit set
            (e.g. ``AuditSet.pool``); input modalities are read from the batches otherwise.
    Raises:
        DataLoadError: non-finite modality inputs, or labels outside the class range.
    """
    out = finite_checks(batches, modalities)
    labels = [b.label for b in batches]
    if all(label is not None for label in labels) and not any(l.is_floating_point() for l in labels):
        out += label_checks(torch.cat([l.reshape(-1) for l in labels]), n_classes=n_classes)
    reps: dict[str, Tensor] = {}
    for m in modalities:
        given = (representations or {}).get(m.name)
        if given is not None:
            reps[m.name] = given
        elif m.input is not None:
            parts = [b.get_input(m.input) for b in batches]
            if all(isinstance(p, Tensor) and p.shape[1:] == parts[0].shape[1:] for p in parts):
                reps[m.name] = torch.cat(parts)
    out += feature_checks(reps)
    out += duplicate_checks(batches)
    out += duplicate_modality_checks(reps)
    return out


def duplicate_modality_checks(representations: Mapping[str, Tensor]) -> list[Diagnostic]:
    """One warning per pair of modalities whose values are equal, or correlated above
    0.999 in every feature, over the audit set."""
    flat = {n: r.reshape(r.shape[0], -1).double() for n, r in representations.items()
            if r is not None and r.dim() > 0 and r.is_floating_point()}
    names, out = list(flat), []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            x, y = flat[a], flat[b]
            if x.shape != y.shape or not (torch.equal(x, y) or _correlated(x, y)):
                continue
            out.append(Diagnostic(
                "duplicate_modalities", "warning",
                f"`{a}` and `{b}` carry the same data (their values are equal or correlated above "
                "0.999 in every feature): shuffling one alone leaves the other, so each one's "
                "permutation drop understates what the model takes from the pair.",
                "Read the Shapley values (they share the joint effect); audit with one of the two "
                "removed to see what the model takes from each.",
                a,
            ))
    return out


def _correlated(x: Tensor, y: Tensor) -> bool:
    x, y = x - x.mean(0), y - y.mean(0)
    scale = (x.square().sum(0) * y.square().sum(0)).sqrt()
    moving = scale > 0
    if not bool(moving.any()):
        return False
    return bool(((x * y).sum(0)[moving].abs() / scale[moving] > 0.999).all())
