"""Renderers: the HTML report and comparison page, and the rich terminal tables."""

from __future__ import annotations

import copy
import html as htmllib
import re
import struct
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from plotly.offline import get_plotlyjs, get_plotlyjs_version
from rich.console import Console

from biasscope.auditing import verdict as verdict_module
from biasscope.errors import ConfigError
from biasscope.render import (
    audit_summary,
    audit_table,
    compare_table,
    render_compare_html,
    render_html,
    write_compare_html,
    write_html,
)
from biasscope.render.figures import compare_figure
from biasscope.results import AuditResult, Estimate, JointCheck
from biasscope.auditing.verdict import Thresholds, modality_verdicts, verdict_sentence

SECTIONS = [
    "Measures per modality",
    "Should it use it? Label information available vs used",
    "Per-class breakdown",
    "Distribution over examples",
    "What inside each modality",
    "Tensorization check",
    "Do the measures agree?",
    "Settings and provenance",
    "How to read this",
]
HOSTILE = '<img src=x onerror="alert(1)">'


# ----------------------------------------------------------------------------- helpers


def _text(fragment: str) -> str:
    """Visible text of an HTML fragment, whitespace collapsed."""
    visible = re.sub(r"<(script|style)\b.*?</\1>", " ", fragment, flags=re.S)
    inline = re.sub(r"</?(code|em|b|i|span|sub|sup|a)\b[^>]*>", "", visible)
    no_tags = re.sub(r"<[^>]+>", " ", inline)
    return " ".join(htmllib.unescape(no_tags).split())


def _section(page: str, section_id: str) -> str:
    """The HTML of the report section with this id."""
    start = page.index(f'<section class="card" id="{section_id}">')
    return page[start : page.index("</section>", start)]


def _plain(sentence: str) -> str:
    return sentence.replace("`", "")


def _figure_ids(page: str) -> list[str]:
    return re.findall(r'<div id="([^"]+)" class="plotly-graph-div"', page)


def _expected_figures(r: AuditResult) -> int:
    n = 2  # shares, the four measures
    n += any(m.per_class.get("functional_entropy") for m in r.modalities)
    n += any(m.per_example.get("functional_entropy") for m in r.modalities)
    n += all(m.permutation is not None for m in r.modalities)
    n += bool(r.shapley)
    n += bool(r.probes) + len(r.attributions)  # available vs used; one per attribution
    return n


def _reverdict(r: AuditResult) -> AuditResult:
    from biasscope.auditing.agreement import analyse_agreement
    from biasscope.auditing.verdict import reliance_shares

    verdicts = modality_verdicts(r.modalities, Thresholds())
    rel = reliance_shares(r.modalities)
    for m in r.modalities:
        m.verdict = verdicts[m.name]
        m.reliance_share = None if rel is None else rel[m.name]
    r.sentence = verdict_sentence(verdicts)
    r.agreement = analyse_agreement(r.modalities, r.shapley)
    return r


def _single_modality(r: AuditResult) -> AuditResult:
    r = copy.deepcopy(r)
    r.modalities = r.modalities[:1]
    r.modalities[0].share = 1.0
    r.joint = None
    r.shapley = []
    r.probes = r.probes[:1]
    return _reverdict(r)


@pytest.fixture(scope="module")
def page(audit_result) -> str:
    return render_html(audit_result)


# ----------------------------------------------------------------------------- the fixture


def test_fixture_is_the_planted_answer(audit_result):
    """The fixture really is a model that ignores ``b``: the renderers are tested on it."""
    assert audit_result.names == ["a", "b"]
    assert audit_result["b"].functional_entropy.mean == 0.0
    assert audit_result["b"].verdict == "ignored"
    assert audit_result["a"].verdict == "dominant"
    assert audit_result.sentence == (
        "The model ignores `b`, which carries no label information (probe at chance): ignoring it is "
        "right; it leans on `a`.")
    assert [p.informative for p in audit_result.probes] == [True, False]
    assert [a.modality for a in audit_result.attributions] == ["a"] * 3
    assert all(m.permutation is not None for m in audit_result.modalities)
    assert {s.metric for s in audit_result.shapley} == {"accuracy", "log_likelihood"}
    assert audit_result.joint is not None


# ----------------------------------------------------------------------------- report


def test_sentence_leads_before_any_figure(page, audit_result):
    first_figure = page.index('class="plotly-graph-div"')
    head = page[:first_figure]
    h1 = re.search(r'<h1 class="lead">(.*?)</h1>', head, re.S)
    assert h1 is not None
    assert _text(h1.group(1)) == _plain(audit_result.sentence)
    assert "<code>b</code>" in h1.group(1) and "<code>a</code>" in h1.group(1)
    # the sentence is the first heading of the body
    assert page.index("<h1") < page.index("<h2")


def test_one_badge_per_modality_with_its_verdict_colour(page, audit_result):
    badges = re.findall(
        r'<span class="badge badge-(\w+)" data-modality="([^"]*)" data-verdict="(\w+)">'
        r'<span class="name">([^<]*)</span><span class="v">(\w+)</span>',
        page,
    )
    hero = page[: page.index("</header>")]
    assert len(re.findall(r'class="badge badge-', hero)) == len(audit_result.modalities)
    assert [(b[1], b[2]) for b in badges] == [(m.name, m.verdict) for m in audit_result.modalities]
    assert all(b[0] == b[2] == b[4] and b[1] == b[3] for b in badges)
    colours = {"ignored": "#c62828", "weak": "#c77700", "ok": "#2e7d32", "dominant": "#1565c0"}
    for verdict, colour in colours.items():
        assert f"--{verdict}: {colour};" in page
        assert f".badge-{verdict} {{ --c: var(--{verdict}); }}" in page


def test_inline_mode_embeds_plotlyjs_exactly_once(page, audit_result):
    assert not re.search(r"<script[^>]*\bsrc=[\"']?https?:", page, re.I)
    assert "plotly-" + get_plotlyjs_version() + ".min.js" not in page
    bundle = get_plotlyjs()
    assert page.count(bundle[:200]) == 1
    assert page.count(f"plotly.js v{get_plotlyjs_version()}") == 1
    assert page.count("Plotly.newPlot(") == _expected_figures(audit_result)


def test_cdn_mode_is_small_and_links_the_cdn(page, audit_result):
    small = render_html(audit_result, plotlyjs="cdn")
    url = f"https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js"
    assert re.findall(r'<script src="([^"]+)"', small) == [url]
    assert get_plotlyjs()[:200] not in small
    assert len(small) < len(page) / 5
    assert _figure_ids(small) == _figure_ids(page)


def test_unknown_plotlyjs_mode_is_a_config_error(audit_result):
    with pytest.raises(ConfigError, match="inline"):
        render_html(audit_result, plotlyjs="directory")


def test_every_section_heading_is_present_in_order(page):
    headings = [_text(h) for h in re.findall(r"<h2>(.*?)</h2>", page, re.S)]
    assert headings == SECTIONS


def test_figures_match_what_the_result_calls_for(page, audit_result):
    ids = _figure_ids(page)
    assert len(ids) == _expected_figures(audit_result) == 10
    assert ids == [
        "fig-shares", "fig-measures", "fig-probe", "fig-per-class", "fig-distribution",
        "fig-attribution-0", "fig-attribution-1", "fig-attribution-2", "fig-permutation", "fig-shapley",
    ]
    no_labels = copy.deepcopy(audit_result)
    for m in no_labels.modalities:
        m.permutation = None
    no_labels.shapley, no_labels.probes, no_labels.attributions = [], [], []
    lean = render_html(no_labels, plotlyjs="cdn")
    assert _figure_ids(lean) == ["fig-shares", "fig-measures", "fig-per-class", "fig-distribution"]
    assert 'id="information"' not in lean and 'id="inside"' not in lean
    assert "No labels were available" in lean
    assert "Permutation score</h3>" not in lean and "Reliance share" not in lean


def test_measure_table_holds_the_numbers(page, audit_result):
    table = _section(page, "measures")
    a = audit_result["a"]
    rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)
    text_a = _text(rows[1])
    assert text_a.startswith("a input:a dominant 100.0% 100.0%")
    fe = a.functional_entropy
    assert f"{fe.mean:.3g} [{fe.ci_low:.3g}, {fe.ci_high:.3g}]" in text_a
    for key in ("fisher_bound", "variance", "poincare_bound"):
        assert f"{a.measure(key).mean:.3g}" in text_a
    drop = a.permutation.accuracy_drop
    flips = a.permutation.flip_rate
    assert text_a.endswith(f"{drop.mean:.3g} [{drop.ci_low:.3g}, {drop.ci_high:.3g}] "
                           f"{flips.mean:.3g} [{flips.ci_low:.3g}, {flips.ci_high:.3g}]")
    assert _text(rows[2]).startswith("b input:b ignored 0.0% 0.0% 0.0% 0 [0, 0]")


def test_per_class_heatmap_is_modality_by_class(audit_result):
    from biasscope.render.figures import per_class_figure

    fig = per_class_figure(audit_result)
    heat = fig.data[0]
    assert list(heat.y) == ["a", "b"]
    assert list(heat.x) == [str(c) for c in audit_result.classes]
    assert [list(row) for row in heat.z] == [
        m.per_class["functional_entropy"] for m in audit_result.modalities
    ]
    assert "class (by label)" in fig.layout.xaxis.title.text


def test_distribution_draws_zeros_at_a_floor_on_a_log_axis(audit_result):
    from biasscope.render.figures import distribution_figure

    fig = distribution_figure(audit_result)
    assert fig.layout.yaxis.type == "log"
    a, b = fig.data
    values = audit_result["a"].per_example["functional_entropy"]
    floor = min(v for v in values if v > 0) / 10
    assert min(b.y) == max(b.y) == pytest.approx(floor)  # b: all 96 are exactly 0
    assert f"{len(values)} of {len(values)} exactly 0" in b.name
    assert "0 of" in a.name and list(a.y) == pytest.approx(values)


def test_tensorization_table_and_its_verdict(page, audit_result):
    j = audit_result.joint
    section = _section(page, "tensorization")
    rows = [_text(r) for r in re.findall(r"<tr>(.*?)</tr>", section, re.S)[1:]]
    assert rows[0].startswith(f"Functional entropy {j.functional_entropy.mean:.3g}")
    assert f"{j.sum_functional_entropy.mean:.3g}" in rows[0] and f"{j.entropy_ratio:.3g}" in rows[0]
    assert f"{j.entropy_gap.mean:.3g}" in rows[0] and f"{j.variance_gap.mean:.3g}" in rows[1]
    assert rows[0].endswith("holds") and rows[1].endswith("holds")
    broken = copy.deepcopy(audit_result)
    broken.joint = JointCheck(
        functional_entropy=Estimate(3.0, 2.5, 3.5),
        variance=j.variance,
        sum_functional_entropy=Estimate(1.0, 0.9, 1.1),
        sum_variance=j.sum_variance,
        entropy_gap=Estimate(-2.0, -2.6, -1.4),
        variance_gap=j.variance_gap,
    )
    out = render_html(broken, plotlyjs="cdn")
    section = _section(out, "tensorization")
    assert "violated" in section and "too noisy" in section


def test_single_modality_omits_tensorization_with_a_note(audit_result):
    one = _single_modality(audit_result)
    out = render_html(one, plotlyjs="cdn")
    section = _section(out, "tensorization")
    assert "Only one modality" in section and "<table" not in section
    assert "With one modality there is nothing to rank." in out
    assert len(_figure_ids(out)) == _expected_figures(one) == 9


def test_agreement_reports_the_common_order(page):
    section = _text(_section(page, "agreement"))
    for measure in (
        "Functional entropy share a > b", "Fisher bound a > b",
        "Permutation accuracy drop a > b", "Permutation loss increase a > b",
        "Shapley (accuracy) a > b", "Shapley (log-likelihood) a > b",
    ):
        assert measure in section
    assert "All 6 measures rank the modalities the same way: a > b." in section


def test_agreement_flags_a_different_top_modality(audit_result):
    flipped = copy.deepcopy(audit_result)
    # the entropy family still says a; make permutation say b
    for m, (drop, inc) in zip(flipped.modalities, [(0.05, 0.1), (0.4, 1.5)]):
        m.permutation = replace(
            m.permutation,
            accuracy_drop=Estimate(drop, drop - 0.01, drop + 0.01),
            loss_increase=Estimate(inc, inc - 0.05, inc + 0.05),
        )
    flipped.shapley = []
    out = render_html(_reverdict(flipped), plotlyjs="cdn")
    section = _text(_section(out, "agreement"))
    assert "Permutation accuracy drop b > a" in section
    assert "The measures disagree on which modality matters most" in section
    assert "most: functional entropy share and Fisher bound put a first;" in section
    assert "permutation accuracy drop and permutation loss increase put b first." in section


def test_settings_provenance_and_citations(audit_result):
    r = copy.deepcopy(audit_result)
    sha = "0123456789abcdef" * 4
    r.provenance["model"] = {"path": "models/planted.pt", "sha256": sha}
    r.provenance["data"] = {"path": "data/val.pt", "sha256": "f" * 64}
    out = render_html(r, plotlyjs="cdn")
    assert "<title>biasscope audit: planted.pt</title>" in out
    assert f'title="{sha}"' in out and "models/planted.pt" in out and "data/val.pt" in out
    settings = _text(_section(out, "settings"))
    assert "samples 16" in settings and "divergence kl" in settings
    assert "thresholds ignored=0.1, weak=0.5, dominant=1.3, disagree_factor=3, disagree_gap=0.3" in settings
    assert f"biasscope {r.provenance['versions']['biasscope']}" in settings
    assert render_html(r, plotlyjs="cdn", title="Mine").count("<title>Mine</title>") == 1
    how = _text(_section(out, "how-to-read"))
    assert (
        "Gat, Schwartz, Schwing & Hazan, “Removing Bias in Multi-modal Classifiers: "
        "Regularization by Maximizing Functional Entropies”, NeurIPS 2020" in how
    )
    assert (
        "Gat, Schwartz & Schwing, “Perceptual Score: What Data Modalities Does Your Model "
        "Perceive?”, NeurIPS 2021" in how
    )
    assert "f = KL(pclean ‖ pperturbed) ≥ 0" in how


def test_verdict_rule_is_the_verdict_docstring(page):
    rule = re.search(r'<div class="rule">(.*?)</div>', page, re.S).group(1)
    doc = verdict_module.__doc__
    expected = " ".join(re.sub(r"^\s*- ", "", doc, flags=re.M).replace("`", "").split())
    expected = re.sub(r"\*([^*]+)\*", r"\1", expected)
    assert _text(rule) == expected
    assert rule.count("<li>") == len(re.findall(r"^\s*- ", doc, flags=re.M)) >= 8
    assert "<code>ignored</code>" in rule and "<code>unused</code>" in rule
    assert "<em>relied upon</em>" in rule


def test_hostile_modality_name_is_escaped(audit_result):
    r = copy.deepcopy(audit_result)
    r.modalities[1].name = HOSTILE
    r.settings["modalities"] = {"a": "input:a", HOSTILE: "input:b"}
    r.shapley = [replace(s, values={"a": s.values["a"], HOSTILE: s.values["b"]}) for s in r.shapley]
    r = _reverdict(r)
    assert HOSTILE in r.sentence
    for out in (render_html(r, plotlyjs="cdn"), render_compare_html(r, r, plotlyjs="cdn")):
        assert HOSTILE not in out
        assert "<img" not in out
        assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in out
        # every "onerror" sits inside an escaped name: HTML entities, or JSON's \\u003c
        assert out.count("onerror") == len(re.findall(r"(lt;|u003c)img src=x onerror", out)) > 0


def test_render_is_deterministic_and_write_is_atomic(tmp_path, audit_result):
    first = render_html(audit_result, plotlyjs="cdn")
    assert render_html(audit_result, plotlyjs="cdn") == first
    path = write_html(audit_result, tmp_path / "out" / "report.html", plotlyjs="cdn")
    assert path == tmp_path / "out" / "report.html"
    assert path.read_text(encoding="utf-8") == first
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]


# ----------------------------------------------------------------------------- compare


@dataclass
class _Gate:
    name: str
    passed: bool
    detail: str


def _after(before: AuditResult) -> AuditResult:
    after = copy.deepcopy(before)
    a, b = after.modalities
    a.share, b.share = 0.7, 0.3
    b.functional_entropy = Estimate(0.4, 0.3, 0.5)
    b.permutation = replace(
        b.permutation,
        accuracy_drop=Estimate(0.2, 0.15, 0.25),
        loss_increase=Estimate(1.0, 0.8, 1.2),
    )
    after.accuracy = 0.9
    return _reverdict(after)


def test_compare_page(audit_result):
    after = _after(audit_result)
    assert after["b"].verdict != "ignored"
    gates = [
        _Gate("no ignored modality", True, "`b` is used"),
        {"name": "accuracy", "passed": False, "detail": "dropped 2.7 points"},
    ]
    out = render_compare_html(audit_result, after, gates=gates)
    assert out.count(get_plotlyjs()[:200]) == 1
    assert _figure_ids(out) == ["fig-compare"]
    hero = _text(out[out.index("<body>") : out.index("</header>")])
    assert hero.startswith("biasscope: before and after 1 of 2 gates failed.")
    assert _plain(audit_result.sentence) in hero and _plain(after.sentence) in hero
    section = _section(out, "measures")
    rows = [_text(r) for r in re.findall(r"<tr>(.*?)</tr>", section, re.S)[1:]]
    assert rows[1] == (
        f"b ignored → {after['b'].verdict} 0.0% → 30.0% 0 → 0.4 0 → 0.2"
    )
    assert rows[2] == f"accuracy {100 * audit_result.accuracy:.1f}% → 90.0%"
    gate_rows = _text(_section(out, "gates"))
    assert "no ignored modality passed b is used" in gate_rows
    assert "accuracy failed dropped 2.7 points" in gate_rows
    assert "How to read this" in out
    without = render_compare_html(audit_result, after, plotlyjs="cdn")
    assert 'id="gates"' not in without


def test_compare_figure_panels(audit_result):
    after = _after(audit_result)
    fig = compare_figure(audit_result, after)
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["Functional-entropy share", "Functional entropy", "Permutation accuracy drop"]
    assert [t.name for t in fig.data] == ["before", "after"] * 3
    assert list(fig.data[1].y) == [0.7, 0.3]
    no_perm = copy.deepcopy(after)
    for m in no_perm.modalities:
        m.permutation = None
    assert len(compare_figure(audit_result, no_perm).layout.annotations) == 2


def test_write_compare_html(tmp_path, audit_result):
    after = _after(audit_result)
    path = write_compare_html(audit_result, after, tmp_path / "c.html", plotlyjs="cdn")
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


# ----------------------------------------------------------------------------- terminal


def _console_text(renderable) -> str:
    console = Console(record=True, width=120, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_audit_table_text(audit_result):
    text = _console_text(audit_table(audit_result))
    rows = [line.split() for line in text.splitlines() if line.strip()]
    at = {row[0]: i for i, row in enumerate(rows)}
    a, fe = audit_result["a"], audit_result["a"].functional_entropy
    drop = a.permutation.accuracy_drop
    assert rows[at["a"]] == [
        "a", "input:a", "dominant", "100.0%", "100.0%", "100.0%", f"{fe.mean:.3g}", f"{a.fisher_bound.mean:.3g}",
        f"{a.variance.mean:.3g}", f"{a.poincare_bound.mean:.3g}", f"{drop.mean:.3g}",
    ]
    # the intervals sit under their means, dimmed
    assert rows[at["a"] + 1] == [
        f"[{fe.ci_low:.3g},", f"{fe.ci_high:.3g}]", f"[{drop.ci_low:.3g},", f"{drop.ci_high:.3g}]"
    ]
    assert rows[at["b"]] == ["b", "input:b", "ignored", "0.0%", "0.0%", "0.0%", "0", "0", "0", "0", "0"]
    assert "perm. drop" in text and "shares of the permutation loss increase / accuracy drop" in text


def test_audit_table_colours_verdicts(audit_result):
    console = Console(record=True, width=120, force_terminal=True, color_system="standard")
    console.print(audit_table(audit_result))
    ansi = console.export_text(styles=True)
    assert "\x1b[1;31mignored" in ansi  # bold red
    assert "\x1b[1;34mdominant" in ansi  # bold blue


def test_audit_summary_text(audit_result):
    text = _console_text(audit_summary(audit_result))
    assert "The model ignores b, which carries no label information (probe at chance)" in text
    assert re.search(r"\n  a  alone 93.8% \[87.0%-97.1%\]  chance 44.8% .* carries label information\n", text)
    assert re.search(r"\n  b  alone 42.7% .* at chance: ignoring it is right\n", text)
    assert text.index("The model ignores") < text.index("Modality dependence")
    accuracy = f"{100 * audit_result.accuracy:.1f}%"
    assert f"{audit_result.n_examples} examples · accuracy {accuracy}" in text


def test_terminal_does_not_interpret_markup_in_names(audit_result):
    r = copy.deepcopy(audit_result)
    r.modalities[1].name = "[bold red]b[/]"
    r = _reverdict(r)
    text = _console_text(audit_summary(r))
    assert "[bold red]b[/]" in text


def test_compare_table_text(audit_result):
    after = _after(audit_result)
    text = _console_text(compare_table(audit_result, after))
    row_b = next(line for line in text.splitlines() if line.split()[:1] == ["b"])
    assert f"ignored → {after['b'].verdict}" in row_b
    assert "0.0% → 30.0%" in row_b and "0 → 0.4" in row_b and "0 → 0.2" in row_b
    assert f"{100 * audit_result.accuracy:.1f}% → 90.0%" in text


# ----------------------------------------------------------------------------- browser


def _browser():
    try:
        import browser
    except ImportError:  # tests/ imported as a package
        from tests import browser
    if browser.find_chromium() is None:
        pytest.skip("chromium not installed: no chromium/chrome executable on PATH")
    return browser


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


@pytest.mark.browser
def test_report_renders_in_chromium(tmp_path, audit_result):
    b = _browser()
    load, plot_divs, screenshot = b.load, b.plot_divs, b.screenshot
    report = write_html(audit_result, tmp_path / "report.html")
    loaded = load(report)
    assert loaded.errors == []
    drawn = plot_divs(loaded.dom)
    assert list(drawn) == _figure_ids(report.read_text(encoding="utf-8"))
    assert len(drawn) == _expected_figures(audit_result)
    assert all(drawn.values()), drawn
    # the insight sections: titled, each with its plotly figure drawn
    assert "Should it use it? Label information available vs used" in loaded.dom
    assert "What inside each modality" in loaded.dom
    assert drawn["fig-probe"] and drawn["fig-attribution-0"]
    insight = _insight_result(audit_result)
    page = write_html(insight, tmp_path / "insight.html")
    loaded = load(page)
    assert loaded.errors == []
    assert plot_divs(loaded.dom) == {**{k: True for k in _figure_ids(page.read_text(encoding="utf-8"))}}
    assert loaded.dom.count('class="bs-token"') == 4
    compare = write_compare_html(
        audit_result, _after(audit_result), tmp_path / "compare.html",
        gates=[{"name": "g", "passed": True, "detail": "ok"}],
    )
    loaded = load(compare)
    assert loaded.errors == [] and plot_divs(loaded.dom) == {"fig-compare": True}
    png = screenshot(report, tmp_path / "report.png", width=1280, height=2400)
    assert _png_size(png) == (1280, 2400)
    assert png.stat().st_size > 50_000  # a drawn page, not a blank one


def _insight_result(r: AuditResult) -> AuditResult:
    """``r`` with an image attribution (over its input picture) and a tokens attribution."""
    from biasscope.results import Attribution

    r = copy.deepcopy(r)
    heat = [[0.0] * 6 for _ in range(6)]
    heat[1][4] = 1.0
    picture = [[[x / 5, y / 5, 0.5] for x in range(6)] for y in range(6)]
    r.attributions = [
        Attribution("a", "input:a", 3, 1, "integrated_gradients", "image", heat, [3, 6, 6],
                    image=picture, selected="highest"),
        Attribution("b", "layer:emb", 5, 0, "feature_ablation", "tokens", [0.5, -0.2, 0.0, 1.0], [4, 8],
                    tokens=["the", "<b>cat</b>", "sat", "down"], selected="lowest"),
    ]
    return r


def test_insight_sections_render_the_probe_and_each_attribution_kind(audit_result):
    out = render_html(_insight_result(audit_result), plotlyjs="cdn")
    probe = _section(out, "information")
    rows = re.findall(r'<tr data-modality="([^"]+)">(.*?)</tr>', probe, re.S)
    assert [name for name, _ in rows] == ["a", "b"]
    assert "93.8%" in _text(rows[0][1]) and "44.8%" in _text(rows[0][1])
    assert "ignoring it is right" in _text(rows[1][1]) and "carries label information" in _text(rows[0][1])
    inside = _section(out, "inside")
    headings = [_text(h) for h in re.findall(r"<h3>(.*?)</h3>", inside, re.S)]
    assert headings == ["a — example 3 (highest functional entropy), predicted class 1",
                        "b — example 5 (lowest functional entropy), predicted class 0"]
    assert "&lt;b&gt;cat&lt;/b&gt;" in inside and "<b>cat</b>" not in inside  # tokens escaped
    assert inside.count('class="bs-token"') == 4 and "over the input" in inside
    assert out.index('id="verdict"') < out.index('id="diagnostics"') < out.index('id="information"')
    assert out.index('id="measures"') < out.index('id="information"') < out.index('id="inside"')


@pytest.mark.browser
def test_console_errors_are_caught(tmp_path):
    """The harness itself: a page with an error must not pass."""
    b = _browser()
    load, plot_divs = b.load, b.plot_divs
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<html><head></head><body><div id="f" class="plotly-graph-div"></div>'
        "<script>console.error('boom'); missing();</script></body></html>"
    )
    loaded = load(bad)
    assert any("boom" in e for e in loaded.errors)
    assert any("missing is not defined" in e for e in loaded.errors)
    assert plot_divs(loaded.dom) == {"f": False}


def test_json_round_trip_renders_the_same(audit_result):
    again = AuditResult.from_dict(audit_result.to_dict())
    assert render_html(again, plotlyjs="cdn") == render_html(audit_result, plotlyjs="cdn")


def test_undefined_intervals_and_missing_breakdowns_render(audit_result):
    r = copy.deepcopy(audit_result)
    nan = float("nan")
    for m in r.modalities:
        m.functional_entropy = Estimate(m.functional_entropy.mean, nan, nan)
        m.per_class, m.per_example = {}, {}
    r.accuracy = None
    out = render_html(r, plotlyjs="cdn")
    assert _figure_ids(out) == ["fig-shares", "fig-measures", "fig-probe", "fig-attribution-0",
                                "fig-attribution-1", "fig-attribution-2", "fig-permutation", "fig-shapley"]
    assert "This result holds no per-class values." in out
    assert "This result holds no per-example values." in out
    meta = out.index('<p class="meta">')
    assert "accuracy" not in _text(out[meta : out.index("</p>", meta)])
    row_a = re.findall(r"<tr>(.*?)</tr>", _section(out, "measures"), re.S)[1]
    assert f"{r['a'].functional_entropy.mean:.3g} [" not in _text(row_a)
    text = _console_text(audit_table(r))
    assert not re.search(r"\bnan\b", text)


def test_compact_terminal_shows_reliance_beside_sensitivity(audit_result):
    text = _console_text(audit_summary(audit_result, width=80))
    header = next(line for line in text.splitlines() if "verdict" in line and "modality" in line)
    assert header.index("sens.") < header.index("loss") < header.index("acc.")
    row = next(line.split() for line in text.splitlines() if line.split()[:1] == ["a"])
    assert row[:5] == ["a", "dominant", "100.0%", "100.0%", "100.0%"]


def test_diagnostics_lead_the_page_and_the_terminal(audit_result):
    from biasscope.results import Diagnostic

    r = copy.deepcopy(audit_result)
    r.diagnostics = [Diagnostic("measures_disagree", "warning", "Sensitivity and reliance disagree on `a`.", "Read both.", "a")]
    out = render_html(r, plotlyjs="cdn")
    assert out.index('data-code="measures_disagree"') < out.index('id="measures"')
    text = _console_text(audit_summary(r))
    assert "warning measures_disagree: Sensitivity and reliance disagree on a. Read both." in " ".join(text.split())
    assert text.index("measures_disagree") < text.index("Modality dependence")


def test_agreement_section_compares_sizes(audit_result):
    from biasscope.auditing.agreement import analyse_agreement

    r = copy.deepcopy(audit_result)
    # same order everywhere, but a's sensitivity share is 99% against a reliance share of 55%
    for m, inc in zip(r.modalities, (1.1, 0.9)):
        m.permutation = replace(m.permutation, loss_increase=Estimate(inc, inc - 0.05, inc + 0.05))
    r.modalities[0].share, r.modalities[1].share = 0.99, 0.01
    for m in r.modalities:
        m.verdict = "ok"  # sizes are compared among the used modalities
    r.agreement = analyse_agreement(r.modalities, [], Thresholds())
    section = _text(_section(render_html(r, plotlyjs="cdn"), "agreement"))
    assert "But the sizes disagree" in section and "disagree" in section
    assert "a holds 99.0% of the sensitivity and 55.0% of the reliance" in section
