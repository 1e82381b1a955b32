"""The verdict: each modality is ``ignored``, ``unused``, ``weak``, ``ok`` or ``dominant``.

Two kinds of evidence. *Sensitivity*: a modality's share of the summed functional entropy
(noise in it moves the output). *Reliance* (with labels): what shuffling it across the
examples costs the predictions, judged by *size*, not significance (with enough shuffles
any nonzero effect is significant). With M modalities, a *relative* share is M x the
share, so 1.0 is a uniform share.

- The output does not depend on a modality when its functional-entropy interval does not
  exclude 0, or its relative sensitivity share is below ``ignored`` (default 0.1).
- Reliance is *measurable* when the model beats chance (the majority-class rate, and the
  all-permuted Shapley baseline) by more than the accuracy margin and by more than 2.33
  binomial standard errors. Otherwise (a constant predictor, random labels, the wrong label
  column) the verdict rests on sensitivity alone and says so.
- Each modality's reliance, from the 95% interval over R shuffles of its accuracy drop:
  *relied upon* when the interval lies wholly beyond the margin; *not relied upon* (an
  equivalence test) when it lies wholly inside it, the modality's relative share of the
  summed accuracy drop is below ``weak``, and its accuracy Shapley value (when computed) is
  inside the margin (two modalities carrying the same data each cost nothing alone). The
  margin is ``margin_accuracy`` (default 0.01, one point of accuracy), or what the
  predictions a shuffle flips can cost by chance on N examples when that is larger (1.96 x
  sqrt(flip rate / N): a modality the labels ignore flips predictions both ways, and on a
  finite set the count of each way differs). *Cannot tell* otherwise (the
  ``reliance_undecided`` diagnostic). More shuffles narrow the interval, so they can only
  turn "cannot tell" into one of the two.

Then, with reliance measurable, a modality not relied upon is

- ``ignored`` when the output does not depend on it (sensitivity, above) and shuffling it
  changes no decision and no confidence of practical size: the interval of its
  prediction-flip rate (the share of predictions that change) lies inside ``margin_flip``
  (default 0.02) and the mean change of the top-class probability is at most
  ``margin_confidence`` (default 0.01);
- ``unused`` otherwise: read, but not relied upon for the accuracy of the predictions
  (noise there moves the output; or a gate that rescales the logits moves the confidence,
  not the decisions; or the model reads a modality the labels ignore, whose shuffles flip
  predictions both ways);

without it: ``ignored`` when the output does not depend on it. A modality whose reliance
cannot be told is neither: it counts among the used modalities below. The top-level
``ignored`` list holds both levels. Among the U modalities left (the used ones), with
shares taken among themselves:

- ``weak``: its relative shares of the reliance are all < ``weak`` (default 0.5): of the
  loss increase, of the accuracy drop and of the accuracy Shapley value (of the sensitivity
  when reliance is not measurable);
- ``dominant``: it carries most of every kind, i.e. more than half of each share, and at
  least ``dominant`` (default 1.3) x the uniform share 1/U of each; or it is the only
  modality used when M > 1;
- ``ok`` otherwise.

A used modality's sensitivity and reliance shares (among the used modalities) *disagree*
when one is more than ``disagree_factor`` (default 3) times the other (the larger at least
0.05), or they differ by more than ``disagree_gap`` (default 0.3).

The margins are justified from measurements in docs/method.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ConfigError
from ..results import NOT_USED, ModalityResult, PermutationScore, ShapleyValues
from .verdict_text import _names, shuffle_effect, verdict_sentence  # noqa: F401 (re-exported)

__all__ = [
    "Thresholds",
    "Reliance",
    "RELIED",
    "NOT_RELIED",
    "UNDECIDED",
    "reliance_shares",
    "accuracy_shares",
    "reliance_effect",
    "accuracy_margin",
    "relied_upon",
    "undecided",
    "reliance_status",
    "shares_disagree",
    "disagreements",
    "modality_verdicts",
    "verdict_sentence",
    "shuffle_effect",
]

#: one-sided z of the "above chance" test (1%)
ABOVE_CHANCE_Z = 2.33
RELIED, NOT_RELIED, UNDECIDED = "relied upon", "not relied upon", "cannot tell"
#: z of the accuracy change that flips alone can make by chance (:func:`accuracy_margin`)
NULL_Z = 1.96


@dataclass(frozen=True)
class Thresholds:
    """Verdict thresholds: ``ignored``, ``weak`` and ``dominant`` on the relative share
    (1.0 = a uniform share), ``disagree_factor`` and ``disagree_gap`` on the sensitivity and
    reliance shares of one modality, ``margin_accuracy`` and ``margin_flip`` the practical
    margins of the accuracy drop and the prediction-flip rate, ``margin_confidence`` that of
    the mean change of the top-class probability under a shuffle (see :mod:`biasscope.auditing.verdict`)."""

    ignored: float = 0.1
    weak: float = 0.5
    dominant: float = 1.3
    disagree_factor: float = 3.0
    disagree_gap: float = 0.3
    margin_accuracy: float = 0.01
    margin_flip: float = 0.02
    margin_confidence: float = 0.01

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
        if not all(0 < x < 1 for x in (self.margin_accuracy, self.margin_flip, self.margin_confidence)):
            raise ConfigError(
                "Verdict margins must lie in (0, 1); got margin_accuracy="
                f"{self.margin_accuracy}, margin_flip={self.margin_flip}, margin_confidence={self.margin_confidence}.",
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


def _shares(modalities: Sequence[ModalityResult], field: str) -> dict[str, float] | None:
    if not modalities or any(m.permutation is None for m in modalities):
        return None
    drops = {m.name: max(_finite(getattr(m.permutation, field).mean), 0.0) for m in modalities}
    total = sum(drops.values())
    return {name: d / total if total > 0 else 0.0 for name, d in drops.items()}


def reliance_shares(modalities: Sequence[ModalityResult]) -> dict[str, float] | None:
    """Each modality's share of the summed permutation loss increase (negative increases
    count as 0), or None without permutation scores."""
    return _shares(modalities, "loss_increase")


def accuracy_shares(modalities: Sequence[ModalityResult]) -> dict[str, float] | None:
    """Each modality's share of the summed permutation accuracy drop (as above): beside the
    loss shares, since an over-confident modality's loss increase overstates its use."""
    return _shares(modalities, "accuracy_drop")


def _finite(x: float) -> float:
    return x if math.isfinite(x) else 0.0


def _shapley_accuracy(shapley: Sequence[ShapleyValues]) -> dict[str, float]:
    return next((dict(s.values) for s in shapley if s.metric == "accuracy"), {})


def reliance_effect(
    score: PermutationScore | None, thresholds: Thresholds = Thresholds(), *,
    accuracy_share: float = 0.0, modalities: int = 1, shapley: float | None = None,
    n_examples: int | None = None,
) -> str:
    """:data:`RELIED`, :data:`NOT_RELIED` or :data:`UNDECIDED` (see the module docstring),
    from the accuracy-drop interval: ``accuracy_share`` is the modality's share of the summed
    accuracy drop among ``modalities``, ``shapley`` its accuracy Shapley value (None: not
    computed). The flip rate tells ``ignored`` from ``unused`` (:func:`modality_verdicts`)."""
    if score is None:
        return UNDECIDED
    drop, ma = score.accuracy_drop, accuracy_margin(score, thresholds, n_examples)
    if drop.ci_low > ma:
        return RELIED
    small = modalities * accuracy_share < thresholds.weak and (shapley is None or shapley <= ma)
    return NOT_RELIED if drop.ci_high <= ma and small else UNDECIDED  # False for nan bounds


def accuracy_margin(score: PermutationScore, thresholds: Thresholds = Thresholds(), n_examples: int | None = None) -> float:
    """The accuracy-drop margin: ``margin_accuracy``, or, when larger, what the predictions a
    shuffle flips can cost by chance on ``n_examples`` examples: if flips were as likely to
    fix as to break a prediction, the accuracy change would have a standard deviation of
    sqrt(flip rate / N); the margin is 1.96 of those."""
    flips = score.flip_rate
    if not n_examples or flips is None or not flips.mean > 0:
        return thresholds.margin_accuracy
    return max(thresholds.margin_accuracy, NULL_Z * math.sqrt(flips.mean / n_examples))


def _effects(modalities: Sequence[ModalityResult], thresholds: Thresholds,
             shapley: Sequence[ShapleyValues], n_examples: int | None) -> dict[str, str]:
    acc = accuracy_shares(modalities) or {}
    values = _shapley_accuracy(shapley)
    return {m.name: reliance_effect(m.permutation, thresholds, accuracy_share=acc.get(m.name, 0.0),
                                    modalities=len(modalities), shapley=values.get(m.name), n_examples=n_examples)
            for m in modalities}


def relied_upon(score: PermutationScore | None, thresholds: Thresholds = Thresholds()) -> bool:
    """Whether shuffling the modality costs the predictions beyond the practical margin
    (the accuracy-drop or flip-rate interval lies wholly beyond it)."""
    return reliance_effect(score, thresholds) == RELIED


def undecided(modalities: Sequence[ModalityResult], thresholds: Thresholds = Thresholds(),
              shapley: Sequence[ShapleyValues] = (), n_examples: int | None = None) -> list[str]:
    """The modalities whose reliance cannot be told (neither relied upon nor shown
    negligible); empty without permutation scores."""
    if not modalities or any(m.permutation is None for m in modalities):
        return []
    return [n for n, e in _effects(modalities, thresholds, shapley, n_examples).items() if e == UNDECIDED]


def reliance_status(
    modalities: Sequence[ModalityResult],
    *,
    accuracy: float | None,
    chance: float | None,
    n_examples: int,
    shapley: Sequence[ShapleyValues] = (),
    thresholds: Thresholds = Thresholds(),
) -> Reliance:
    """Whether reliance is measurable: the model beats chance by the accuracy margin and by
    2.33 binomial standard errors (see the module docstring)."""
    if accuracy is None:
        return Reliance(False, "there are no labels, so the verdict rests on sensitivity alone.")
    if reliance_shares(modalities) is None:
        return Reliance(False, "no permutation score was computed (permutation_repeats=0).")
    baseline = max([chance or 0.0] + [s.empty for s in shapley if s.metric == "accuracy"])
    p = min(max(baseline, 1.0 / max(n_examples, 1)), 1.0 - 1.0 / max(n_examples, 1))
    margin = max(ABOVE_CHANCE_Z * math.sqrt(p * (1 - p) / max(n_examples, 1)), thresholds.margin_accuracy)
    if accuracy > baseline + margin:
        return Reliance(True)
    return Reliance(
        False,
        f"the model does not beat chance on these labels by the margin (accuracy "
        f"{100 * accuracy:.1f}%, chance {100 * baseline:.1f}%, margin {100 * margin:.1f} points), "
        "so the verdict rests on sensitivity alone.",
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


def _moves(m: ModalityResult, thresholds: Thresholds) -> bool:
    """Shuffling ``m`` changes predictions, or moves the confidence (the top-class
    probability), beyond the margins: the flip-rate interval is not inside ``margin_flip``,
    or the mean confidence change exceeds ``margin_confidence``."""
    p = m.permutation
    if p is None or p.flip_rate is None:
        return False
    return not p.flip_rate.ci_high <= thresholds.margin_flip or p.confidence_change.mean > thresholds.margin_confidence


def _among(values: dict[str, float], used: list[str]) -> dict[str, float]:
    total = sum(max(values[n], 0.0) for n in used)
    return {n: max(values[n], 0.0) / total if total > 0 else 0.0 for n in used}


def modality_verdicts(
    modalities: Sequence[ModalityResult],
    thresholds: Thresholds = Thresholds(),
    *,
    reliance: Reliance | None = None,
    shapley: Sequence[ShapleyValues] = (),
    n_examples: int | None = None,
) -> dict[str, str]:
    """The verdict of each modality under the rule in this module's docstring.

    ``reliance`` says whether reliance is measurable (default: when every modality has a
    permutation score and some modality is relied upon); ``n_examples`` the audit set's
    size (for :func:`accuracy_margin`)."""
    n = len(modalities)
    rel = reliance_shares(modalities)
    effects = _effects(modalities, thresholds, shapley, n_examples) if rel is not None else {}
    if reliance is None:
        reliance = Reliance(RELIED in effects.values())
    measurable = reliance.measurable and rel is not None
    out: dict[str, str] = {}
    for m in modalities:
        if measurable and effects[m.name] == NOT_RELIED:
            out[m.name] = "ignored" if _quiet(m, n, thresholds) and not _moves(m, thresholds) else "unused"
        elif not measurable and _quiet(m, n, thresholds):
            out[m.name] = "ignored"
    used = [m.name for m in modalities if m.name not in out]
    sensitivity = _among({m.name: m.share for m in modalities}, used)
    kinds = []
    if measurable:
        kinds = [_among(rel, used), _among(accuracy_shares(modalities), used)]
        values = _shapley_accuracy(shapley)
        if values:
            kinds.append(_among(values, used))
    for name in used:
        shares = [k[name] for k in kinds] or [sensitivity[name]]
        if len(used) == 1:
            out[name] = "dominant" if n > 1 else "ok"
        elif len(used) * max(shares) < thresholds.weak:
            out[name] = "weak"
        elif min(sensitivity[name], *shares) > max(0.5, thresholds.dominant / len(used)):
            out[name] = "dominant"
        else:
            out[name] = "ok"
    return {m.name: out[m.name] for m in modalities}
