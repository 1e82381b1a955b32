"""The verdict: each modality is ``ignored``, ``unused``, ``weak``, ``ok`` or ``dominant``.

Two kinds of evidence. *Sensitivity*: a modality's share of the summed functional entropy
(noise in it moves the output). *Reliance* (with labels): its share of the summed
permutation loss increase (shuffling it across examples costs the model). With M
modalities, a *relative* share is M x the share, so 1.0 is a uniform share.

- The output does not depend on a modality when its functional-entropy interval does not
  exclude 0, or its relative sensitivity share is below ``ignored`` (default 0.1).
- A modality is *relied upon* when shuffling it raises the loss by more than the
  shuffle-to-shuffle spread: its loss-increase interval excludes 0 and the mean increase
  exceeds 1.96 x sd x sqrt(1 + 1/R), sd the spread of the R shuffled losses (a model that
  merely reads noise, or is at chance, has a clean loss inside that spread).
- Reliance is *measurable* when the model is above chance on the labels (accuracy above
  the majority-class rate, and above the all-permuted Shapley baseline, by more than
  2.33 binomial standard errors) or some modality's loss increase clears the same test at
  a one-sided 0.135% (Student-t with R - 1 degrees of freedom in place of 1.96: about 4.3 at
  R = 10). Otherwise (a model at
  chance, e.g. random labels or the wrong label column) the verdict rests on sensitivity
  alone and says so.
- A modality's reliance is *too noisy to tell* when its loss-increase interval can tell the
  increase neither from 0 (its lower end is <= 0) nor from a share that would not be
  negligible: its upper end reaches ``ignored`` / M of the summed (positive) mean increases,
  the smallest reliance a modality must carry not to be ignored. Few repeats make the
  Student-t interval that wide (its critical value is 12.7 at R = 2), and then "not relied
  upon" would rest on an interval, not on evidence.

Then, with reliance measurable:

- ``ignored``: the output does not depend on it, and it is not relied upon;
- ``unused``: noise in it moves the output, but it is not relied upon (read, not used for
  the predictions);

without it: ``ignored`` when the output does not depend on it. A modality whose reliance is
too noisy to tell is neither: reliance not measured is not reliance zero (its shuffles do
move the loss, or the interval would be narrow), so it counts among the used modalities
below, graded on the mean increase, and the ``reliance_too_noisy`` diagnostic says so. The top-level ``ignored``
list holds both levels. Among the U modalities left (the used ones), with shares taken
among themselves:

- ``weak``: its relative share of the reliance (of the sensitivity when reliance is not
  measurable) < ``weak`` (default 0.5): shuffling it costs the model little next to the
  others;
- ``dominant``: it carries most of both, i.e. more than half of the sensitivity and of the
  reliance, and at least ``dominant`` (default 1.3) x the uniform share 1/U of each; or it
  is the only modality used when M > 1;
- ``ok`` otherwise.

A used modality's sensitivity and reliance shares (among the used modalities) *disagree*
when one is more than ``disagree_factor`` (default 3) times the other (the larger at least
0.05), or they differ by more than ``disagree_gap`` (default 0.3).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import ConfigError
from .results import NOT_USED, ModalityResult, PermutationScore, ShapleyValues

__all__ = [
    "Thresholds",
    "Reliance",
    "reliance_shares",
    "relied_upon",
    "reliance_too_noisy",
    "too_noisy",
    "reliance_status",
    "shares_disagree",
    "disagreements",
    "modality_verdicts",
    "verdict_sentence",
]

#: one-sided z of the "above chance" test (1%)
ABOVE_CHANCE_Z = 2.33
#: how many standard deviations of the shuffled losses a relied-upon modality's mean loss
#: increase must exceed (times sqrt(1 + 1/R)); see :func:`relied_upon`
RELIANCE_Z = 1.96
#: the stricter bar a modality's loss increase must clear to make reliance measurable for a
#: model that is not above chance (shuffled cross-entropies are right-skewed, so a clean loss
#: at chance sits below their mean more often than a symmetric spread suggests)
MEASURABLE_TAIL = 0.00135  # the one-sided tail of 3 standard normal deviations


@dataclass(frozen=True)
class Thresholds:
    """Verdict thresholds: ``ignored``, ``weak`` and ``dominant`` on the relative share
    (1.0 = a uniform share), ``disagree_factor`` and ``disagree_gap`` on the sensitivity and
    reliance shares of one modality (see :mod:`biasscope.verdict`)."""

    ignored: float = 0.1
    weak: float = 0.5
    dominant: float = 1.3
    disagree_factor: float = 3.0
    disagree_gap: float = 0.3

    def __post_init__(self) -> None:
        if not 0 <= self.ignored <= self.weak <= self.dominant:
            raise ConfigError(
                "Verdict thresholds must satisfy 0 <= ignored <= weak <= dominant; got "
                f"ignored={self.ignored}, weak={self.weak}, dominant={self.dominant}.",
                parameter="thresholds",
            )
        if not (self.disagree_factor > 1 and 0 < self.disagree_gap <= 1):
            raise ConfigError(
                "Verdict thresholds need disagree_factor > 1 and 0 < disagree_gap <= 1; got "
                f"disagree_factor={self.disagree_factor}, disagree_gap={self.disagree_gap}.",
                parameter="thresholds",
            )


@dataclass(frozen=True)
class Reliance:
    """Whether reliance is measurable, and why not (one sentence, "" when it is)."""

    measurable: bool
    reason: str = ""

    @property
    def note(self) -> str:
        """The clause the verdict sentence carries when reliance is not measurable."""
        return "" if self.measurable else f"Reliance not measurable: {self.reason}"


def reliance_shares(modalities: Sequence[ModalityResult]) -> dict[str, float] | None:
    """Each modality's share of the summed permutation loss increase (negative increases
    count as 0), or None without permutation scores."""
    if not modalities or any(m.permutation is None for m in modalities):
        return None
    drops = {m.name: max(_finite(m.permutation.loss_increase.mean), 0.0) for m in modalities}
    total = sum(drops.values())
    return {name: d / total if total > 0 else 0.0 for name, d in drops.items()}


def _finite(x: float) -> float:
    return x if math.isfinite(x) else 0.0


def relied_upon(score: PermutationScore | None, *, strict: bool = False) -> bool:
    """Whether shuffling the modality raises the loss beyond the shuffle-to-shuffle spread:
    the loss-increase interval excludes 0 and the mean increase exceeds
    ``RELIANCE_Z`` x sd x sqrt(1 + 1/R), sd the standard deviation of the R shuffled losses
    (the clean loss lies outside the spread one more shuffle would have). ``strict``: the
    critical value is Student-t's (R - 1 degrees of freedom) at a one-sided
    ``MEASURABLE_TAIL`` instead, which also accounts for the sd being estimated from R
    shuffles."""
    if score is None or score.repeats < 2:
        return False
    e = score.loss_increase
    half = e.ci_high - e.mean
    if not (math.isfinite(half) and math.isfinite(e.mean) and e.ci_low > 0):
        return False
    from scipy.stats import t  # lazily: this module is imported by the torch-free CLI

    sd = half * math.sqrt(score.repeats) / float(t.ppf(0.975, score.repeats - 1))
    critical = float(t.ppf(1 - MEASURABLE_TAIL, score.repeats - 1)) if strict else RELIANCE_Z
    return e.mean > critical * sd * math.sqrt(1 + 1 / score.repeats)


def reliance_too_noisy(score: PermutationScore | None, reference: float) -> bool:
    """Whether the loss-increase interval is too wide to tell: it reaches 0 and also
    ``reference`` (> 0), the smallest increase that would not be negligible."""
    if score is None or not reference > 0:
        return False
    e = score.loss_increase
    return e.ci_low <= 0 and e.ci_high >= reference  # False for nan bounds


def too_noisy(modalities: Sequence[ModalityResult], thresholds: Thresholds = Thresholds()) -> list[str]:
    """The modalities whose reliance is too noisy to tell (see the module docstring): the
    reference increase is ``thresholds.ignored`` / M x the summed positive mean increases."""
    if not modalities or any(m.permutation is None for m in modalities):
        return []
    total = sum(max(_finite(m.permutation.loss_increase.mean), 0.0) for m in modalities)
    reference = thresholds.ignored / len(modalities) * total
    return [m.name for m in modalities if reliance_too_noisy(m.permutation, reference)]


def reliance_status(
    modalities: Sequence[ModalityResult],
    *,
    accuracy: float | None,
    chance: float | None,
    n_examples: int,
    shapley: Sequence[ShapleyValues] = (),
) -> Reliance:
    """Whether reliance is measurable (see the module docstring)."""
    if accuracy is None:
        return Reliance(False, "there are no labels, so the verdict rests on sensitivity alone.")
    if reliance_shares(modalities) is None:
        return Reliance(False, "no permutation score was computed (permutation_repeats=0).")
    baseline = max([chance or 0.0] + [s.empty for s in shapley if s.metric == "accuracy"])
    p = min(max(baseline, 1.0 / max(n_examples, 1)), 1.0 - 1.0 / max(n_examples, 1))
    margin = ABOVE_CHANCE_Z * math.sqrt(p * (1 - p) / max(n_examples, 1))
    if accuracy > baseline + margin or any(relied_upon(m.permutation, strict=True) for m in modalities):
        return Reliance(True)
    return Reliance(
        False,
        f"the model is at chance on these labels (accuracy {100 * accuracy:.1f}%, chance "
        f"{100 * baseline:.1f}%) and no modality's shuffle raises the loss, so the verdict "
        "rests on sensitivity alone.",
    )


def shares_disagree(sensitivity: float, reliance: float, thresholds: Thresholds = Thresholds()) -> bool:
    """Whether a modality's sensitivity and reliance shares disagree in size."""
    low, high = sorted((sensitivity, reliance))
    if high - low > thresholds.disagree_gap:
        return True
    return high >= 0.05 and high > thresholds.disagree_factor * low


def disagreements(modalities: Sequence[ModalityResult], thresholds: Thresholds = Thresholds()) -> dict[str, bool]:
    """Per modality: whether its sensitivity and reliance shares disagree in size, both taken
    among the modalities whose verdict says they are used (a modality the model does not use
    is already told apart by its verdict, and would skew the others' shares); False for the
    others, and for all without reliance or with fewer than two used."""
    rel = reliance_shares(modalities)
    used = [m.name for m in modalities if m.verdict not in NOT_USED]
    if rel is None or len(used) < 2:
        return {m.name: False for m in modalities}
    sens = _among({m.name: m.share for m in modalities}, used)
    relied = _among(rel, used)
    return {m.name: m.name in sens and shares_disagree(sens[m.name], relied[m.name], thresholds)
            for m in modalities}


def _quiet(m: ModalityResult, n: int, thresholds: Thresholds) -> bool:
    """The output does not depend on ``m`` (sensitivity)."""
    return not m.functional_entropy.ci_low > 0 or n * m.share < thresholds.ignored


def _among(values: dict[str, float], used: list[str]) -> dict[str, float]:
    total = sum(max(values[n], 0.0) for n in used)
    return {n: max(values[n], 0.0) / total if total > 0 else 0.0 for n in used}


def modality_verdicts(
    modalities: Sequence[ModalityResult],
    thresholds: Thresholds = Thresholds(),
    *,
    reliance: Reliance | None = None,
) -> dict[str, str]:
    """The verdict of each modality under the rule in this module's docstring.

    ``reliance`` says whether reliance is measurable (default: when every modality has a
    permutation score and some modality is relied upon)."""
    n = len(modalities)
    rel = reliance_shares(modalities)
    if reliance is None:
        reliance = Reliance(rel is not None and any(relied_upon(m.permutation) for m in modalities))
    measurable = reliance.measurable and rel is not None
    noisy = set(too_noisy(modalities, thresholds)) if measurable else set()
    out: dict[str, str] = {}
    for m in modalities:
        if measurable and m.name not in noisy and not relied_upon(m.permutation):
            out[m.name] = "ignored" if _quiet(m, n, thresholds) else "unused"
        elif not measurable and _quiet(m, n, thresholds):
            out[m.name] = "ignored"
    used = [m.name for m in modalities if m.name not in out]
    kinds = [_among({m.name: m.share for m in modalities}, used)]
    if measurable:
        kinds.append(_among(rel, used))
    for name in used:
        shares = [k[name] for k in kinds]
        if len(used) == 1:
            out[name] = "dominant" if n > 1 else "ok"
        elif len(used) * shares[-1] < thresholds.weak:  # reliance when measurable
            out[name] = "weak"
        elif min(shares) > max(0.5, thresholds.dominant / len(used)):
            out[name] = "dominant"
        else:
            out[name] = "ok"
    return {m.name: out[m.name] for m in modalities}


def _names(names: list[str]) -> str:
    quoted = [f"`{n}`" for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _names_about(names: list[str], about: Mapping[str, str]) -> str:
    """The names, each ignored one followed by what its probe says ("`text`, which alone
    predicts the label at 85% ...")."""
    if not any(n in about for n in names):
        return _names(names)
    items = [f"`{n}`, which {about[n]}" if n in about else f"`{n}`" for n in names]
    return items[0] if len(items) == 1 else "; ".join(items[:-1]) + "; and " + items[-1]


def verdict_sentence(
    verdicts: dict[str, str], *, note: str = "", disagree: Sequence[str] = (),
    about: Mapping[str, str] | None = None,
) -> str:
    """The sentence that leads the report, e.g. "The model ignores `text`; it leans on
    `image`.", then the modalities whose sensitivity and reliance shares ``disagree``, then
    ``note`` (e.g. why reliance is not measurable). ``about`` holds, per ignored or unused
    modality, what the probe says of it (:func:`biasscope.probe.probe_clauses`)."""
    about = about or {}
    by = {v: [n for n, x in verdicts.items() if x == v] for v in ("ignored", "unused", "weak", "dominant")}
    parts = []
    if by["ignored"]:
        every = len(by["ignored"]) == len(verdicts) > 1
        parts.append(("ignores every modality: " if every else "ignores ") + _names_about(by["ignored"], about))
    if by["unused"]:
        parts.append(
            f"does not rely on {_names(by['unused'])} for its predictions, though noise there "
            "moves the output"
        )
    if parts:
        sentence = "The model " + "; it ".join(parts)
        if by["weak"]:
            sentence += f"; it barely uses {_names(by['weak'])}"
    elif by["weak"]:
        sentence = f"No modality is ignored, but the model barely uses {_names(by['weak'])}"
    elif len(verdicts) == 1:
        sentence = f"The model uses {_names(list(verdicts))}"
    else:
        sentence = f"The model uses all {len(verdicts)} modalities"
    if by["dominant"]:
        sentence += f"; it leans on {_names(by['dominant'])}"
    sentence += "."
    sentence += "".join(f" `{n}` {about[n]}." for n in by["unused"] if n in about)
    if disagree:
        sentence += (f" Sensitivity and reliance disagree in size on {_names(list(disagree))}: "
                     "read both before acting.")
    return f"{sentence} {note}" if note else sentence
