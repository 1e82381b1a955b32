"""What the reader of an audit must know before trusting its verdict: an output that cannot
be the logits of the label classes (an error by default), reliance that cannot be measured,
a site whose every measure is exactly 0, sensitivity and reliance that disagree in size,
and an estimate beyond its bound. Pure functions over measured values."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ModelOutputError
from ..results import Diagnostic, ModalityResult, ShapleyValues
from .agreement import _pct
from .verdict import Reliance, Thresholds, _names, disagreements, reliance_shares, undecided

__all__ = [
    "OutputCheck",
    "output_problems",
    "raise_output_problems",
    "audit_diagnostics",
]

#: a binomial tail below this is "below chance by a margin"
BELOW_CHANCE_P = 1e-3

_OUTPUT_FIX = (
    "Choose the entry of the model's output that holds the class logits with the `output_key` "
    "parameter (a dict or ModelOutput) or `output_index` (a tuple), or wrap the model so "
    "that it returns one row of class scores per example; or turn this check off "
    "(`check_output=False`) to audit the output anyway."
)


class OutputCheck:
    """What the output check needs to know about the clean predictions."""

    def __init__(self, *, width: int, other_width: int | None, other_size: int | None,
                 size: int, predictions: Sequence[int], labels: Sequence[int] | None) -> None:
        self.width, self.other_width, self.other_size, self.size = width, other_width, other_size, size
        self.predictions, self.labels = list(predictions), None if labels is None else list(labels)


def _binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k), X ~ Binomial(n, p)."""
    from scipy.stats import binom

    return float(binom.cdf(k, n, p))


def output_problems(check: OutputCheck) -> list[str]:
    """Why the output cannot be the logits of the label classes (empty when it can be)."""
    problems = []
    if check.other_width is not None and check.other_width != check.width:
        problems.append(
            f"its last dimension changes with the batch size ({check.width} columns for "
            f"{check.size} examples, {check.other_width} for {check.other_size}), as a "
            "batch x batch similarity matrix does"
        )
    labels = check.labels
    if not labels:
        return problems
    classes = sorted(set(labels))
    if check.width < classes[-1] + 1:
        problems.append(
            f"it has {check.width} columns but the labels go up to {classes[-1]}"
        )
    if check.width == classes[-1] + 1:
        return problems  # one column per label class: a poor model is not a wrong output
    n = len(labels)
    correct = sum(p == y for p, y in zip(check.predictions, labels))
    chance = 1.0 / len(classes)
    outside = sum(p not in set(classes) for p in check.predictions) / n
    if len(classes) > 1 and (_binomial_cdf(correct, n, chance) < BELOW_CHANCE_P or (outside > 0.5 and correct / n < chance)):
        problems.append(
            f"it has {check.width} columns for labels 0..{classes[-1]}, and its accuracy is "
            f"{100 * correct / n:.1f}%, below the chance rate {100 * chance:.1f}% of "
            f"{len(classes)} label classes ({100 * outside:.0f}% of the predictions are classes "
            "the labels never take)"
        )
    return problems


def raise_output_problems(check: OutputCheck) -> None:
    """Raise :class:`ModelOutputError` when :func:`output_problems` finds any."""
    problems = output_problems(check)
    if problems:
        raise ModelOutputError(
            "The model's output does not look like the logits of the label classes: "
            + "; ".join(problems) + ". Every measure would be meaningless. " + _OUTPUT_FIX
        )


def _reliance_diagnostic(reliance: Reliance, labelled: bool) -> list[Diagnostic]:
    if reliance.measurable:
        return []
    if not labelled:
        return [Diagnostic(
            "reliance_unmeasurable", "info",
            "Reliance was not measured: the data has no labels, so the verdict rests on "
            "sensitivity (noise moves the output) alone.",
            "Audit labelled data (the `label_key` parameter) for the permutation and Shapley checks.",
        )]
    return [Diagnostic(
        "reliance_unmeasurable", "warning", reliance.note,
        "Check the labels (the `label_key` parameter: the right column, class indices) and "
        "that the model was trained on this task.",
    )]


def _undecided(modalities: Sequence[ModalityResult], names: Sequence[str], thresholds: Thresholds) -> list[Diagnostic]:
    """One warning naming the modalities whose reliance cannot be told."""
    if not names:
        return []
    from ..runtime.options import AuditOptions

    by_name = {m.name: m for m in modalities}
    repeats = by_name[names[0]].permutation.repeats
    intervals = "; ".join(f"`{n}`: {_effect_text(by_name[n].permutation)}" for n in names)
    return [Diagnostic(
        "reliance_undecided", "warning",
        f"Over {repeats} shuffles it cannot be told whether the model relies on {_names(names)} "
        f"({intervals}): the intervals are neither wholly inside the practical margins "
        f"({_pct(thresholds.margin_accuracy)} accuracy, {_pct(thresholds.margin_flip)} flipped "
        "predictions, or what flipped predictions cost by chance on this many examples) nor wholly "
        "beyond them, or the modality holds a sizeable share of the accuracy drop. It is not called ignored or unused; its level (weak/ok/dominant) rests "
        "on the mean shares.",
        f"Raise `permutation_repeats` (it was {repeats}; "
        f"{max(AuditOptions().permutation_repeats, 2 * repeats)} or more narrows the intervals): "
        "more shuffles can only make the verdict more decisive.",
        names[0] if len(names) == 1 else None,
    )]


def _effect_text(p) -> str:
    e = p.accuracy_drop
    text = f"accuracy drop {_pct(e.mean)} [{_pct(e.ci_low)}, {_pct(e.ci_high)}]"
    if p.flip_rate is not None:
        f = p.flip_rate
        text += f", flip rate {_pct(f.mean)} [{_pct(f.ci_low)}, {_pct(f.ci_high)}]"
    return text


def _redundant(modalities: Sequence[ModalityResult], shapley: Sequence[ShapleyValues],
               thresholds: Thresholds) -> list[Diagnostic]:
    """Shuffling every modality together costs much more accuracy than the single shuffles
    add up to: the modalities carry overlapping information (duplicates), and a single
    shuffle understates each one's use."""
    acc = next((s for s in shapley if s.metric == "accuracy"), None)
    if acc is None or len(modalities) < 2 or any(m.permutation is None for m in modalities):
        return []
    together = acc.full - acc.empty
    alone = sum(max(m.permutation.accuracy_drop.mean, 0.0) for m in modalities)
    if not (together > 2 * alone + thresholds.margin_accuracy):
        return []
    names = [m.name for m in modalities if acc.values.get(m.name, 0.0) > thresholds.margin_accuracy]
    return [Diagnostic(
        "redundant_modalities", "warning",
        f"Shuffling every modality together costs {_pct(together)} accuracy, but shuffling each "
        f"alone costs {_pct(alone)} in all: {_names(names or [m.name for m in modalities])} "
        "carry overlapping information (e.g. the same data twice), so the model can answer "
        "from either and a single shuffle understates its use. Their accuracy Shapley values "
        "(" + ", ".join(f"`{n}` {_pct(v)}" for n, v in acc.values.items()) + ") share the "
        "joint effect.",
        "Read the Shapley values; to see which one the model would use alone, audit with one "
        "of them removed or decorrelated.",
    )]


def _exactly_zero(m: ModalityResult, shapley: Sequence[ShapleyValues]) -> bool:
    fe = m.functional_entropy
    if (fe.mean, fe.ci_high) != (0.0, 0.0) or any(m.per_example.get("functional_entropy", [0.0])):
        return False
    if m.permutation is not None:
        p = m.permutation
        if p.loss_increase.mean != 0.0 or p.accuracy_drop.mean != 0.0:
            return False
    return all(s.values.get(m.name, 0.0) == 0.0 for s in shapley)


def _site_unreachable(m: ModalityResult) -> Diagnostic:
    where = "input" if m.site.startswith("input") else "layer"
    message = (
        f"Every measure of `{m.name}` is exactly 0: the output does not change at all when "
        f"its {where} `{m.site}` changes. If the model should read this modality, the site "
        "may never reach the logits (e.g. a pooler whose output `forward` does not use)."
    )
    # the audit names the sites that do carry it when `layers` can tell (_audit_summary)
    fix = "Choose a site on the path from this modality to the output (`biasscope.layer_table` lists them)."
    return Diagnostic("site_unreachable", "warning", message, fix, m.name)


def _disagree(m: ModalityResult, rel: float) -> Diagnostic:
    return Diagnostic(
        "measures_disagree", "warning",
        f"Sensitivity and reliance disagree on `{m.name}`: it holds {_pct(m.share)} of the "
        f"functional entropy but {_pct(rel)} of the permutation loss increase.",
        "Read both: sensitivity says noise there moves the output, reliance what shuffling it "
        "costs the predictions; audit on data like the validation split.",
        m.name,
    )


def _bound_exceeded(m: ModalityResult) -> list[Diagnostic]:
    out = []
    for measure, bound, label in (("functional_entropy", "fisher_bound", "Fisher"),
                                  ("variance", "poincare_bound", "Poincaré")):
        est, b = m.measure(measure), m.measure(bound)
        if est.ci_low > b.ci_high:
            out.append(Diagnostic(
                "bound_exceeded", "warning",
                f"The {measure.replace('_', ' ')} of `{m.name}` ({est.mean:.3g}) lies above its "
                f"{label} bound ({b.mean:.3g}) beyond both intervals, which the inequality forbids.",
                "Raise `samples` (Monte-Carlo error), or check that the model is differentiable "
                "at the site (the bound uses the gradient).",
                m.name,
            ))
    return out


def audit_diagnostics(
    modalities: Sequence[ModalityResult],
    *,
    reliance: Reliance,
    labelled: bool,
    shapley: Sequence[ShapleyValues] = (),
    thresholds: Thresholds = Thresholds(),
    n_examples: int | None = None,
) -> list[Diagnostic]:
    """Every diagnostic the measured values call for, whole-audit ones first."""
    out = _reliance_diagnostic(reliance, labelled)
    if reliance.measurable:
        out += _undecided(modalities, undecided(modalities, thresholds, shapley, n_examples), thresholds)
        out += _redundant(modalities, shapley, thresholds)
    rel = reliance_shares(modalities) if reliance.measurable else None
    disagree = disagreements(modalities, thresholds) if rel is not None else {}
    for m in modalities:
        if _exactly_zero(m, shapley):
            out.append(_site_unreachable(m))
        if disagree.get(m.name):
            out.append(_disagree(m, rel[m.name]))
        out += _bound_exceeded(m)
    return out
