"""Plotly figures of the probe (information available vs used, per modality) and of the
attributions inside a modality (an image heatmap, highlighted tokens, feature bars).

Pure builders: each takes results (:class:`~biasscope.results.ProbeResult`,
:class:`~biasscope.results.Attribution`, or their ``dataclasses.asdict`` dicts as read back
from audit.json) and returns a ``plotly.graph_objects.Figure``; :func:`token_html` returns
an HTML fragment of highlighted tokens (escaped).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go

from ..results import ProbeResult, probe_from_dict

__all__ = ["probe_figure", "attribution_figure", "attribution_caption", "token_html", "MAX_BARS"]

FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif'
AVAILABLE = "#8e6c8a"  # information available (probe)
USED = "#2a9d8f"  # information used (reliance: the report's colour for permutation)
INK = "#1f2933"
FOR, AGAINST = "#2a9d8f", "#c62828"  # evidence for / against the class: tokens, bars, caption
#: a diverging scale from AGAINST through white to FOR, as the caption says
SIGNED_SCALE = [[0.0, AGAINST], [0.5, "#ffffff"], [1.0, FOR]]
METHOD_NAMES = {
    "integrated_gradients": "Integrated gradients", "saliency": "Saliency (|gradient|)",
    "input_x_gradient": "Input x gradient", "feature_ablation": "Feature ablation",
}
#: vectors wider than this show their largest-|attribution| features only
MAX_BARS = 30


def _plain(x: Any) -> dict[str, Any]:
    return asdict(x) if is_dataclass(x) else dict(x)


def _layout(fig: go.Figure, title: str, height: int) -> go.Figure:
    fig.update_layout(
        title=dict(text=html.escape(title, quote=False), x=0, font=dict(size=15)),
        font=dict(family=FONT, color=INK, size=12), height=height, plot_bgcolor="white",
        margin=dict(l=60, r=20, t=50, b=40),
    )
    return fig


def probe_figure(probes: Sequence[Any]) -> go.Figure:
    """Grouped bars per modality: information *available* ((probe - chance) / (1 - chance))
    and *used* (the share of the model's above-chance accuracy lost when it is permuted),
    both in [0, 1] (:class:`~biasscope.results.ProbeResult` ``available``/``used``);
    the hover gives the raw accuracies."""
    rows = [p if isinstance(p, ProbeResult) else probe_from_dict(dict(p)) for p in probes]
    names = [html.escape(r.modality, quote=False) for r in rows]
    hover_a = [
        f"probe accuracy {r.accuracy.mean:.1%} (95% CI {r.accuracy.ci_low:.1%}-{r.accuracy.ci_high:.1%})"
        f"<br>chance {r.chance:.1%}; {r.dims} features, {r.folds}-fold CV"
        for r in rows
    ]
    hover_u = [
        f"model accuracy {r.model_accuracy:.1%}, {r.model_accuracy_permuted.mean:.1%} with it shuffled"
        for r in rows
    ]
    fig = go.Figure([
        go.Bar(name="available (probe)", x=names, y=[r.available for r in rows], marker_color=AVAILABLE,
               hovertext=hover_a, hoverinfo="text+name"),
        go.Bar(name="used (model)", x=names, y=[r.used for r in rows], marker_color=USED,
               hovertext=hover_u, hoverinfo="text+name"),
    ])
    fig.update_layout(barmode="group", legend=dict(orientation="h", y=-0.15))
    fig.update_yaxes(range=[0, 1.05], title="fraction above chance", gridcolor="#e4e7eb")
    return _layout(fig, "Label information: available vs used", 340)


def attribution_figure(attribution: Any) -> go.Figure:
    """The figure for an attribution's kind: image -> heatmap, tokens -> a row of tokens
    coloured by score, vector -> bars (the ``MAX_BARS`` largest by |score|)."""
    a = _plain(attribution)
    values = np.asarray(a["values"], dtype=np.float64)
    title = f"`{a['modality']}`, example {a['example']} (class {a['target']})"
    if a["kind"] == "image":
        under = a.get("image")
        heat = go.Heatmap(z=values, colorscale="Inferno", colorbar=dict(title="|attr|"),
                          opacity=0.6 if under is not None else 1.0)
        picture = [] if under is None else [go.Image(z=np.clip(np.asarray(under) * 255, 0, 255).astype(np.uint8),
                                                     hoverinfo="skip")]
        fig = go.Figure([*picture, heat])
        fig.update_yaxes(autorange="reversed", scaleanchor="x", showgrid=False)
        fig.update_xaxes(showgrid=False, constrain="domain")
        return _layout(fig, title, 360)
    if a["kind"] == "tokens":
        labels = a.get("tokens") or [str(i) for i in range(len(values))]
        bound = float(np.abs(values).max()) or 1.0
        fig = go.Figure(go.Heatmap(
            z=[values], x=list(range(len(values))), text=[[html.escape(t, quote=False) for t in labels]],
            texttemplate="%{text}", colorscale=SIGNED_SCALE, zmid=0.0, zmin=-bound, zmax=bound,
            hovertemplate="%{text}: %{z:.3g}<extra></extra>",
        ))
        fig.update_yaxes(visible=False)
        fig.update_xaxes(title="token position")
        return _layout(fig, title, 200)
    order = np.argsort(-np.abs(values), kind="stable")[:MAX_BARS]
    order = np.sort(order)
    fig = go.Figure(go.Bar(
        x=[f"f{i}" for i in order], y=values[order],
        marker_color=[FOR if v >= 0 else AGAINST for v in values[order]],
    ))
    fig.update_yaxes(title="attribution", gridcolor="#e4e7eb")
    return _layout(fig, title, 300)


def _rgb(colour: str) -> str:
    return ",".join(str(int(colour[i:i + 2], 16)) for i in (1, 3, 5))


def attribution_caption(attribution: Any) -> str:
    """What the attribution's figure shows: the method, where, and what its colours mean."""
    a = _plain(attribution)
    name = METHOD_NAMES.get(a["method"], a["method"])
    where = f"{name} at {a['site']}"
    signed = "green for, red against the class" if a["method"] != "saliency" else "darker: larger |gradient|"
    if a["kind"] == "image":
        return f"{where}: |attribution| summed over channels" + (", drawn over the input." if a.get("image") else ".")
    if a["kind"] == "tokens":
        return f"{where}: one score per token, summed over the embedding dimension ({signed})."
    return f"{where}: the largest attributions by magnitude ({signed})."


def token_html(attribution: Any) -> str:
    """The tokens as ``<span>`` s with a background whose opacity is |score| / max|score|
    (green for positive, red for negative evidence), escaped; for a tokens attribution."""
    a = _plain(attribution)
    values = np.asarray(a["values"], dtype=np.float64)
    labels = a.get("tokens") or [str(i) for i in range(len(values))]
    bound = float(np.abs(values).max()) or 1.0
    spans = []
    for token, v in zip(labels, values):
        rgb = _rgb(FOR if v >= 0 else AGAINST)
        spans.append(
            f'<span class="bs-token" title="{v:.3g}" style="background: rgba({rgb},'
            f'{abs(v) / bound:.2f})">{html.escape(str(token))}</span>'
        )
    return " ".join(spans)

