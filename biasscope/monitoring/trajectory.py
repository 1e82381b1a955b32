"""The training trajectory of a :class:`~biasscope.monitoring.monitor.Monitor`: each modality's share
of the sensitivity (solid) and of the reliance (dashed) over training steps, against the
uniform share 1/M (the picture of the paper's Figure 3, for the user's own run)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from ..render.figures import FONT, INK, MUTED, _style

__all__ = ["trajectory_figure"]

#: one colour per modality (colour-blind safe, Okabe-Ito)
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#f0e442", "#000000")


def trajectory_figure(history: Sequence[Any], *, title: str | None = None) -> go.Figure:
    """Shares over steps of a monitor's ``history`` (its ``MonitorRecord`` list); hovering a
    point shows that step's verdict."""
    fig = go.Figure()
    names = list(history[0].shares) if history else []
    steps = [r.step for r in history]
    for i, name in enumerate(names):
        color = PALETTE[i % len(PALETTE)]
        verdicts = [r.verdicts[name] for r in history]
        fig.add_scatter(
            x=steps, y=[r.shares[name] for r in history], mode="lines+markers", name=f"{name}: sensitivity",
            line=dict(color=color, width=2.2), customdata=verdicts, legendgroup=name,
            hovertemplate=f"{html.escape(name)} step %{{x}}: share %{{y:.3f}} (%{{customdata}})<extra></extra>",
        )
        reliance = [r.reliance.get(name) for r in history]
        if any(x is not None for x in reliance):
            fig.add_scatter(
                x=steps, y=reliance, mode="lines+markers", name=f"{name}: reliance", legendgroup=name,
                line=dict(color=color, width=1.6, dash="dash"), marker=dict(symbol="diamond"),
                hovertemplate=f"{html.escape(name)} step %{{x}}: reliance %{{y:.3f}}<extra></extra>",
            )
    if names:
        fig.add_hline(y=1 / len(names), line=dict(color=MUTED, width=1.2, dash="dot"),
                      annotation_text="uniform 1/M", annotation_position="top left")
    heading = title or "Modality shares during training (solid: sensitivity, dashed: reliance)"
    fig.update_layout(title=dict(text=html.escape(heading), font=dict(family=FONT, size=15, color=INK)))
    fig.update_xaxes(title_text="training step")
    fig.update_yaxes(title_text="share of the whole", range=[0, 1.02])
    return _style(fig, 420, legend=True, top=96)
