"""The summary part of the audit: from the per-example arrays to the
:class:`~biasscope.results.AuditResult` (intervals, shares, per-class means, verdicts,
agreement, diagnostics), built once, without mutating anything after construction."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ._state import MeasuredValues
from ..measuring._stats import mean_interval
from .agreement import analyse_agreement
from .diagnostics import audit_diagnostics
from ..results import Attribution, ProbeResult
from ..measuring.modality import Modality
from ..measuring.probe import probe_clauses, probe_diagnostics
from ..results import (
    AuditResult, Estimate, Diagnostic, JointCheck, ModalityResult, PermutationScore, ShapleyValues,
)
from .verdict import (
    Thresholds, accuracy_shares, modality_verdicts, reliance_shares, reliance_status,
    shuffle_effect, undecided, verdict_sentence,
)

__all__ = ["Evidence", "summarise"]


@dataclass(frozen=True)
class Evidence:
    """What the summary needs beside the per-example arrays."""

    labels: np.ndarray | None
    permutation: dict[str, PermutationScore]
    shapley: list[ShapleyValues]
    settings: dict[str, Any]
    provenance: dict[str, Any]
    thresholds: Thresholds
    seed: int
    early_diagnostics: list[Diagnostic] = field(default_factory=list)
    probes: list[ProbeResult] = field(default_factory=list)
    attributions: list[Attribution] = field(default_factory=list)


def _modality_results(
    modalities: Sequence[Modality], values: MeasuredValues, evidence: Evidence, classes_of: np.ndarray,
    classes: list[int],
) -> list[ModalityResult]:
    """Per modality: intervals, per-class and per-example values, share (verdict to come)."""
    means = {m.name: float(values.per_modality[m.name]["functional_entropy"].mean()) for m in modalities}
    total = sum(means.values())
    out = []
    for m in modalities:
        per = values.per_modality[m.name]
        out.append(ModalityResult(
            name=m.name,
            site=m.site,
            share=means[m.name] / total if total > 0 else 0.0,
            per_class={k: [float(v[classes_of == c].mean()) for c in classes] for k, v in per.items()},
            per_example={k: v.tolist() for k, v in per.items()},
            permutation=evidence.permutation.get(m.name),
            **{k: _interval(v, evidence.seed) for k, v in per.items()},
        ))
    rel, acc = reliance_shares(out), accuracy_shares(out)
    return [replace(r, reliance_share=None if rel is None else rel[r.name],
                    accuracy_share=None if acc is None else acc[r.name]) for r in out]


def _interval(values: np.ndarray, seed: int) -> Estimate:
    """The bootstrap interval of the mean; nan (unavailable) when any value is (a bound
    that some example cannot give, :mod:`biasscope.measuring.bounds`)."""
    if not np.isfinite(values).all():
        return Estimate(math.nan, math.nan, math.nan)
    return mean_interval(values, method="bootstrap", seed=seed)


def _joint(values: MeasuredValues, seed: int) -> JointCheck | None:
    if not values.joint:
        return None
    j = values.joint

    def interval(v: np.ndarray):
        return mean_interval(v, method="bootstrap", seed=seed)

    return JointCheck(
        functional_entropy=interval(j["joint_entropy"]), variance=interval(j["joint_variance"]),
        sum_functional_entropy=interval(j["sum_entropy"]), sum_variance=interval(j["sum_variance"]),
        entropy_gap=interval(j["sum_entropy"] - j["joint_entropy"]),
        variance_gap=interval(j["sum_variance"] - j["joint_variance"]),
    )


def majority_rate(labels: np.ndarray | None) -> float | None:
    """The share of the most frequent label (the accuracy of always guessing it)."""
    if labels is None or labels.size == 0:
        return None
    return float(np.bincount(labels.astype(np.int64)).max() / labels.size)


def summarise(
    modalities: Sequence[Modality],
    values: MeasuredValues,
    evidence: Evidence,
    *,
    candidates: Callable[[str], list[str]] | None = None,
) -> AuditResult:
    """The audit's result. ``candidates(name)`` lists the layers that reach the logits and
    carry a modality whose every measure is 0 (for the ``site_unreachable`` diagnostic)."""
    labels, pred = evidence.labels, values.predictions
    classes_of = labels if labels is not None else pred
    classes = sorted(int(c) for c in np.unique(classes_of))
    measured = _modality_results(modalities, values, evidence, classes_of, classes)
    accuracy = float((pred == labels).mean()) if labels is not None else None
    chance = majority_rate(labels)
    thresholds, shapley = evidence.thresholds, evidence.shapley
    reliance = reliance_status(measured, accuracy=accuracy, chance=chance, n_examples=int(pred.size),
                               shapley=shapley, thresholds=thresholds)
    n = int(pred.size)
    verdicts = modality_verdicts(measured, thresholds, reliance=reliance, shapley=shapley, n_examples=n)
    results = [replace(r, verdict=verdicts[r.name]) for r in measured]
    diagnostics = audit_diagnostics(results, reliance=reliance, labelled=labels is not None,
                                    shapley=shapley, thresholds=thresholds, n_examples=n)
    if candidates is not None:
        diagnostics = [_with_candidates(d, candidates) for d in diagnostics]
    diagnostics += probe_diagnostics(evidence.probes, verdicts)
    note = reliance.note if labels is not None else ""
    return AuditResult(
        modalities=results,
        joint=_joint(values, evidence.seed),
        classes=classes,
        class_source="label" if labels is not None else "prediction",
        n_examples=int(pred.size),
        accuracy=accuracy,
        settings=evidence.settings,
        shapley=list(evidence.shapley),
        sentence=verdict_sentence(verdicts, note=note, disagree=[
            d.modality for d in diagnostics if d.code == "measures_disagree" and d.modality],
            about=probe_clauses(evidence.probes, verdicts),
            moves={r.name: shuffle_effect(r.name, r.permutation, margin_flip=thresholds.margin_flip,
                                          margin_confidence=thresholds.margin_confidence)
                   for r in results if r.verdict == "unused"},
            undecided=undecided(results, thresholds, shapley, n) if reliance.measurable else (),
            relied=reliance.measurable or labels is None),
        provenance=evidence.provenance,
        diagnostics=[*evidence.early_diagnostics, *diagnostics],
        reliance_measurable=reliance.measurable if reliance_shares(results) is not None else None,
        chance_accuracy=chance,
        agreement=analyse_agreement(results, evidence.shapley, evidence.thresholds,
                                    reliance_measurable=reliance.measurable),
        probes=list(evidence.probes),
        attributions=list(evidence.attributions),
    )


def _with_candidates(d: Diagnostic, candidates: Callable[[str], list[str]]) -> Diagnostic:
    if d.code != "site_unreachable" or d.modality is None:
        return d
    found = candidates(d.modality)
    if not found:
        return d
    return replace(d, fix="Sites on the path to the logits that carry it: "
                   + ", ".join(f"`{c}`" for c in found[:4]) + ".")
