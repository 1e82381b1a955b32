"""Shared pieces of the renderers: verdict colours, number formatting, and the rank order
of modalities under each measure ("do the measures agree?")."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ..results import AuditResult, Estimate

VERDICT_COLORS = {
    "ignored": "#c62828",
    "weak": "#c77700",
    "ok": "#2e7d32",
    "dominant": "#1565c0",
}
VERDICT_STYLES = {
    "ignored": "bold red",
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


def fmt(x: float | None, digits: int = 3) -> str:
    """A number in ``digits`` significant digits; a dash for a missing or non-finite one."""
    if x is None or not math.isfinite(x):
        return DASH
    if x == 0:
        return "0"
    return f"{x:.{digits}g}"


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


@dataclass(frozen=True)
class Ranking:
    """The order of modalities under one measure, most important first; ties grouped."""

    measure: str
    values: dict[str, float]
    groups: tuple[tuple[str, ...], ...]

    @property
    def top(self) -> tuple[str, ...]:
        return self.groups[0] if self.groups else ()

    @property
    def order_text(self) -> str:
        return " > ".join(" = ".join(g) for g in self.groups)

    @property
    def key(self) -> tuple[frozenset[str], ...]:
        return tuple(frozenset(g) for g in self.groups)


def _rank(measure: str, values: dict[str, float]) -> Ranking:
    clean = {k: (v if math.isfinite(v) else -math.inf) for k, v in values.items()}
    names = sorted(clean, key=lambda n: -clean[n])
    scale = max((abs(v) for v in clean.values() if math.isfinite(v)), default=0.0)
    tol = 1e-9 * scale + 1e-15
    groups: list[list[str]] = []
    for n in names:
        if groups and abs(clean[groups[-1][0]] - clean[n]) <= tol:
            groups[-1].append(n)
        else:
            groups.append([n])
    return Ranking(measure, dict(values), tuple(tuple(g) for g in groups))


def rankings(result: AuditResult) -> list[Ranking]:
    """The rank order of modalities under every measure the result holds."""
    mods = result.modalities
    getters: list[tuple[str, Callable]] = [
        ("Functional entropy share", lambda m: m.share),
        ("Fisher bound", lambda m: m.fisher_bound.mean),
    ]
    if has_permutation(result):
        getters += [
            ("Permutation accuracy drop", lambda m: m.permutation.accuracy_drop.mean),
            ("Permutation loss increase", lambda m: m.permutation.loss_increase.mean),
        ]
    out = [_rank(label, {m.name: float(get(m)) for m in mods}) for label, get in getters]
    for s in result.shapley:
        label = {"accuracy": "Shapley (accuracy)", "log_likelihood": "Shapley (log-likelihood)"}
        out.append(_rank(label.get(s.metric, f"Shapley ({s.metric})"), dict(s.values)))
    return out


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def agreement(ranks: list[Ranking]) -> tuple[bool, str]:
    """Whether the rankings agree, and one or two sentences that say how (names in
    backticks, as in the verdict sentence)."""
    if not ranks or len(ranks[0].values) < 2:
        return True, "With one modality there is nothing to rank."
    if len({r.key for r in ranks}) == 1:
        return True, (
            f"All {len(ranks)} measures rank the modalities the same way: "
            f"{_code_order(ranks[0])}."
        )
    tops: dict[frozenset[str], list[str]] = {}
    for r in ranks:
        tops.setdefault(frozenset(r.top), []).append(r.measure)
    if len(tops) == 1:
        top = " = ".join(f"`{n}`" for n in ranks[0].top)
        return False, (
            f"All measures put {top} first, but they order the other modalities "
            "differently (see the table)."
        )
    parts = []
    for top, measures in tops.items():
        names = " = ".join(f"`{n}`" for n in sorted(top, key=list(ranks[0].values).index))
        verb = "puts" if len(measures) == 1 else "put"
        parts.append(f"{_join([_lower(x) for x in measures])} {verb} {names} first")
    return False, (
        "The measures disagree on which modality matters most: " + "; ".join(parts) + ". "
        "Sensitivity (the entropy family) is not reliance (permutation, Shapley): read "
        "both before acting."
    )


def _lower(measure: str) -> str:
    """A measure's label inside a sentence (proper names keep their capital)."""
    if measure.split()[0] in ("Fisher", "Shapley", "Poincaré"):
        return measure
    return measure[0].lower() + measure[1:]


def _code_order(r: Ranking) -> str:
    return " > ".join(" = ".join(f"`{n}`" for n in g) for g in r.groups)
