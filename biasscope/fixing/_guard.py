"""The fix guard: removing a shortcut lowers in-distribution accuracy a little by design;
teaching a model to use noise lowers it for nothing. On the validation data the guard
tracks the in-distribution accuracy and a decorrelated proxy (the accuracy with the
relied-upon modality permuted across examples) and trips when the accuracy falls beyond a
tolerance while the proxy does not rise beyond it, or when the accuracy falls beyond the
hard bound ``max_drop_accuracy``. It keeps the last weights that passed (the input's at
first), which fix returns when it trips.

With shifted data (``shift_data``: examples where the shortcut is broken) the proxy gives way
to the real thing: the guard keeps the weights with the best shifted accuracy (the input's
at first), fix returns them, and the guard trips at the end when no step beat the input
(``no_shift_gain``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

__all__ = ["Guard"]

ACC, PROXY, SHIFT = "val_accuracy", "val_proxy_accuracy", "shift_accuracy"


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
        shifted: bool = False,
    ) -> None:
        self.modality, self.pushed, self.shifted = modality, list(pushed), shifted
        self.enabled, self.tolerance, self.max_drop = enabled, tolerance, max_drop_accuracy
        self.start: dict[str, float] | None = None
        self.kept_step = 0
        self.kept_state: dict[str, Tensor] | None = None
        self.trip: dict[str, Any] | None = None
        self.best_shift: float | None = None

    @property
    def watching(self) -> bool:
        return self.enabled or self.max_drop is not None or self.shifted

    def begin(self, metrics: dict[str, float], state: Callable[[], dict[str, Tensor]]) -> None:
        """The input model's numbers, and its weights (``state()``, called only when the
        guard is watching) as the first kept ones."""
        self.start = {k: metrics[k] for k in (ACC, PROXY, SHIFT) if k in metrics}
        self.best_shift = metrics.get(SHIFT)
        self.kept_state = state() if self.watching else None

    def check(
        self, step: int, metrics: dict[str, float], state: Callable[[], dict[str, Tensor]]
    ) -> bool:
        """Whether the guard trips at this validation; keeps the weights when it passes."""
        if self.start is None or not self.watching or self.trip is not None:
            return False
        drop = self.start[ACC] - metrics[ACC] if ACC in self.start else 0.0
        reason = None
        if self.max_drop is not None and drop > self.max_drop:
            reason = "max_drop_accuracy"
        elif self.shifted:  # the shifted accuracy decides which weights are kept
            if metrics[SHIFT] > self.best_shift:
                self.best_shift, self.kept_step, self.kept_state = metrics[SHIFT], step, state()
            return False
        elif self.enabled and drop > self.tolerance and metrics[PROXY] - self.start[PROXY] <= self.tolerance:
            reason = "no_gain"
        if reason is None:
            self.kept_step, self.kept_state = step, state()
            return False
        self.trip = {"step": step, "reason": reason, **{k: metrics[k] for k in (ACC, PROXY, SHIFT) if k in metrics}}
        return True

    def finish(self, step: int) -> None:
        """At the end of training with shifted data: trip when no step beat the input's
        shifted accuracy (fix then returns the input's weights)."""
        if self.shifted and self.trip is None and self.start is not None and self.kept_step == 0 and step > 0:
            self.trip = {"step": step, "reason": "no_shift_gain", SHIFT: self.best_shift}

    def message(self) -> str:
        """What tripped, with the numbers (empty when it did not trip)."""
        if self.trip is None or self.start is None:
            return ""
        t, s = self.trip, self.start
        towards = ", ".join(self.pushed)
        if t["reason"] == "no_shift_gain":
            return (
                f"No step of the fix raised the accuracy on the shifted data above the input "
                f"model's {s[SHIFT]:.3f} (after {t['step']} steps), so fix kept the input's weights. "
                "Check that the shifted data breaks the shortcut you suspect, try --augment with "
                "the other modality, or more steps (--steps)."
            )
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
            "shifted": self.shifted,
            "best_shift_accuracy": self.best_shift if self.shifted else None,
            "tripped": self.trip is not None,
            "trip": self.trip,
            "kept_step": self.kept_step if self.trip is not None or self.shifted else None,
            "message": self.message(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "best_shift": self.best_shift if self.start is not None else None,
            "kept_step": self.kept_step,
            "kept_state": self.kept_state,
            "trip": self.trip,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.start, self.kept_step = state["start"], state["kept_step"]
        self.best_shift = state.get("best_shift")
        self.kept_state, self.trip = state["kept_state"], state["trip"]


#: The relied-upon modality "loses most of its use" when its reliance falls below this fraction
#: of what it was, while another modality's rises above it: a swap, not a balance.
SWAP_FRACTION = 0.5


def reliance_swap(target: dict[str, Any], after: dict[str, float]) -> dict[str, Any] | None:
    """The swap of reliance a fix without shifted data must not call a success: the formerly
    relied-upon modality keeps under :data:`SWAP_FRACTION` of its reliance and another now
    exceeds it. None when there is no swap (or nothing was relied upon)."""
    before, relied = target["reliance"], target["relied_upon"]
    if not before[relied] > 0:
        return None
    rest = {k: v for k, v in after.items() if k != relied}
    lead = max(rest, key=rest.get) if rest else None
    if lead is None or after[relied] >= SWAP_FRACTION * before[relied] or rest[lead] <= after[relied]:
        return None
    return {"modality": relied, "before": before[relied], "after": after[relied], "now_relied_upon": lead}


def swap_message(swap: dict[str, Any]) -> str:
    """What the swap means and how to check it (shifted data, ``--augment``)."""
    m, new = swap["modality"], swap["now_relied_upon"]
    return (
        f"The fix moved the model's reliance off {m} (loss increase when permuted {swap['before']:.3g} -> "
        f"{swap['after']:.3g} nats) onto {new}: a swap, not a balance. That is right only if {m} is "
        f"the shortcut, which in-distribution data cannot tell. Check it: pass data where the suspected "
        f"shortcut is broken (--shift-data / shift_data) and fix keeps the weights that score best on "
        f"it; or, if {new} is the shortcut, fix towards {m} with --augment {new}."
    )
