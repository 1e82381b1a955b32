"""Terminal renderers (rich): tables and a summary the CLI prints. Nothing here prints."""

from __future__ import annotations

import re

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..results import NOT_USED, AuditResult, Estimate, ModalityResult
from ..runtime.terminal_text import plain
from ._common import (
    DASH, SEVERITY_STYLES, VERDICT_STYLES, accuracy_shares_of, fmt, fmt_bound, fmt_ci, fmt_pct, has_permutation,
    reliance_of,
)

__all__ = ["audit_table", "audit_summary", "compare_table", "diagnostics_text", "plain", "probe_text", "sentence_text"]


class _Plain(Text):
    """rich Text whose content never carries terminal control characters (see :func:`plain`)."""

    def __init__(self, text: str = "", *args: object, **kwargs: object) -> None:
        super().__init__(plain(text), *args, **kwargs)  # type: ignore[arg-type]

    def append(self, text: object, style: object = None) -> Text:  # type: ignore[override]
        return super().append(plain(text) if isinstance(text, str) else text, style)  # type: ignore[arg-type]


def sentence_text(sentence: str, style: str = "") -> Text:
    """A verdict sentence with its `names` in bold (no rich markup is interpreted)."""
    text = _Plain(style=style)
    for i, part in enumerate(re.split(r"`([^`]*)`", sentence)):
        text.append(part, style="bold" if i % 2 else None)
    return text


def _verdict(v: str) -> Text:
    return _Plain(v, style=VERDICT_STYLES.get(v, "bold"))


def _est(e: Estimate, *, interval: bool = True) -> Text:
    """The mean, and its interval dimmed on a second line."""
    text = _Plain(fmt(e.mean))
    ci = fmt_ci(e)
    if interval and ci != DASH:
        text.append(f"\n{ci}", style="dim")
    return text


def audit_table(result: AuditResult, *, compact: bool = False) -> Table:
    """One row per modality: site, verdict, the sensitivity share (of the functional
    entropy) beside the reliance share (of the permutation loss increase), the four measures
    and the permutation accuracy drop. ``compact`` (for terminals narrower than about 120
    columns) keeps the verdict, both shares, functional entropy and the accuracy drop."""
    perm = has_permutation(result)
    rel, acc = reliance_of(result), accuracy_shares_of(result)
    table = Table(
        title="Modality dependence", title_justify="left", header_style="bold",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("modality", no_wrap=True)
    if not compact:
        table.add_column("site", style="dim")
    table.add_column("verdict", no_wrap=True)
    table.add_column("sens.", justify="right", no_wrap=True)
    if rel is not None:
        table.add_column("loss", justify="right", no_wrap=True)
        table.add_column("acc.", justify="right", no_wrap=True)
    table.add_column("FE" if compact else "FE [95% CI]", justify="right", no_wrap=compact)
    if not compact:
        for col in ("Fisher", "Var", "Poincaré"):
            table.add_column(col, justify="right")
    if perm:
        table.add_column("perm. drop", justify="right", no_wrap=True)
    for m in result.modalities:
        row: list[RenderableType] = [
            _Plain(m.name, style="bold"),
            *([] if compact else [_Plain(m.site)]),
            _verdict(m.verdict),
            _Plain(fmt_pct(m.share)),
            *([] if rel is None else [_Plain(fmt_pct(rel[m.name])), _Plain(fmt_pct(acc[m.name]))]),
            _est(m.functional_entropy, interval=not compact),
        ]
        if not compact:
            row += [_Plain(fmt_bound(m.fisher_bound)), _Plain(fmt(m.variance.mean)), _Plain(fmt_bound(m.poincare_bound))]
        if perm:
            row.append(_est(m.permutation.accuracy_drop, interval=not compact))
        table.add_row(*row)
    if rel is not None:
        table.caption = ("sens.: share of the functional entropy; reliance: loss / acc., shares of the "
                         "permutation loss increase / accuracy drop (flip rates: audit.json)")
        table.caption_justify = "left"
    return table


def diagnostics_text(result: AuditResult) -> Text | None:
    """One line per diagnostic (severity, code, message, fix), or None when there is none."""
    if not result.diagnostics:
        return None
    text = _Plain()
    for i, d in enumerate(result.diagnostics):
        if i:
            text.append("\n")
        text.append(f"{d.severity} ", style=SEVERITY_STYLES.get(d.severity, "bold"))
        text.append(f"{d.code}: ", style="bold")
        text.append_text(sentence_text(d.message))
        if d.fix:
            text.append(" ")
            text.append_text(sentence_text(d.fix, style="dim"))
    return text


def _reading(p, verdict: str) -> tuple[str, str]:
    if verdict in NOT_USED:
        return ("information left unused", "bold red") if p.informative else ("at chance: ignoring it is right", "green")
    return ("carries label information", "") if p.informative else ("at chance", "dim")


def probe_text(result: AuditResult) -> Text | None:
    """One line per modality: the probe's accuracy alone (95% CI) against chance, the
    model's accuracy with it shuffled, and the reading; None without probes."""
    if not result.probes:
        return None
    verdicts = {m.name: m.verdict for m in result.modalities}
    width = max(len(p.modality) for p in result.probes)
    text = _Plain("Label information (probe alone vs model without it)", style="bold")
    for p in result.probes:
        a = p.accuracy
        text.append(f"\n  {p.modality:<{width}}  ", style="bold")
        text.append(f"alone {fmt_pct(a.mean)} [{fmt_pct(a.ci_low)}-{fmt_pct(a.ci_high)}]  chance {fmt_pct(p.chance)}")
        text.append(f"  · model {fmt_pct(p.model_accuracy)} → {fmt_pct(p.model_accuracy_permuted.mean)} shuffled  ", style="dim")
        reading, style = _reading(p, verdicts.get(p.modality, ""))
        text.append(reading, style=style)
    if result.attributions:
        kinds = sorted({f"{a.modality}: {'heatmaps' if a.kind == 'image' else a.kind}" for a in result.attributions})
        text.append(f"\nAttributions of {len(result.attributions)} examples in the report ({', '.join(kinds)})", style="dim")
    return text


def audit_summary(result: AuditResult, *, width: int | None = None) -> RenderableType:
    """The verdict sentence as a headline panel, the diagnostics, the table, and accuracy /
    n; below 120 columns of ``width`` the table is compact."""
    facts = _Plain(f"{result.n_examples} examples", style="dim")
    if result.accuracy is not None:
        facts.append(f" · accuracy {fmt_pct(result.accuracy)}", style="dim")
    if result.shift_accuracy is not None:
        facts.append(f" · accuracy on the shifted data {fmt_pct(result.shift_accuracy)}", style="dim")
    by = "label" if result.class_source == "label" else "prediction"
    facts.append(f" · {len(result.classes)} classes (by {by})", style="dim")
    headline = Panel(
        sentence_text(result.sentence or "No verdict.", style="bold"),
        title="biasscope verdict",
        title_align="left",
        border_style=_panel_style(result),
        expand=False,
    )
    compact = width is not None and width < 120
    if compact:
        facts.append(" · all measures with intervals: report.html or a wider terminal", style="dim")
    diagnostics = diagnostics_text(result)
    probes = probe_text(result)
    parts = [headline, *([diagnostics] if diagnostics is not None else []), audit_table(result, compact=compact),
             *([probes] if probes is not None else []), facts]
    return Group(*parts)


def _panel_style(result: AuditResult) -> str:
    verdicts = {m.verdict for m in result.modalities}
    for v in ("ignored", "unused", "weak", "dominant"):
        if v in verdicts:
            return VERDICT_STYLES[v].replace("bold ", "")
    return "green"


def _pair(before: str, after: str) -> Text:
    return _Plain(f"{before} → {after}")


def compare_table(before: AuditResult, after: AuditResult) -> Table:
    """Per modality: verdict, share and functional entropy before -> after (and the
    permutation accuracy drop when both results have it); then accuracy."""
    perm = has_permutation(before) and has_permutation(after)
    b = {m.name: m for m in before.modalities}
    a = {m.name: m for m in after.modalities}
    names = list(b) + [n for n in a if n not in b]
    table = Table(
        title="Before → after", title_justify="left", header_style="bold", box=box.SIMPLE_HEAD
    )
    for col, justify in (("modality", "left"), ("verdict", "left"), ("share", "right"),
                         ("functional entropy", "right")):
        table.add_column(col, justify=justify, no_wrap=col in ("modality", "verdict"))
    if perm:
        table.add_column("perm. acc. drop", justify="right")

    def verdict(m: ModalityResult | None) -> Text:
        return _verdict(m.verdict) if m else _Plain("absent", style="dim")

    for n in names:
        mb, ma = b.get(n), a.get(n)
        row: list[RenderableType] = [
            _Plain(n, style="bold"),
            Text.assemble(verdict(mb), " → ", verdict(ma)),
            _pair(fmt_pct(mb.share) if mb else DASH, fmt_pct(ma.share) if ma else DASH),
            _pair(
                fmt(mb.functional_entropy.mean) if mb else DASH,
                fmt(ma.functional_entropy.mean) if ma else DASH,
            ),
        ]
        if perm:
            row.append(
                _pair(
                    fmt(mb.permutation.accuracy_drop.mean) if mb else DASH,
                    fmt(ma.permutation.accuracy_drop.mean) if ma else DASH,
                )
            )
        table.add_row(*row)
    if before.accuracy is not None or after.accuracy is not None:
        table.add_section()
        cells: list[RenderableType] = [
            _Plain("accuracy", style="bold"), _Plain(""),
            _pair(fmt_pct(before.accuracy), fmt_pct(after.accuracy)), _Plain(""),
        ]
        if perm:
            cells.append(_Plain(""))
        table.add_row(*cells)
    return table
