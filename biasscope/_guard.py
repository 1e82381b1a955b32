"""The fix guard: removing a shortcut lowers in-distribution accuracy a little by design;
teaching a model to use noise lowers it for nothing. On the validation data the guard
tracks the in-distribution accuracy and a decorrelated proxy (the accuracy with the
relied-upon modality permuted across examples) and trips when the accuracy falls beyond a
tolerance while the proxy does not rise beyond it, or when the accuracy falls beyond the
hard bound ``max_drop_accuracy``. It keeps the last weights that passed (the input's at
first), which fix returns when it trips."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

__all__ = ["Guard"]

ACC, PROXY = "val_accuracy", "val_proxy_accuracy"


class Guard:
    """Guard state of one fix run (see the module docstring)."""

    def __init__(
        self,
        *,
        modality: str,
        pushed: Sequence[str],
        enabled: bool,
        tolerance: float,
        max_drop_accuracy: float | None,
    ) -> None:
        self.modality, self.pushed = modality, list(pushed)
        self.enabled, self.tolerance, self.max_drop = enabled, tolerance, max_drop_accuracy
        self.start: dict[str, float] | None = None
        self.kept_step = 0
        self.kept_state: dict[str, Tensor] | None = None
        self.trip: dict[str, Any] | None = None

    @property
    def watching(self) -> bool:
        return self.enabled or self.max_drop is not None

    def begin(self, metrics: dict[str, float], state: Callable[[], dict[str, Tensor]]) -> None:
        """The input model's numbers, and its weights (``state()``, called only when the
        guard is watching) as the first kept ones."""
        self.start = {ACC: metrics[ACC], PROXY: metrics[PROXY]}
        self.kept_state = state() if self.watching else None

    def check(
        self, step: int, metrics: dict[str, float], state: Callable[[], dict[str, Tensor]]
    ) -> bool:
        """Whether the guard trips at this validation; keeps the weights when it passes."""
        if self.start is None or not self.watching or self.trip is not None:
            return False
        drop = self.start[ACC] - metrics[ACC]
        gain = metrics[PROXY] - self.start[PROXY]
        reason = None
        if self.max_drop is not None and drop > self.max_drop:
            reason = "max_drop_accuracy"
        elif self.enabled and drop > self.tolerance and gain <= self.tolerance:
            reason = "no_gain"
        if reason is None:
            self.kept_step, self.kept_state = step, state()
            return False
        self.trip = {"step": step, "reason": reason, ACC: metrics[ACC], PROXY: metrics[PROXY]}
        return True

    def message(self) -> str:
        """What tripped, with the numbers (empty when it did not trip)."""
        if self.trip is None or self.start is None:
            return ""
        t, s = self.trip, self.start
        towards = ", ".join(self.pushed)
        numbers = (
            f"in-distribution accuracy {s[ACC]:.3f} -> {t[ACC]:.3f}, decorrelated accuracy "
            f"({self.modality} permuted) {s[PROXY]:.3f} -> {t[PROXY]:.3f}"
        )
        kept = "the input's weights" if self.kept_step == 0 else f"the weights of step {self.kept_step}"
        if t["reason"] == "max_drop_accuracy":
            why = f"the accuracy drop exceeds max_drop_accuracy={self.max_drop:g}"
        else:
            why = (
                f"the accuracy fell by more than guard_tolerance={self.tolerance:g} while the "
                f"decorrelated accuracy did not rise by more than it: {towards} gained nothing "
                "the label needs (does it carry label information?)"
            )
        return (
            f"The fix guard stopped training at step {t['step']}: the fix was pushing the model "
            f"off {self.modality} towards {towards}, and on the validation data {numbers}; "
            f"{why}. Kept {kept}. If the drop is expected, raise guard_tolerance or set "
            "guard=False."
        )

    def summary(self) -> dict[str, Any]:
        return {
            "modality": self.modality,
            "pushed": self.pushed,
            "enabled": self.enabled,
            "tolerance": self.tolerance,
            "max_drop_accuracy": self.max_drop,
            "start": self.start,
            "tripped": self.trip is not None,
            "trip": self.trip,
            "kept_step": self.kept_step if self.trip is not None else None,
            "message": self.message(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "kept_step": self.kept_step,
            "kept_state": self.kept_state,
            "trip": self.trip,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.start, self.kept_step = state["start"], state["kept_step"]
        self.kept_state, self.trip = state["kept_state"], state["trip"]
