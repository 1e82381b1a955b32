"""Where the Fisher and Poincaré bounds cannot be computed, and what the reader is told.

The functional entropy and the variance are functions of forward passes; only the bounds
need the gradient of f with respect to the noise. They are *unavailable* (nan, shown as
"unavailable") for an example when

- the gradient is exactly zero in all K samples while f is not constant over them: the
  model reads the modality through a hard threshold (sign, rounding, bucketize, argmax, a
  lookup), where the gradient says nothing about f (``gradient_blind``);
- the gradient is not finite in some sample (``gradient_nonfinite``);
- the forward pass blocks gradients altogether (``torch.no_grad``, ``inference_mode``,
  ``.detach()``, numpy inside): every example (``gradients_blocked``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..results import Diagnostic

__all__ = ["BoundGaps", "unavailable_bounds", "bound_diagnostics"]


@dataclass
class BoundGaps:
    """Per modality: how many examples had a gradient-blind f, a non-finite gradient."""

    blind: int = 0
    nonfinite: int = 0
    examples: int = 0


def unavailable_bounds(f: Tensor, q: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Per example (f and q of shape (K, B)): whether its bounds are unavailable, and the
    masks of the two reasons (gradient-blind, non-finite gradient). ``q`` None: the
    gradient was blocked, every example is unavailable."""
    if q is None:
        every = torch.ones(f.shape[1], dtype=torch.bool, device=f.device)
        return every, torch.zeros_like(every), torch.zeros_like(every)
    nonfinite = ~torch.isfinite(q).all(dim=0)
    moves = ~(f == f[:1]).all(dim=0)
    blind = (q == 0).all(dim=0) & moves & ~nonfinite
    return blind | nonfinite, blind, nonfinite


def bound_diagnostics(gaps: Mapping[str, BoundGaps], *, blocked: str | None) -> list[Diagnostic]:
    """One diagnostic per reason: gradients blocked (``blocked`` holds why), gradient-blind
    examples, non-finite gradients."""
    if blocked is not None:
        return [Diagnostic(
            "gradients_blocked", "warning",
            "The model's forward pass blocks gradients with respect to its modality "
            f"representations ({blocked}), so the Fisher and Poincaré bounds are unavailable. "
            "The functional entropy, variance, permutation and Shapley checks need forward "
            "passes only and are reported as usual; the attributions (integrated gradients) "
            "are skipped.",
            "For the bounds, let the gradient flow from the audit sites to the output (no "
            "torch.no_grad, inference_mode, .detach() or numpy inside forward).",
        )]
    out = []
    for name, g in gaps.items():
        if g.blind:
            out.append(Diagnostic(
                "gradient_blind", "warning",
                f"For {g.blind} of {g.examples} examples the gradient of the output with respect "
                f"to `{name}` is exactly zero while noise there moves the output: the model reads "
                "it through a hard threshold (sign, rounding, bucketize, argmax, a lookup). Its "
                "Fisher and Poincaré bounds are unavailable; its functional entropy and variance "
                "come from forward passes and stand.",
                "Read the entropy and the permutation checks; the bounds need a differentiable path.",
                name,
            ))
        if g.nonfinite:
            out.append(Diagnostic(
                "gradient_nonfinite", "warning",
                f"For {g.nonfinite} of {g.examples} examples the gradient with respect to `{name}` "
                "is not finite (nan or inf), so its Fisher and Poincaré bounds are unavailable.",
                "Look for operations with an infinite derivative on the path (sqrt or log at 0, "
                "division by a small number), or audit at precision 'fp32'.",
                name,
            ))
    return out
