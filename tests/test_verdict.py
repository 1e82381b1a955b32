"""The verdict rule on hand-made results."""

from __future__ import annotations

import pytest

from biasscope import ConfigError, Estimate, ModalityResult, Thresholds
from biasscope.results import PermutationScore
from biasscope.auditing.diagnostics import audit_diagnostics
from biasscope.auditing.verdict import (
    Reliance, modality_verdicts, NOT_RELIED, RELIED, UNDECIDED, accuracy_margin, relied_upon,
    reliance_effect, reliance_status, shares_disagree, undecided, verdict_sentence,
)


def _perm(drop, spread=0.01, repeats=10, flip=None):
    d = Estimate(drop, drop - spread, drop + spread)
    f = None if flip is None else Estimate(flip, max(flip - spread, 0.0), flip + spread)
    return PermutationScore(d, d, d, repeats=repeats, flip_rate=f)


def _mod(name, fe, *, low=None, drop=None, spread=0.01, repeats=10):
    est = Estimate(fe, fe * 0.9 if low is None else low, fe * 1.1)
    perm = None if drop is None else _perm(drop, spread, repeats)
    return ModalityResult(name, f"input:{name}", est, est, est, est, share=0.0, per_class={}, per_example={}, permutation=perm)


def _verdicts(mods, reliance=None, **kw):
    total = sum(m.functional_entropy.mean for m in mods)
    for m in mods:
        m.share = m.functional_entropy.mean / total
    return modality_verdicts(mods, Thresholds(**kw), reliance=reliance)


def test_levels_relative_to_uniform_share_on_sensitivity_alone():
    v = _verdicts([_mod("a", 1.0), _mod("b", 0.5), _mod("c", 0.1), _mod("d", 0.004)])
    # shares 0.62, 0.31, 0.062, 0.0025 -> relative 2.5, 1.24, 0.25, 0.01; a holds 0.62 > 1/2
    assert v == {"a": "dominant", "b": "ok", "c": "weak", "d": "ignored"}


def test_interval_touching_zero_means_ignored():
    assert _verdicts([_mod("a", 1.0), _mod("b", 1.0, low=0.0)])["b"] == "ignored"


def test_read_but_not_relied_upon_is_unused():
    # the biased ViLT's image: noise there moves the output, shuffling it costs nothing
    v = _verdicts([_mod("image", 0.3, drop=0.0), _mod("text", 0.7, drop=0.7)])
    assert v == {"image": "unused", "text": "dominant"}
    assert verdict_sentence(v).startswith("The model does not rely on `image` for its predictions")


def test_colour_shortcut_is_named():
    # 96% of the entropy and 69% of the reliance on colour: "it leans on `color`"; shape
    # still carries 31% of the reliance, so it is used (not weak), and the sizes disagree
    v = _verdicts([_mod("shape", 0.04, drop=0.31), _mod("color", 0.96, drop=0.69)])
    assert v == {"shape": "ok", "color": "dominant"}
    assert verdict_sentence(v, disagree=["shape"]) == (
        "The model uses all 2 modalities; it leans on `color`. Sensitivity and reliance "
        "disagree in size on `shape`: read both before acting."
    )
    # a shortcut that leaves little reliance on shape makes it weak
    v = _verdicts([_mod("shape", 0.07, drop=0.06), _mod("color", 0.93, drop=0.94)])
    assert v == {"shape": "weak", "color": "dominant"}


def test_balanced_use_is_ok_and_most_of_one_measure_only_is_not_dominant():
    assert _verdicts([_mod("a", 0.5, drop=0.3), _mod("b", 0.5, drop=0.3)]) == {"a": "ok", "b": "ok"}
    # a holds 70% of the sensitivity but only 45% of the reliance: not "most of both"
    assert _verdicts([_mod("a", 0.7, drop=0.45), _mod("b", 0.3, drop=0.55)])["a"] == "ok"


def test_unmeasurable_reliance_falls_back_to_sensitivity():
    # at chance: every shuffle costs ~nothing; sensitivity says a is read, b is not
    mods = [_mod("audio", 1.0, drop=0.001), _mod("video", 0.0, low=0.0, drop=0.0)]
    status = reliance_status(mods, accuracy=0.125, chance=0.14, n_examples=128)
    assert not status.measurable and "accuracy 12.5%" in status.note
    v = _verdicts(mods, reliance=status)
    assert v == {"audio": "dominant", "video": "ignored"}
    sentence = verdict_sentence(v, note=status.note)
    assert "every modality" not in sentence and "Reliance not measurable" in sentence


def test_above_chance_makes_reliance_measurable():
    mods = [_mod("a", 1.0, drop=0.0), _mod("b", 1.0, drop=0.0)]
    assert reliance_status(mods, accuracy=0.9, chance=0.25, n_examples=100).measurable
    assert not reliance_status(mods, accuracy=0.27, chance=0.25, n_examples=100).measurable
    assert not reliance_status(mods, accuracy=None, chance=None, n_examples=100).measurable


def test_relied_upon_is_an_effect_beyond_the_margin():
    assert relied_upon(_perm(0.3, spread=0.01))
    # significant (the interval excludes 0) but inside the 1-point margin: not relied upon
    tiny = _perm(0.004, spread=0.003)
    assert not relied_upon(tiny) and reliance_effect(tiny) == NOT_RELIED
    # the interval straddles the margin: cannot tell
    assert reliance_effect(_perm(0.012, spread=0.005)) == UNDECIDED
    # 30% of the predictions flip but the accuracy does not drop: read, not relied upon
    flips = _perm(0.0, spread=0.005, flip=0.3)
    assert reliance_effect(flips) == NOT_RELIED
    # what flips can cost by chance on N examples widens the margin: 1.96 sqrt(0.3 / 100) = 0.107
    assert accuracy_margin(flips, n_examples=100) == pytest.approx(1.96 * (0.3 / 100) ** 0.5)
    assert reliance_effect(_perm(0.05, spread=0.02, flip=0.3), n_examples=100) == NOT_RELIED
    assert reliance_effect(_perm(0.05, spread=0.02, flip=0.3)) == RELIED  # 1 point alone
    # inside, but a sizeable share of the (small) summed accuracy drop: cannot tell
    assert reliance_effect(tiny, accuracy_share=0.5, modalities=2) == UNDECIDED
    # an accuracy Shapley value beyond the margin (a duplicate): cannot tell
    assert reliance_effect(tiny, shapley=0.2) == UNDECIDED
    assert not relied_upon(_perm(0.0)) and reliance_effect(None) == UNDECIDED


def test_disagreement_by_factor_or_gap():
    assert shares_disagree(0.001, 0.43)  # the text+tabular case
    assert shares_disagree(0.04, 0.31)  # factor 7.75
    assert not shares_disagree(0.96, 0.69)  # gap 0.27, factor 1.4
    assert not shares_disagree(0.001, 0.004)  # both negligible
    assert shares_disagree(0.5, 0.85)


def test_sentence():
    assert verdict_sentence({"a": "ok", "b": "ignored"}) == "The model ignores `b`."
    assert verdict_sentence({"a": "dominant", "b": "weak"}) == (
        "No modality is ignored, but the model barely uses `b`; it leans on `a`."
    )
    assert verdict_sentence({"a": "ok", "b": "ok"}) == "The model uses all 2 modalities."
    assert verdict_sentence({"a": "ignored", "b": "ignored"}).startswith("The model ignores every modality")


def test_thresholds_must_be_ordered():
    with pytest.raises(ConfigError):
        Thresholds(ignored=0.6, weak=0.5)
    with pytest.raises(ConfigError):
        Thresholds(disagree_factor=1.0)


def test_levels_among_used_modalities():
    # three modalities, one ignored: two equal users are both ok, not near-dominant
    v = _verdicts([_mod("a", 0.5, drop=0.3), _mod("b", 0.45, drop=0.28), _mod("c", 0.0, low=0.0, drop=0.0)])
    assert v == {"a": "ok", "b": "ok", "c": "ignored"}


def test_thresholds_are_configurable():
    mods = [_mod("a", 0.7, drop=0.7), _mod("b", 0.3, drop=0.3)]
    assert _verdicts(mods)["b"] == "ok"
    assert _verdicts(mods, weak=0.7, dominant=1.3)["b"] == "weak"
    # weak rests on reliance when it is measurable: low sensitivity alone is not weak
    assert _verdicts([_mod("a", 0.99, drop=0.5), _mod("b", 0.01, drop=0.5)])["b"] == "ok"
    assert Reliance(False, "x.").note == "Reliance not measurable: x."


def test_an_interval_too_wide_to_tell_is_not_zero_reliance():
    # R = 2: t = 12.7 makes [0.3 - 0.5, 0.3 + 0.5] reach both the margin and far beyond it
    mods = [_mod("a", 0.7, drop=1.0, spread=0.05, repeats=2), _mod("b", 0.3, drop=0.3, spread=0.5, repeats=2)]
    assert undecided(mods) == ["b"] and reliance_effect(mods[1].permutation) == UNDECIDED
    measurable = Reliance(True)
    # b's relative reliance share 2 x 0.3 / 1.3 = 0.46 < weak: weak, never unused
    assert _verdicts(mods, reliance=measurable) == {"a": "dominant", "b": "weak"}
    codes = {d.code: d for d in audit_diagnostics(mods, reliance=measurable, labelled=True)}
    noisy = codes["reliance_undecided"]
    assert noisy.severity == "warning" and noisy.modality == "b" and "2 shuffles" in noisy.message
    assert "`permutation_repeats`" in noisy.fix and "10 or more" in noisy.fix
    assert "cannot be told" in verdict_sentence({"a": "dominant", "b": "weak"}, undecided=["b"])
    # a narrow interval inside the margin: b is measured, not relied upon, and unused
    narrow = [_mod("a", 0.7, drop=1.0, spread=0.05), _mod("b", 0.3, drop=0.003, spread=0.002)]
    assert undecided(narrow) == [] and _verdicts(narrow, reliance=measurable)["b"] == "unused"
    assert "reliance_undecided" not in {d.code for d in audit_diagnostics(narrow, reliance=measurable, labelled=True)}
    # without measurable reliance nothing is undecided: the verdict rests on sensitivity anyway
    assert "reliance_undecided" not in {d.code for d in audit_diagnostics(mods, reliance=Reliance(False, "x."),
                                                                         labelled=True)}


def test_a_quarter_accuracy_drop_is_never_lost_at_two_repeats():
    # a planted late fusion: shuffling m1 costs ~0.27 accuracy (labels = the model's
    # predictions), m0 ~0.65; with R = 2 shuffles the t-interval (12.7 x sd / sqrt 2) often
    # reaches 0, which alone used to make m1 "unused"
    import torch

    import biasscope as bs
    from zoo import fusion_case

    torch.set_num_threads(1)
    model, data, mods, _ = fusion_case((5, 5), (1.0, 0.4), tied=True)()
    results = [bs.audit(model, data, mods, samples=4, permutation_repeats=2, seed=seed, shapley=False,
                        tensorization=False, probe=False, explain=0, device="cpu") for seed in range(20)]
    drops = [r.modalities[1].permutation.accuracy_drop.mean for r in results]
    assert 0.2 < sum(drops) / len(drops) < 0.35
    assert all(r.modalities[1].verdict not in ("ignored", "unused") for r in results)
    assert all(r.modalities[0].verdict not in ("ignored", "unused") for r in results)
    # the rule is what keeps it: in some seeds m1 is not shown relied upon, and cannot be told
    saved = [r for r in results if not relied_upon(r.modalities[1].permutation)]
    assert saved and all("reliance_undecided" in {d.code for d in r.diagnostics} for r in saved)
