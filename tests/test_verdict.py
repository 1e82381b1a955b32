"""The verdict rule on hand-made results."""

from __future__ import annotations

import pytest

from biasscope import ConfigError, Estimate, ModalityResult, Thresholds
from biasscope.results import PermutationScore
from biasscope.verdict import modality_verdicts, verdict_sentence


def _mod(name, fe, *, low=None, drop=None):
    est = Estimate(fe, fe * 0.9 if low is None else low, fe * 1.1)
    perm = None
    if drop is not None:
        d = Estimate(drop, drop - 0.01, drop + 0.01)
        perm = PermutationScore(d, d, d, repeats=5)
    return ModalityResult(name, f"input:{name}", est, est, est, est, share=0.0, per_class={}, per_example={}, permutation=perm)


def _verdicts(mods, **kw):
    total = sum(m.functional_entropy.mean for m in mods)
    for m in mods:
        m.share = m.functional_entropy.mean / total
    return modality_verdicts(mods, Thresholds(**kw))


def test_levels_relative_to_uniform_share():
    v = _verdicts([_mod("a", 1.0), _mod("b", 0.5), _mod("c", 0.1), _mod("d", 0.004)])
    # shares 0.62, 0.31, 0.062, 0.0025 -> relative 2.5, 1.24, 0.25, 0.01
    assert v == {"a": "dominant", "b": "ok", "c": "weak", "d": "ignored"}


def test_interval_touching_zero_means_ignored():
    assert _verdicts([_mod("a", 1.0), _mod("b", 1.0, low=0.0)])["b"] == "ignored"


def test_reliance_overrides_sensitivity():
    # sensitive to noise but permuting it costs nothing: not used (the ViLT case)
    v = _verdicts([_mod("image", 0.3, drop=0.0), _mod("text", 0.7, drop=0.7)])
    assert v["image"] == "ignored"


def test_used_but_barely_sensitive_is_weak_not_ignored():
    # the colour-shortcut model: noise in the image hardly moves the output (r = 0.05), but
    # shuffling the image costs accuracy (q = 0.67): used, weakly
    v = _verdicts([_mod("image", 0.025, drop=0.25), _mod("color", 0.975, drop=0.5)])
    assert v == {"image": "weak", "color": "ok"}


def test_sentence():
    assert verdict_sentence({"a": "ok", "b": "ignored"}) == "The model ignores `b`."
    assert verdict_sentence({"a": "dominant", "b": "weak"}) == (
        "No modality is ignored, but the model barely uses `b`; it leans on `a`."
    )
    assert verdict_sentence({"a": "ok", "b": "ok"}) == "The model uses all 2 modalities."


def test_thresholds_must_be_ordered():
    with pytest.raises(ConfigError):
        Thresholds(ignored=0.6, weak=0.5)


def test_levels_among_used_modalities():
    # three modalities, one ignored: two equal users are both ok, not near-dominant
    v = _verdicts([_mod("a", 0.5, drop=0.3), _mod("b", 0.45, drop=0.28), _mod("c", 0.0, low=0.0, drop=0.0)])
    assert v == {"a": "ok", "b": "ok", "c": "ignored"}
