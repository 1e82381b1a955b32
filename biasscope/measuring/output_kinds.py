"""What a model's output holds, and how the divergence is defined for each kind.

- ``logits`` (and ``log_probs``, which are logits up to a per-row constant): one softmax
  over the classes; f = KL(softmax(clean) || softmax(perturbed)).
- ``probs`` (rows in [0, 1] summing to 1): their log is taken as logits, so f is the same
  KL between the predicted distributions (taking probabilities as logits would pull every
  distribution toward uniform).
- ``binary`` (one output column, a logit x): the two classes [0, x], so softmax gives
  [1 - sigmoid(x), sigmoid(x)] and f is the Bernoulli KL.
- ``multilabel`` (a sigmoid head, multi-hot labels): f is the sum over labels of the
  per-label Bernoulli KLs (divergence ``bernoulli``). The permutation and Shapley checks
  need one class per example and are skipped: the verdict rests on sensitivity.
- ``regression`` (real-valued targets): f = 1/2 sum_j (y_j - y'_j)^2, the KL between unit-
  variance Gaussians centred on the two outputs (divergence ``gaussian``). The reliance
  checks are skipped as for ``multilabel``.

``auto`` detects the kind from the clean outputs and the labels (:func:`detect_output_kind`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..runtime.options import OUTPUT_KINDS
from ..results import Diagnostic

__all__ = ["OUTPUT_KINDS", "SENSITIVITY_ONLY", "DIVERGENCE_OF", "label_kind", "detect_output_kind",
           "output_kind_diagnostic"]

#: kinds whose labels are not one class per example: no permutation or Shapley checks
SENSITIVITY_ONLY = ("multilabel", "regression")
#: the divergence each of those kinds uses in place of the softmax KL
DIVERGENCE_OF = {"multilabel": "bernoulli", "regression": "gaussian"}
_TOLERANCE = 1e-3  # on a row's sum of probabilities (or log-sum-exp of log-probabilities)


def label_kind(labels: Sequence[Tensor | None]) -> str | None:
    """``"multilabel"`` for multi-hot labels (2-d, 0/1, some row not one-hot: one-hot rows
    are read as class indices), ``"regression"`` for real-valued ones (floats that are not
    all integers), else None."""
    present = [label for label in labels if label is not None and label.numel()]
    if not present:
        return None
    if all(label.dim() == 2 and bool(((label == 0) | (label == 1)).all()) for label in present):
        return "multilabel"
    if all(label.is_floating_point() and label.dim() <= 2 for label in present) and not all(
        bool((label == label.round()).all()) for label in present
    ):
        return "regression"
    return None


def detect_output_kind(outputs: Sequence[Tensor], labels: Sequence[Tensor | None]) -> str:
    """The kind of the clean ``outputs`` (as the model returns them, one per batch), given
    the batches' ``labels``: the labels' kind first, then one column (``binary``), rows of
    probabilities (``probs``), of log-probabilities (``log_probs``), else ``logits``."""
    from_labels = label_kind(labels)
    if from_labels is not None:
        return from_labels
    x = torch.cat([o.detach().double().reshape(o.shape[0], -1) for o in outputs])
    if x.shape[1] == 1:
        return "binary"
    if bool(((x >= 0) & (x <= 1)).all()) and bool(((x.sum(1) - 1).abs() < _TOLERANCE).all()):
        return "probs"
    if bool((x <= 0).all()) and bool((torch.logsumexp(x, 1).abs() < _TOLERANCE).all()):
        return "log_probs"
    return "logits"


def output_kind_diagnostic(kind: str, *, detected: bool) -> list[Diagnostic]:
    """What the reader is told about an output that is not plain logits."""
    said = {
        "probs": "rows in [0, 1] that sum to 1: probabilities. biasscope takes their log as "
                 "logits, so the divergence is the KL between the predicted distributions",
        "log_probs": "log-probabilities; they are used as logits (the softmax is the same)",
        "binary": "one column: a binary logit x, read as the two classes [0, x] (the divergence "
                  "is the Bernoulli KL)",
        "multilabel": "one sigmoid per label (multi-hot labels): the divergence is the sum of "
                      "per-label Bernoulli KLs; the permutation and Shapley checks need one class "
                      "per example and are skipped, so the verdict rests on sensitivity",
        "regression": "real-valued predictions (real-valued labels): the divergence is half the "
                      "squared change of the outputs (the KL of unit-variance Gaussians); the "
                      "permutation and Shapley checks need class labels and are skipped, so the "
                      "verdict rests on sensitivity",
    }
    if kind not in said:
        return []
    how = "detected" if detected else "given"
    return [Diagnostic(
        "output_kind", "info" if kind in ("log_probs", "binary") else "warning",
        f"The model's output ({how}: {kind}) holds {said[kind]}.",
        "If that is wrong, say what the output holds with --output-kind (the `output_kind` "
        "option): auto, logits, probs, log_probs, binary, multilabel or regression.",
    )]
