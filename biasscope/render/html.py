"""Self-contained HTML reports: plotly figures in a Jinja2 template (autoescaped)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import plotly.io as pio
from markupsafe import Markup, escape

from .. import __version__
from ..auditing import verdict as _verdict
from ..errors import ConfigError
from ..runtime._files import write_atomic
from ..results import MEASURES, AuditResult
from . import figures as _figures
from ._common import (
    DASH,
    MEASURE_LABELS,
    VERDICT_COLORS,
    accuracy_shares_of,
    agreement_of,
    bound_notes,
    fmt,
    fmt_ci,
    fmt_pct,
    has_permutation,
    reliance_of,
)

__all__ = [
    "render_html",
    "write_html",
    "render_compare_html",
    "write_compare_html",
    "PLOTLY_CONFIG",
]

PLOTLY_MODES = ("inline", "cdn")
PLOTLY_CONFIG = {
    "displaylogo": False,
    "responsive": True,
    "modeBarButtonsToRemove": ["select2d", "lasso2d", "autoScale2d"],
}
PAPERS = [
    (
        "Gat, Schwartz, Schwing & Hazan",
        "Removing Bias in Multi-modal Classifiers: Regularization by Maximizing Functional "
        "Entropies",
        "NeurIPS 2020",
        "https://arxiv.org/abs/2010.10802",
    ),
    (
        "Gat, Schwartz & Schwing",
        "Perceptual Score: What Data Modalities Does Your Model Perceive?",
        "NeurIPS 2021",
        "https://arxiv.org/abs/2110.14375",
    ),
]


# ----------------------------------------------------------------------------- text helpers


def inline_md(text: str) -> Markup:
    """Escape ``text``, then render `code` and *emphasis* (the markup of verdict text)."""
    out = str(escape(text))
    out = re.sub(
        r"``([^`]+)``|`([^`]+)`", lambda m: f"<code>{m.group(1) or m.group(2)}</code>", out
    )
    out = re.sub(r"(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])", r"<em>\1</em>", out)
    return Markup(out)


def docstring_html(doc: str) -> Markup:
    """A module docstring (paragraphs and ``- `` bullet lists) as HTML."""
    blocks: list[str] = []
    for block in re.split(r"\n\s*\n", doc.strip()):
        lines = block.splitlines()
        if lines and lines[0].lstrip().startswith("- "):
            items: list[str] = []
            for line in lines:
                if line.lstrip().startswith("- "):
                    items.append(line.lstrip()[2:].strip())
                elif items:
                    items[-1] += " " + line.strip()
            blocks.append(
                "<ul>" + "".join(f"<li>{inline_md(i)}</li>" for i in items) + "</ul>"
            )
        else:
            blocks.append(f"<p>{inline_md(' '.join(line.strip() for line in lines))}</p>")
    return Markup("\n".join(blocks))


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _value_text(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_value_text(v)}" for k, v in value.items()) or DASH
    if isinstance(value, (list, tuple)):
        return ", ".join(_value_text(v) for v in value) or DASH
    if isinstance(value, float):
        return fmt(value, 6)
    return DASH if value is None else str(value)


# ----------------------------------------------------------------------------- jinja


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("biasscope.render", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(md=inline_md, num=fmt, ci=fmt_ci, pct=fmt_pct, value=_value_text)
    env.globals.update(
        VERDICT_COLORS=VERDICT_COLORS,
        MEASURES=MEASURES,
        MEASURE_LABELS=MEASURE_LABELS,
        version=__version__,
        papers=PAPERS,
        rule_html=docstring_html(_verdict.__doc__ or ""),
    )
    return env


@lru_cache(maxsize=1)
def _plotly_bundle() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def _plotly_head(mode: str) -> dict[str, Any]:
    from plotly.offline import get_plotlyjs_version

    if mode not in PLOTLY_MODES:
        raise ConfigError(
            f"plotlyjs={mode!r} is not supported: use 'inline' (one self-contained file that "
            "works offline) or 'cdn' (a small file that loads plotly.js from cdn.plot.ly)."
        )
    if mode == "inline":
        return {"mode": mode, "js": Markup(_plotly_bundle()), "url": ""}
    url = f"https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js"
    return {"mode": mode, "js": Markup(""), "url": url}


def _figure_html(key: str, fig: Any, prefix: str = "fig") -> Markup:
    height = int(fig.layout.height or 360)
    return Markup(
        pio.to_html(
            fig,
            full_html=False,
            include_plotlyjs=False,
            div_id=f"{prefix}-{key}",
            config=PLOTLY_CONFIG,
            default_height=f"{height}px",
            default_width="100%",
            validate=False,
        )
    )


# ----------------------------------------------------------------------------- report


def _title(result: AuditResult, title: str | None) -> str:
    if title:
        return title
    model = result.provenance.get("model")
    path = _get(model, "path") if model else None
    return f"biasscope audit: {Path(str(path)).name}" if path else "biasscope audit"


def _modality_rows(result: AuditResult) -> list[dict[str, Any]]:
    rel, acc = reliance_of(result), accuracy_shares_of(result)
    return [
        {
            "m": m,
            "reliance": None if rel is None else rel[m.name],
            "accuracy_share": None if acc is None else acc[m.name],
            "estimates": [m.measure(k) for k in MEASURES],
        }
        for m in result.modalities
    ]


def _joint_rows(result: AuditResult) -> list[dict[str, Any]]:
    j = result.joint
    if j is None:
        return []
    return [
        {"label": label, "joint": joint, "sum": total, "gap": gap, "ratio": ratio,
         "holds": not gap.ci_high < 0}
        for label, joint, total, gap, ratio in (
            ("Functional entropy", j.functional_entropy, j.sum_functional_entropy, j.entropy_gap, j.entropy_ratio),
            ("Variance", j.variance, j.sum_variance, j.variance_gap, j.variance_ratio),
        )
    ]


def _provenance(result: AuditResult) -> dict[str, Any]:
    prov = dict(result.provenance)
    files = []
    for role in ("model", "data"):
        item = prov.pop(role, None)
        if item:
            sha = _get(item, "sha256") or ""
            files.append({"role": role, "path": _get(item, "path") or DASH, "sha256": sha})
    versions = prov.pop("versions", None) or {}
    return {"files": files, "versions": dict(versions), "other": prov}


#: the diagnostics that say what the probe means for a modality (shown in its table row)
PROBE_CODES = ("information_unused", "ignoring_is_right", "information_underused")


def _insight_context(result: AuditResult) -> dict[str, Any]:
    """The probe's figure and rows, and one card per attribution (figure, tokens)."""
    from .insight_figures import attribution_caption, attribution_figure, probe_figure, token_html

    said = {d.modality: d.message for d in result.diagnostics if d.code in PROBE_CODES}
    cards = [
        {"a": a, "fig": _figure_html(f"attribution-{i}", attribution_figure(a)),
         "tokens": Markup(token_html(a)) if a.kind == "tokens" else None, "caption": attribution_caption(a)}
        for i, a in enumerate(result.attributions)
    ]
    return {
        "probe_rows": [{"p": p, "said": said.get(p.modality, "")} for p in result.probes],
        "probe_fig": _figure_html("probe", probe_figure(result.probes)) if result.probes else None,
        "attribution_cards": cards,
    }


def _report_context(result: AuditResult, title: str | None) -> dict[str, Any]:
    figs = {k: _figure_html(k, f) for k, f in _figures.report_figures(result).items()}
    agreement = agreement_of(result)
    settings = dict(result.settings)
    return {
        "title": _title(result, title),
        "r": result,
        "rows": _modality_rows(result),
        "has_perm": has_permutation(result),
        "figs": figs,
        "joint_rows": _joint_rows(result),
        "agreement": agreement,
        "ranks": agreement.rankings,
        "agree": agreement.agree,
        "agree_text": agreement.text,
        "diagnostics": result.diagnostics,
        "bound_notes": bound_notes(result),
        "settings": settings,
        "prov": _provenance(result),
        "divergence": settings.get("divergence", "kl"),
        **_insight_context(result),
    }


def render_html(result: AuditResult, *, plotlyjs: str = "inline", title: str | None = None) -> str:
    """The audit report as one HTML page.

    Args:
        plotlyjs: ``"inline"`` embeds plotly.js once (a self-contained file that works
            offline, ~5 MB); ``"cdn"`` loads it from cdn.plot.ly (a small file).
        title: the page title; by default "biasscope audit" and the model file name.
    """
    head = _plotly_head(plotlyjs)
    ctx = _report_context(result, title)
    return _env().get_template("report.html.j2").render(plotly=head, **ctx)


def write_html(result: AuditResult, path: str | os.PathLike, **kw: Any) -> Path:
    """Write :func:`render_html` to ``path`` atomically; returns the path."""
    return write_atomic(Path(path), render_html(result, **kw))


# ----------------------------------------------------------------------------- compare


def _compare_rows(before: AuditResult, after: AuditResult) -> list[dict[str, Any]]:
    b = {m.name: m for m in before.modalities}
    a = {m.name: m for m in after.modalities}
    names = list(b) + [n for n in a if n not in b]
    return [{"name": n, "before": b.get(n), "after": a.get(n)} for n in names]


def _ungated(after: AuditResult, gates: list[dict[str, Any]] | None) -> dict[str, str]:
    """The modalities still ignored, unused or weak after, by verdict, unless a gate asked
    about them (a ``no modality ...`` gate): the page must not read as a plain pass."""
    if gates is None or any(g["name"].startswith("no modality") for g in gates):
        return {}
    return {name: after[name].verdict for name in after.failing("weak")}


def _gate_rows(gates: Sequence[Any] | None) -> list[dict[str, Any]] | None:
    if gates is None:
        return None
    return [
        {
            "name": str(_get(g, "name", "")),
            "passed": bool(_get(g, "passed", False)),
            "detail": str(_get(g, "detail", "") or ""),
        }
        for g in gates
    ]


def render_compare_html(
    before: AuditResult,
    after: AuditResult,
    *,
    plotlyjs: str = "inline",
    gates: Sequence[Any] | None = None,
    title: str | None = None,
) -> str:
    """A before/after page: measures side by side, verdicts before -> after, accuracy, and
    the gate results when ``gates`` (objects or dicts with name, passed, detail) is given."""
    head = _plotly_head(plotlyjs)
    fig = _figures.compare_figure(before, after)
    gate_rows = _gate_rows(gates)
    return _env().get_template("compare.html.j2").render(
        plotly=head,
        title=title or "biasscope: before and after",
        before=before,
        after=after,
        rows=_compare_rows(before, after),
        has_perm=has_permutation(before) and has_permutation(after),
        figs={"compare": _figure_html("compare", fig)},
        gates=gate_rows,
        failed=None if gate_rows is None else sum(not g["passed"] for g in gate_rows),
        ungated=_ungated(after, gate_rows),
        prov_before=_provenance(before),
        prov_after=_provenance(after),
    )


def write_compare_html(
    before: AuditResult, after: AuditResult, path: str | os.PathLike, **kw: Any
) -> Path:
    """Write :func:`render_compare_html` to ``path`` atomically; returns the path."""
    return write_atomic(Path(path), render_compare_html(before, after, **kw))
