"""Shared pieces of the renderers: verdict and severity colours, number formatting, and
access to the result's agreement analysis and reliance shares (computed in the library)."""

from __future__ import annotations

import math

from ..results import Agreement, AuditResult, Estimate

VERDICT_COLORS = {
    "ignored": "#c62828",
    "unused": "#ad1457",
    "weak": "#c77700",
    "ok": "#2e7d32",
    "dominant": "#1565c0",
}
VERDICT_STYLES = {
    "ignored": "bold red",
    "unused": "bold magenta",
    "weak": "bold yellow",
    "ok": "bold green",
    "dominant": "bold blue",
}
MEASURE_LABELS = {
    "functional_entropy": "Functional entropy",
    "fisher_bound": "Fisher bound",
    "variance": "Variance",
    "poincare_bound": "Poincaré bound",
}
DASH = "—"
SEVERITY_STYLES = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def fmt(x: float | None, digits: int = 3) -> str:
    """A number in ``digits`` significant digits; a dash for a missing or non-finite one."""
    if x is None or not math.isfinite(x):
        return DASH
    if x == 0:
        return "0"
    return f"{x:.{digits}g}"


UNAVAILABLE = "unavailable"


def fmt_bound(e: Estimate) -> str:
    """A bound's mean, or "unavailable" where the gradient could not give it (nan)."""
    return fmt(e.mean) if math.isfinite(e.mean) else UNAVAILABLE


def accuracy_shares_of(result: AuditResult) -> dict[str, float] | None:
    """Each modality's share of the summed permutation accuracy drop, or None."""
    if not has_permutation(result):
        return None
    from ..auditing.verdict import accuracy_shares

    return accuracy_shares(result.modalities)


def fmt_ci(e: Estimate, digits: int = 3) -> str:
    """``[low, high]`` of an estimate (a dash when the interval is undefined)."""
    if not (math.isfinite(e.ci_low) and math.isfinite(e.ci_high)):
        return DASH
    return f"[{fmt(e.ci_low, digits)}, {fmt(e.ci_high, digits)}]"


def fmt_pct(x: float | None) -> str:
    """A fraction as a percentage (``<0.1%`` for tiny positive values)."""
    if x is None or not math.isfinite(x):
        return DASH
    if 0 < abs(x) < 0.001:
        return "<0.1%" if x > 0 else ">-0.1%"
    return f"{100 * x:.1f}%"


def has_permutation(result: AuditResult) -> bool:
    """Whether every modality carries a permutation score."""
    return bool(result.modalities) and all(m.permutation is not None for m in result.modalities)


def agreement_of(result: AuditResult) -> Agreement:
    """The result's agreement analysis (computed for results read from schema 1 files)."""
    if result.agreement is not None:
        return result.agreement
    from ..auditing.agreement import analyse_agreement

    return analyse_agreement(result.modalities, result.shapley,
                             reliance_measurable=result.reliance_measurable is not False)


def reliance_of(result: AuditResult) -> dict[str, float] | None:
    """Each modality's reliance share (of the summed permutation loss increase), or None."""
    if not has_permutation(result):
        return None
    stored = {m.name: m.reliance_share for m in result.modalities}
    if all(v is not None for v in stored.values()):
        return stored  # type: ignore[return-value]
    from ..auditing.verdict import reliance_shares

    return reliance_shares(result.modalities)


def bound_notes(result: AuditResult) -> list[str]:
    """One sentence per estimate drawn above its bound: within the intervals (Monte-Carlo
    noise) or beyond them (a violation)."""
    notes = []
    for m in result.modalities:
        for measure, bound, label in (("functional_entropy", "fisher_bound", "Fisher bound"),
                                      ("variance", "poincare_bound", "Poincaré bound")):
            est, b = m.measure(measure), m.measure(bound)
            if not est.mean > b.mean:
                continue
            beyond = est.ci_low > b.ci_high
            notes.append(
                f"`{m.name}`: the {MEASURE_LABELS[measure].lower()} ({fmt(est.mean)}) is drawn above "
                f"its {label} ({fmt(b.mean)}); "
                + ("beyond both intervals, which the inequality forbids (see the diagnostics)."
                   if beyond else "their intervals overlap, so this is Monte-Carlo error of the "
                   "K-sample estimates, not a violation.")
            )
    return notes
