"""Do the measures agree? The order of the modalities under every measure, and the *sizes*
of each modality's sensitivity share (functional entropy) and reliance share (permutation
loss increase) side by side: two measures can rank the modalities alike and still disagree
by a factor of 100 on how much a modality matters."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from ..results import Agreement, ModalityResult, Ranking, ShapleyValues, ShareComparison
from .verdict import Thresholds, disagreements, reliance_shares

__all__ = ["rank", "rankings", "analyse_agreement"]


def rank(measure: str, values: dict[str, float]) -> Ranking:
    """The modalities ordered by ``values``, largest first; equal values (to 1e-9 relative)
    share a group; non-finite values come last."""
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


_SHAPLEY_LABELS = {"accuracy": "Shapley (accuracy)", "log_likelihood": "Shapley (log-likelihood)"}


def rankings(modalities: Sequence[ModalityResult], shapley: Sequence[ShapleyValues] = ()) -> list[Ranking]:
    """The rank order of the modalities under every measure present."""
    getters: list[tuple[str, Callable[[ModalityResult], float]]] = [
        ("Functional entropy share", lambda m: m.share),
        ("Fisher bound", lambda m: m.fisher_bound.mean),
    ]
    if modalities and all(m.permutation is not None for m in modalities):
        getters += [
            ("Permutation accuracy drop", lambda m: m.permutation.accuracy_drop.mean),
            ("Permutation loss increase", lambda m: m.permutation.loss_increase.mean),
        ]
    out = [rank(label, {m.name: float(get(m)) for m in modalities}) for label, get in getters]
    for s in shapley:
        out.append(rank(_SHAPLEY_LABELS.get(s.metric, f"Shapley ({s.metric})"), dict(s.values)))
    return out


def analyse_agreement(
    modalities: Sequence[ModalityResult],
    shapley: Sequence[ShapleyValues] = (),
    thresholds: Thresholds = Thresholds(),
    *,
    reliance_measurable: bool = True,
) -> Agreement:
    """Orders and sizes under every measure, with a sentence or two that says how they
    agree (names in backticks, as in the verdict sentence). Sizes are compared only where
    reliance is measurable."""
    ranks = rankings(modalities, shapley)
    rel = reliance_shares(modalities) if reliance_measurable else None
    flags = disagreements(modalities, thresholds)
    shares = tuple(
        ShareComparison(m.name, m.share, rel[m.name], flags[m.name]) for m in modalities
    ) if rel is not None and len(modalities) > 1 else ()
    same_order = len({r.key for r in ranks}) <= 1
    same_top = len({frozenset(r.top) for r in ranks}) <= 1
    text = _order_text(ranks, same_order, same_top)
    disagreeing = [s for s in shares if s.disagree]
    if disagreeing:
        text += " But the sizes disagree: " + "; ".join(
            f"`{s.modality}` holds {_pct(s.sensitivity)} of the sensitivity and "
            f"{_pct(s.reliance)} of the reliance" for s in disagreeing
        ) + ". Sensitivity (noise moves the output) is not reliance (shuffling costs the model)."
    elif shares and len(modalities) > 1:
        text += " The sensitivity and reliance shares agree in size."
    return Agreement(tuple(ranks), same_order, same_top, shares, text)


def _pct(x: float) -> str:
    return "<0.1%" if 0 < x < 0.001 else f"{100 * x:.1f}%"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _order_text(ranks: list[Ranking], same_order: bool, same_top: bool) -> str:
    if not ranks or len(ranks[0].values) < 2:
        return "With one modality there is nothing to rank."
    if same_order:
        return f"All {len(ranks)} measures rank the modalities the same way: {_code_order(ranks[0])}."
    if same_top:
        top = " = ".join(f"`{n}`" for n in ranks[0].top)
        return (
            f"All measures put {top} first, but they order the other modalities differently "
            "(see the table)."
        )
    tops: dict[frozenset[str], list[str]] = {}
    for r in ranks:
        tops.setdefault(frozenset(r.top), []).append(r.measure)
    parts = []
    for top, measures in tops.items():
        names = " = ".join(f"`{n}`" for n in sorted(top, key=list(ranks[0].values).index))
        verb = "puts" if len(measures) == 1 else "put"
        parts.append(f"{_join([_lower(x) for x in measures])} {verb} {names} first")
    return (
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
