"""The verdict: each modality is ``ignored``, ``weak``, ``ok`` or ``dominant``.

Rule (documented in the report's "how to read this" section). With M modalities, a
modality's *relative share* is M x its share, so 1.0 is a uniform share:

- sensitivity: r = M x (its share of the summed functional entropy);
- reliance (when labels exist): q = M x (its share of the summed permutation loss increase).

A modality counts as *used* only if its functional-entropy interval excludes zero and,
with labels, its permutation loss-increase interval excludes zero too: noise can move the
output of a model that never relies on a modality, so sensitivity alone does not clear it.
Without labels, q is taken equal to r.

- ``ignored``: not used, or both r and q < ``ignored`` (default 0.1);

then, among the U modalities that are not ignored, with r and q taken again relative to a
uniform share 1/U of what they share between them:

- ``weak``: the smaller of r and q < ``weak`` (default 0.5);
- ``dominant``: the smaller of r and q > ``dominant`` (default 1.6, i.e. a share of 0.8
  for U = 2), or the only modality used when M > 1;
- ``ok`` otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import ConfigError
from .results import ModalityResult

__all__ = ["Thresholds", "reliance_shares", "relative_levels", "modality_verdicts", "verdict_sentence"]


@dataclass(frozen=True)
class Thresholds:
    """Verdict thresholds on the relative share (1.0 = a uniform share of 1/M)."""

    ignored: float = 0.1
    weak: float = 0.5
    dominant: float = 1.6

    def __post_init__(self) -> None:
        if not 0 <= self.ignored <= self.weak <= self.dominant:
            raise ConfigError(
                "Verdict thresholds must satisfy 0 <= ignored <= weak <= dominant; got "
                f"ignored={self.ignored}, weak={self.weak}, dominant={self.dominant}."
            )


def reliance_shares(modalities: Sequence[ModalityResult]) -> dict[str, float] | None:
    """Each modality's share of the summed permutation loss increase (negative increases
    count as 0), or None without permutation scores."""
    if not modalities or any(m.permutation is None for m in modalities):
        return None
    drops = {m.name: max(m.permutation.loss_increase.mean, 0.0) for m in modalities}
    total = sum(drops.values())
    return {name: d / total if total > 0 else 0.0 for name, d in drops.items()}


def relative_levels(modalities: Sequence[ModalityResult]) -> dict[str, tuple[float, float]]:
    """Each modality's (r, q): M x its sensitivity share and M x its reliance share
    (q = r without permutation scores)."""
    n = len(modalities)
    reliance = reliance_shares(modalities)
    return {
        m.name: (n * m.share, n * reliance[m.name] if reliance is not None else n * m.share)
        for m in modalities
    }


def _used(m: ModalityResult) -> bool:
    if not m.functional_entropy.ci_low > 0:
        return False
    if m.permutation is None or math.isnan(m.permutation.loss_increase.ci_low):
        return True  # no reliance evidence either way
    return m.permutation.loss_increase.ci_low > 0


def modality_verdicts(
    modalities: Sequence[ModalityResult], thresholds: Thresholds = Thresholds()
) -> dict[str, str]:
    """The verdict of each modality under the rule in this module's docstring."""
    levels = relative_levels(modalities)
    out = {m.name: "ignored" for m in modalities if not _used(m) or max(levels[m.name]) < thresholds.ignored}
    used = [m.name for m in modalities if m.name not in out]
    # the used modalities' levels relative to a uniform share among themselves
    totals = [sum(levels[n][i] for n in used) for i in (0, 1)]
    for name in used:
        low = min(
            len(used) * levels[name][i] / totals[i] if totals[i] > 0 else 0.0 for i in (0, 1)
        )
        if low < thresholds.weak:
            out[name] = "weak"
        elif (len(used) > 1 and low > thresholds.dominant) or (len(used) == 1 < len(modalities)):
            out[name] = "dominant"
        else:
            out[name] = "ok"
    return {m.name: out[m.name] for m in modalities}


def _names(names: list[str]) -> str:
    quoted = [f"`{n}`" for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def verdict_sentence(verdicts: dict[str, str]) -> str:
    """One sentence that leads the report, e.g. "The model ignores `text`."."""
    by = {v: [n for n, x in verdicts.items() if x == v] for v in ("ignored", "weak", "dominant")}
    if by["ignored"]:
        verb = "ignores" if len(by["ignored"]) < len(verdicts) else "ignores every modality:"
        sentence = f"The model {verb} {_names(by['ignored'])}"
    elif by["weak"]:
        sentence = f"No modality is ignored, but the model barely uses {_names(by['weak'])}"
    else:
        sentence = f"The model uses all {len(verdicts)} modalities"
    if by["dominant"]:
        sentence += f"; it leans on {_names(by['dominant'])}"
    return sentence + "."
