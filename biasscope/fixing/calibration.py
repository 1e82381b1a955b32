"""Lambda calibration of the functional-entropy regularizer: the weight that makes the term
a given fraction of the cross-entropy, by gradient norm or by value (moved out of
``regularizer.py``; re-exported there)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..runtime._batch import call_model, split_batch
from ..runtime._device import model_device
from ..errors import ConfigError

if TYPE_CHECKING:
    from .regularizer import FunctionalEntropyRegularizer

__all__ = ["Calibration", "calibrate_lambda"]


class Calibration:
    """The calibrated weight and what it was computed from.

    ``lambda_value = target_ratio * mean(CE measure) / mean(term measure)`` over the batches,
    the measure being the gradient norm w.r.t. the model's parameters (``criterion="gradient"``)
    or the absolute value (``criterion="value"``). ``ratios`` holds, per batch, the realised
    ratio lambda * measure(term) / measure(CE) under both criteria.
    """

    def __init__(
        self,
        lambda_value: float,
        *,
        criterion: str,
        target_ratio: float,
        ce: list[float],
        term: list[float],
        ce_grad: list[float],
        term_grad: list[float],
    ) -> None:
        self.lambda_value = lambda_value
        self.criterion = criterion
        self.target_ratio = target_ratio
        self.ce, self.term, self.ce_grad, self.term_grad = ce, term, ce_grad, term_grad

    @property
    def value_ratio(self) -> float:
        """lambda * mean|term| / mean CE over the calibration batches."""
        return self.lambda_value * _mean(map(abs, self.term)) / max(_mean(self.ce), 1e-30)

    @property
    def gradient_ratio(self) -> float:
        """lambda * mean ||grad term|| / mean ||grad CE|| over the calibration batches."""
        return self.lambda_value * _mean(self.term_grad) / max(_mean(self.ce_grad), 1e-30)

    def as_dict(self) -> dict[str, Any]:
        return {
            "lambda": self.lambda_value,
            "criterion": self.criterion,
            "target_ratio": self.target_ratio,
            "value_ratio": self.value_ratio,
            "gradient_ratio": self.gradient_ratio,
            "ce": self.ce,
            "term": self.term,
            "ce_grad_norm": self.ce_grad,
            "term_grad_norm": self.term_grad,
        }

    def __repr__(self) -> str:
        return (
            f"Calibration(lambda_value={self.lambda_value:.4g}, criterion={self.criterion!r}, "
            f"value_ratio={self.value_ratio:.3g}, gradient_ratio={self.gradient_ratio:.3g})"
        )


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / max(len(values), 1)


def _grad_norm(loss: Tensor, params: list[Tensor]) -> float:
    if not loss.requires_grad:
        return 0.0
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=False)
    total = sum(float(g.detach().double().square().sum()) for g in grads if g is not None)
    return math.sqrt(total)


def calibrate_lambda(
    regularizer: FunctionalEntropyRegularizer,
    batches: Iterable[Any],
    *,
    target_ratio: float = 1.0,
    criterion: str = "gradient",
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    autocast: Callable[[], Any] | None = None,
) -> Calibration:
    """Pick lambda from a few batches so that the term is ``target_ratio`` of the
    cross-entropy: lambda = target_ratio * mean CE-measure / mean term-measure.

    ``criterion="gradient"`` (default) compares gradient norms w.r.t. the model's trainable
    parameters -- what the optimiser sees, and meaningful for the log forms whose value has
    an arbitrary offset; ``"value"`` compares |term| with CE. The model's parameters are not
    changed; the regularizer's noise generator advances as in training.
    """
    if criterion not in ("gradient", "value"):
        raise ConfigError(f"criterion must be 'gradient' or 'value' (got {criterion!r}).")
    if not target_ratio > 0:
        raise ConfigError(f"target_ratio must be positive (got {target_ratio}).")
    model = regularizer.model
    params = [p for p in model.parameters() if p.requires_grad]
    device = model_device(model)
    ce_vals, term_vals, ce_grads, term_grads = [], [], [], []
    for raw in batches:
        b = split_batch(raw, label_key=regularizer.label_key).to(device)
        if b.label is None:
            raise ConfigError("Calibrating lambda needs labelled batches (the cross-entropy).")
        with autocast() if autocast is not None else nullcontext():
            ce = loss_fn(call_model(model, b, regularizer.output).float(), b.label)
            term, _ = regularizer.compute(b)  # every batch, whatever ``term_every``
        ce_vals.append(float(ce.detach()))
        term_vals.append(float(term.detach()))
        ce_grads.append(_grad_norm(ce, params))
        term_grads.append(_grad_norm(term, params))
    if not ce_vals:
        raise ConfigError("Calibrating lambda needs at least one batch.")
    if criterion == "gradient":
        num, den = _mean(ce_grads), _mean(term_grads)
    else:
        num, den = _mean(ce_vals), _mean(abs(t) for t in term_vals)
    if not den > 0 or not math.isfinite(den):
        raise ConfigError(
            f"Cannot calibrate lambda: the regularizer's {criterion} is {den} on the calibration "
            "batches (is every modality ignored, or the term non-finite?). Give the weight yourself: lambda_=X."
        )
    return Calibration(
        target_ratio * num / den,
        criterion=criterion,
        target_ratio=target_ratio,
        ce=ce_vals,
        term=term_vals,
        ce_grad=ce_grads,
        term_grad=term_grads,
    )
