"""Plotly figures of an :class:`~biasscope.results.AuditResult` (one function per figure;
:func:`report_figures` returns the ones a result calls for, in report order)."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..results import MEASURES, AuditResult, Estimate
from ..auditing.verdict import Thresholds
from ._common import MEASURE_LABELS, VERDICT_COLORS, fmt, fmt_ci, has_permutation, reliance_of

__all__ = [
    "FONT",
    "report_figures",
    "share_figure",
    "measures_figure",
    "per_class_figure",
    "distribution_figure",
    "permutation_figure",
    "shapley_figure",
    "compare_figure",
]

FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif'
INK = "#1f2933"
SENSITIVITY = "#3b5b92"  # the entropy family
RELIANCE = "#2a9d8f"  # permutation and Shapley
MUTED = "#9aa5b1"
GRID = "#e4e7eb"


def _label(name: str) -> str:
    # plotly renders a subset of HTML in labels and decodes entities: escape names
    return html.escape(name, quote=False)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _error_bars(ests: Sequence[Estimate]) -> dict:
    def side(e: Estimate, up: bool) -> float:
        d = (e.ci_high - e.mean) if up else (e.mean - e.ci_low)
        return max(d, 0.0) if math.isfinite(d) else 0.0

    if not any(math.isfinite(e.ci_low) and math.isfinite(e.ci_high) for e in ests):
        return dict(visible=False)
    return dict(
        type="data",
        symmetric=False,
        array=[side(e, True) for e in ests],
        arrayminus=[side(e, False) for e in ests],
        thickness=1.4,
        width=5,
        color=INK,
    )


def _hover_est(ests: Sequence[Estimate]) -> list[str]:
    return [f"{fmt(e.mean, 4)} {fmt_ci(e, 3)}" for e in ests]


def _style(fig: go.Figure, height: int, *, legend: bool = False, top: int = 48) -> go.Figure:
    fig.update_layout(
        template="plotly_white",
        height=height,
        margin=dict(l=64, r=24, t=top, b=48),
        font=dict(family=FONT, size=12, color=INK),
        hoverlabel=dict(font_family=FONT),
        showlegend=legend,
        bargap=0.35,
        legend=dict(orientation="h", yanchor="bottom", y=1.04, xanchor="left", x=0),
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="#ffffff",
        modebar=dict(bgcolor="rgba(255,255,255,0)", color="#cbd2d9", activecolor=SENSITIVITY),
    )
    fig.update_annotations(font=dict(family=FONT, size=13, color=INK))
    fig.update_xaxes(showline=True, linecolor="#cbd2d9", gridcolor=GRID, zeroline=False)
    fig.update_yaxes(showline=False, gridcolor=GRID, zeroline=True, zerolinecolor="#cbd2d9")
    return fig


def _thresholds(result: AuditResult) -> Thresholds:
    t = result.settings.get("thresholds")
    try:
        return Thresholds(**t) if isinstance(t, dict) else Thresholds()
    except TypeError:
        return Thresholds()


def share_figure(result: AuditResult) -> go.Figure:
    """Shares of the whole (sensitivity, and reliance when labels exist) against the
    verdict thresholds, which are relative to a uniform share 1/M."""
    mods = result.modalities
    names = [_label(m.name) for m in mods]
    n = len(result.modalities)
    fig = go.Figure()
    fig.add_bar(
        y=names, x=[m.share for m in mods], orientation="h", marker_color=SENSITIVITY,
        name="Functional-entropy share (sensitivity)",
        text=[f"{100 * m.share:.1f}%" for m in mods], textposition="outside",
        cliponaxis=False, hovertemplate="%{y}: %{x:.3f}<extra>sensitivity</extra>",
    )
    rel = reliance_of(result)
    if rel is not None:
        fig.add_bar(
            y=names, x=[rel[m.name] for m in mods], orientation="h", marker_color=RELIANCE,
            name="Permutation loss-increase share (reliance)",
            text=[f"{100 * rel[m.name]:.1f}%" for m in mods], textposition="outside",
            cliponaxis=False, hovertemplate="%{y}: %{x:.3f}<extra>reliance</extra>",
        )
    t = _thresholds(result)
    lines = [(1.0, MUTED, "solid", "uniform 1/M =")]
    lines += [(t.ignored, VERDICT_COLORS["ignored"], "dot", "ignored below"),
              (t.weak, VERDICT_COLORS["weak"], "dot", "weak below")]
    if n > 1:  # dominant: most of both measures, and at least `dominant` x uniform
        lines.append((max(t.dominant, n / 2), VERDICT_COLORS["dominant"], "dot", "dominant above"))
    lines.sort(key=lambda line: line[0])
    for i, (level, color, dash, text) in enumerate(lines):
        x = level / n
        if x > 1.0:
            continue
        fig.add_vline(x=x, line=dict(color=color, width=1.3, dash=dash))
        fig.add_annotation(  # staggered in two rows so close thresholds stay readable
            x=x, y=1.0, yref="paper", yanchor="bottom", text=f"{text} {x:.2g}",
            showarrow=False, font=dict(size=10, color=color), xanchor="left", xshift=2,
            yshift=2 + 14 * (i % 2),
        )
    per_bar = 2 if rel is not None else 1
    fig.update_xaxes(range=[0, 1.1], tickformat=".0%", title_text="share of the summed measure")
    fig.update_yaxes(autorange="reversed")  # first modality (and first trace) on top
    _style(fig, 170 + 30 * n * per_bar, legend=True, top=52)
    fig.update_layout(
        barmode="group", bargap=0.28, margin=dict(b=96),
        legend=dict(orientation="h", yanchor="top", y=-0.42 - 0.1 / n, x=0, xanchor="left"),
    )
    return fig


def measures_figure(result: AuditResult) -> go.Figure:
    """The four measures per modality with 95% intervals: one small multiple each."""
    fig = make_subplots(
        rows=1, cols=4, subplot_titles=[MEASURE_LABELS[k] for k in MEASURES],
        horizontal_spacing=0.07,
    )
    names = [_label(m.name) for m in result.modalities]
    for i, key in enumerate(MEASURES, start=1):
        ests = [m.measure(key) for m in result.modalities]
        fig.add_bar(
            x=names, y=[_finite(e.mean) for e in ests], marker_color=SENSITIVITY,
            error_y=_error_bars(ests), customdata=_hover_est(ests), name=MEASURE_LABELS[key],
            hovertemplate="%{x}: %{customdata}<extra></extra>", row=1, col=i,
        )
    fig.update_yaxes(rangemode="tozero")
    return _style(fig, 320)


def per_class_figure(result: AuditResult, measure: str = "functional_entropy") -> go.Figure:
    """Heatmap of the per-class mean of ``measure``: modality x class."""
    mods = [m for m in result.modalities if m.per_class.get(measure)]
    z = [[_finite(v) for v in m.per_class[measure]] for m in mods]
    classes = [str(c) for c in result.classes]
    small = len(classes) * len(mods) <= 240
    fig = go.Figure(
        go.Heatmap(
            z=z, x=classes, y=[_label(m.name) for m in mods], colorscale="Blues",
            zmin=0, colorbar=dict(title=dict(text="mean FE"), thickness=12),
            texttemplate="%{z:.3g}" if small else None, xgap=2, ygap=2,
            hovertemplate="%{y}, class %{x}: %{z:.4g}<extra></extra>",
        )
    )
    by = "label" if result.class_source == "label" else "predicted class"
    fig.update_xaxes(type="category", title_text=f"class (by {by})", showline=False)
    fig.update_yaxes(autorange="reversed", zeroline=False)
    return _style(fig, 110 + 46 * len(mods), top=24)


def distribution_figure(result: AuditResult, measure: str = "functional_entropy") -> go.Figure:
    """Box plot of ``measure`` over examples, log scale; exact zeros drawn at a floor."""
    mods = [m for m in result.modalities if m.per_example.get(measure)]
    values = {m.name: [v for v in m.per_example[measure] if math.isfinite(v)] for m in mods}
    positive = [v for vs in values.values() for v in vs if v > 0]
    log = bool(positive)
    floor = min(positive) / 10 if log else 0.0
    fig = go.Figure()
    for m in mods:
        vs = values[m.name]
        zeros = sum(1 for v in vs if v <= 0)
        label = f"{_label(m.name)}<br>{zeros} of {len(vs)} exactly 0"
        fig.add_box(
            y=[max(v, floor) for v in vs], name=label,
            boxpoints="all" if len(vs) <= 400 else "outliers",
            jitter=0.45, pointpos=0, marker=dict(size=3, color=SENSITIVITY, opacity=0.45),
            line=dict(color=SENSITIVITY, width=1.5), fillcolor="rgba(59,91,146,0.12)",
            boxmean=True, hovertemplate="%{y:.3g}<extra></extra>",
        )
    if log and any(v <= 0 for vs in values.values() for v in vs):
        fig.add_hline(y=floor, line=dict(color=MUTED, width=1, dash="dot"))
        fig.add_annotation(
            x=1, xref="paper", y=math.log10(floor), text="0 (drawn at this floor)",
            showarrow=False, xanchor="right", yanchor="bottom", font=dict(size=10, color="#616e7c"),
        )
    if log:
        fig.update_yaxes(type="log", exponentformat="power", dtick=1)
    fig.update_yaxes(title_text=f"{MEASURE_LABELS[measure].lower()} per example")
    return _style(fig, 360, top=24)


def permutation_figure(result: AuditResult) -> go.Figure:
    """Permutation scores with 95% intervals over repeats."""
    fig = make_subplots(
        rows=1, cols=2, horizontal_spacing=0.12,
        subplot_titles=["Accuracy drop (absolute)", "Cross-entropy increase (nats)"],
    )
    names = [_label(m.name) for m in result.modalities]
    for col, attr in enumerate(("accuracy_drop", "loss_increase"), start=1):
        ests = [getattr(m.permutation, attr) for m in result.modalities]
        fig.add_bar(
            x=names, y=[_finite(e.mean) for e in ests], marker_color=RELIANCE,
            error_y=_error_bars(ests), customdata=_hover_est(ests),
            hovertemplate="%{x}: %{customdata}<extra></extra>", row=1, col=col,
        )
    return _style(fig, 300)


def shapley_figure(result: AuditResult) -> go.Figure:
    """Modality Shapley values of each metric, with the interaction term."""
    shap = result.shapley
    titles = [
        f"{s.metric.replace('_', '-')}: v(all) = {s.full:.3g}, v(none) = {s.empty:.3g}"
        for s in shap
    ]
    fig = make_subplots(rows=1, cols=len(shap), subplot_titles=titles, horizontal_spacing=0.12)
    for col, s in enumerate(shap, start=1):
        names = [_label(n) for n in s.values] + ["(interaction)"]
        ys = [_finite(v) for v in s.values.values()] + [_finite(s.interaction)]
        fig.add_bar(
            x=names, y=ys, marker_color=[RELIANCE] * len(s.values) + [MUTED],
            hovertemplate="%{x}: %{y:.4g}<extra></extra>", row=1, col=col,
        )
    return _style(fig, 300)


def compare_figure(before: AuditResult, after: AuditResult) -> go.Figure:
    """Grouped before/after bars: FE share, functional entropy, and permutation accuracy
    drop when both results have it."""
    names = [m.name for m in before.modalities]
    names += [m.name for m in after.modalities if m.name not in names]
    panels = [("Functional-entropy share", lambda m: Estimate(m.share, math.nan, math.nan)),
              ("Functional entropy", lambda m: m.functional_entropy)]
    if has_permutation(before) and has_permutation(after):
        panels.append(("Permutation accuracy drop", lambda m: m.permutation.accuracy_drop))
    fig = make_subplots(
        rows=1, cols=len(panels), subplot_titles=[p[0] for p in panels], horizontal_spacing=0.08
    )
    nan = Estimate(math.nan, math.nan, math.nan)
    for col, (_, get) in enumerate(panels, start=1):
        for res, label, color in ((before, "before", MUTED), (after, "after", SENSITIVITY)):
            have = {m.name: m for m in res.modalities}
            ests = [get(have[n]) if n in have else nan for n in names]
            fig.add_bar(
                x=[_label(n) for n in names], y=[_finite(e.mean) for e in ests], name=label,
                marker_color=color, error_y=_error_bars(ests), legendgroup=label,
                showlegend=col == 1, customdata=_hover_est(ests),
                hovertemplate=f"%{{x}} ({label}): %{{customdata}}<extra></extra>",
                row=1, col=col,
            )
    fig.update_yaxes(rangemode="tozero")
    _style(fig, 360, legend=True, top=40)
    fig.update_layout(
        barmode="group", bargroupgap=0.08, margin=dict(b=80),
        legend=dict(orientation="h", yanchor="top", y=-0.14, x=0.5, xanchor="center"),
    )
    return fig


def report_figures(result: AuditResult) -> dict[str, go.Figure]:
    """The figures an audit report shows, keyed by a stable id, in report order."""
    figs: dict[str, go.Figure] = {
        "shares": share_figure(result),
        "measures": measures_figure(result),
    }
    if any(m.per_class.get("functional_entropy") for m in result.modalities) and result.classes:
        figs["per-class"] = per_class_figure(result)
    if any(m.per_example.get("functional_entropy") for m in result.modalities):
        figs["distribution"] = distribution_figure(result)
    if has_permutation(result):
        figs["permutation"] = permutation_figure(result)
    if result.shapley:
        figs["shapley"] = shapley_figure(result)
    return figs
