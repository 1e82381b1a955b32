"""The probe and attribution figures draw the numbers they are given."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest

from biasscope.results import Attribution
from biasscope.results import ProbeResult
from biasscope.render.insight_figures import (
    AGAINST, FOR, MAX_BARS, attribution_caption, attribution_figure, probe_figure, token_html,
)
from biasscope.results import Estimate


def _probe(name, acc, chance, model, permuted):
    return ProbeResult(name, "input:0", Estimate(acc, acc - 0.05, acc + 0.05), chance, 5, 200, 8, 8,
                       model, Estimate(permuted, permuted - 0.02, permuted + 0.02))


def test_probe_figure_bars_equal_available_and_used():
    probes = [_probe("text", 0.85, 0.25, 0.9, 0.9), _probe("<img>", 0.6, 0.25, 0.9, 0.4)]
    fig = probe_figure(probes)
    available, used = fig.data
    assert list(available.x) == ["text", "&lt;img&gt;"]  # names escaped
    assert np.allclose(available.y, [p.available for p in probes])
    assert np.allclose(used.y, [p.used for p in probes])
    assert used.y[0] == 0.0 and available.y[0] == pytest.approx(0.8)
    # the same figure from the JSON form
    again = probe_figure(json.loads(json.dumps([asdict(p) for p in probes])))
    assert np.allclose(again.data[1].y, used.y)


def _attr(kind, values, tokens=None):
    return Attribution("m", "input:0", 3, 1, "integrated_gradients", kind, values, [len(values)], tokens)


def test_image_heatmap_draws_the_values():
    heat = np.arange(12.0).reshape(3, 4)
    fig = attribution_figure(_attr("image", heat.tolist()))
    assert fig.data[0].type == "heatmap" and np.array_equal(np.asarray(fig.data[0].z), heat)
    assert fig.layout.yaxis.autorange == "reversed"


def test_tokens_row_and_html_are_escaped_and_scaled():
    a = _attr("tokens", [0.0, -2.0, 4.0], ["the", "<b>", "cat"])
    fig = attribution_figure(a)
    assert list(fig.data[0].z[0]) == [0.0, -2.0, 4.0] and fig.data[0].zmax == 4.0
    frag = token_html(a)
    assert "&lt;b&gt;" in frag and "<b>" not in frag
    assert frag.count("bs-token") == 3 and "rgba(42,157,143,1.00)" in frag and "rgba(198,40,40,0.50)" in frag


def test_vector_bars_keep_the_largest_features_in_order():
    values = np.zeros(100)
    values[[5, 50, 70]] = [3.0, -9.0, 1.0]
    values[:MAX_BARS + 10] += 1e-3
    fig = attribution_figure(_attr("vector", values.tolist()))
    x = list(fig.data[0].x)
    assert len(x) == MAX_BARS and {"f5", "f50", "f70"} <= set(x)
    assert x == sorted(x, key=lambda s: int(s[1:]))


def test_token_colours_match_the_caption_and_the_highlighted_words():
    a = _attr("tokens", [-1.0, 0.0, 1.0], ["no", "the", "yes"])
    scale = [c for _, c in attribution_figure(a).data[0].colorscale]
    caption = attribution_caption(a)
    assert "green for, red against" in caption and "summed over the embedding dimension" in caption
    assert scale[0] == AGAINST == "#c62828" and scale[-1] == FOR == "#2a9d8f"  # red low, green high
    frag = token_html(a)  # the same colours on the words
    assert "rgba(198,40,40,1.00)\">no" in frag and "rgba(42,157,143,1.00)\">yes" in frag
    bars = attribution_figure(_attr("vector", [-2.0, 3.0])).data[0].marker.color
    assert list(bars) == [AGAINST, FOR]


def test_caption_names_the_method_and_the_input():
    a = Attribution("img", "input:image", 0, 1, "saliency", "image", [[1.0]], [1, 1], image=[[[0, 0, 0]]])
    assert attribution_caption(a) == "Saliency (|gradient|) at input:image: |attribution| summed over channels, drawn over the input."
