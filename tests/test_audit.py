"""The audit on planted models: exact zeros, bounds, invariances, seeds, shapes of data."""

from __future__ import annotations

import math

import pytest
import torch

import biasscope as bs
from biasscope.measuring._stats import mean_interval
from biasscope.auditing.audit import collect_batches
from biasscope.results import MEASURES, Estimate

from planted import Branches, DictBranches, dict_data, labelled_by, tuple_data


def _mods(n, *, layer=False):
    if layer:
        return [bs.Modality(f"m{i}", layer=f"encoders.{i}") for i in range(n)]
    return [bs.Modality(f"m{i}", input=i) for i in range(n)]


FAST = dict(samples=8, permutation_repeats=8, shapley=False)


@pytest.mark.parametrize("layer", [False, True])
def test_structurally_ignored_modality_is_exactly_zero(layer):
    model = Branches((5, 3), ignore={1})
    result = bs.audit(model, labelled_by(model, tuple_data((5, 3))), _mods(2, layer=layer), **FAST)
    b = result["m1"]
    for name in MEASURES:
        est = b.measure(name)
        assert (est.mean, est.ci_low, est.ci_high) == (0.0, 0.0, 0.0)
    assert all(v == 0.0 for v in b.per_example["functional_entropy"])
    assert b.share == 0.0
    assert result["m0"].share == 1.0
    assert b.verdict == "ignored" and result.ignored == ["m1"]
    assert b.permutation.loss_increase.mean == 0.0
    assert "`m1`" in result.sentence


def test_bounds_hold_over_random_models():
    # the log-Sobolev and Poincare inequalities hold per example in expectation; over many
    # random models the mean of each side must respect them up to Monte-Carlo error
    for seed in range(6):
        model = Branches((4, 6), seed=seed)
        result = bs.audit(model, tuple_data((4, 6), seed=seed), _mods(2), samples=64, seed=seed, permutation_repeats=2, shapley=False)
        for m in result.modalities:
            assert m.functional_entropy.mean <= m.fisher_bound.ci_high
            assert m.variance.mean <= m.poincare_bound.ci_high
            assert m.functional_entropy.mean > 0


def test_tensorization_check_holds():
    model = Branches((5, 3, 4), seed=3)
    result = bs.audit(model, tuple_data((5, 3, 4)), _mods(3), samples=32, permutation_repeats=2, shapley=False, tensorization=True)
    j = result.joint
    assert j.holds
    assert j.functional_entropy.mean <= j.sum_functional_entropy.mean * 1.05
    assert j.variance.mean <= j.sum_variance.mean * 1.05
    assert 0 < j.entropy_ratio <= 1.05


def test_scaling_an_encoder_moves_the_share():
    data = tuple_data((5, 3))
    base = bs.audit(Branches((5, 3)), data, _mods(2), **FAST)
    louder = Branches((5, 3))
    with torch.no_grad():
        louder.encoders[1].weight.mul_(3.0)
    scaled = bs.audit(louder, data, _mods(2), **FAST)
    assert scaled["m1"].share > base["m1"].share
    assert scaled["m0"].share < base["m0"].share


def test_relabelling_modalities_permutes_results():
    data = tuple_data((5, 3))
    model = Branches((5, 3))
    a = bs.audit(model, data, [bs.Modality("x", input=0), bs.Modality("y", input=1)], **FAST)
    # the same modalities listed in the other order: the noise stream is drawn in another
    # order, so compare within the intervals; shares of the same modality must agree
    b = bs.audit(model, data, [bs.Modality("y", input=1), bs.Modality("x", input=0)], **FAST)
    assert b.names == ["y", "x"]
    for name in ("x", "y"):
        ea, eb = a[name].functional_entropy, b[name].functional_entropy
        assert eb.ci_low <= ea.mean <= eb.ci_high or ea.ci_low <= eb.mean <= ea.ci_high


def test_same_seed_same_numbers_and_other_seed_within_intervals():
    model = Branches((5, 3))
    data = labelled_by(model, tuple_data((5, 3), n=128))
    opts = {**FAST, "samples": 32}
    r1 = bs.audit(model, data, _mods(2), seed=7, **opts)
    r2 = bs.audit(model, data, _mods(2), seed=7, **opts)
    assert r1.to_dict() == r2.to_dict()
    r3 = bs.audit(model, data, _mods(2), seed=8, **opts)
    assert r3.to_dict() != r1.to_dict()
    for name in ("m0", "m1"):
        for measure in MEASURES:
            e1, e3 = r1[name].measure(measure), r3[name].measure(measure)
            assert e1.ci_low <= e3.mean <= e1.ci_high


@pytest.mark.parametrize("m", [1, 2, 3, 5])
def test_any_number_of_modalities(m):
    dims = tuple(range(2, 2 + m))
    model = Branches(dims, ignore={m - 1} if m > 1 else ())
    result = bs.audit(model, labelled_by(model, tuple_data(dims)), _mods(m), **FAST, tensorization=True)
    assert result.names == [f"m{i}" for i in range(m)]
    assert sum(x.share for x in result.modalities) == pytest.approx(1.0)
    assert (result.joint is None) == (m == 1)
    if m > 1:
        assert result.ignored == [f"m{m - 1}"]


def test_dict_and_tuple_batches_agree():
    t = bs.audit(Branches((5, 3)), tuple_data((5, 3)), _mods(2), **FAST)
    d = bs.audit(
        DictBranches((5, 3)),
        dict_data((5, 3)),
        [bs.Modality("m0", input="m0"), bs.Modality("m1", input="m1")],
        **FAST,
    )
    for name in ("m0", "m1"):
        assert d[name].functional_entropy.mean == pytest.approx(t[name].functional_entropy.mean, rel=1e-6)


def test_input_and_layer_perturbation_differ_but_both_see_the_modality():
    data, model = tuple_data((5, 3)), Branches((5, 3))
    r_in = bs.audit(model, data, _mods(2), **FAST)
    r_layer = bs.audit(model, data, _mods(2, layer=True), **FAST)
    for name in ("m0", "m1"):
        assert r_in[name].functional_entropy.mean > 0 and r_layer[name].functional_entropy.mean > 0
    assert r_in["m0"].functional_entropy.mean != r_layer["m0"].functional_entropy.mean


def test_chunking_does_not_change_numbers():
    data, model = tuple_data((5, 3)), Branches((5, 3))
    whole = bs.audit(model, data, _mods(2), max_rows=10_000, **FAST)
    chunked = bs.audit(model, data, _mods(2), max_rows=32, **FAST)
    for name in ("m0", "m1"):
        assert chunked[name].functional_entropy.mean == pytest.approx(whole[name].functional_entropy.mean, rel=1e-5)


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_devices_on_cpu(device):
    result = bs.audit(Branches((5, 3)), tuple_data((5, 3)), _mods(2), device=device, **FAST)
    assert result.settings["device"] == "cpu"


def test_model_is_returned_unchanged():
    model = Branches((5, 3))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bs.audit(model, tuple_data((5, 3)), _mods(2, layer=True), **FAST)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks for m in model.modules())


def test_labels_give_accuracy_and_per_class_means():
    data = tuple_data((5, 3), classes=4)
    result = bs.audit(Branches((5, 3)), data, _mods(2), **FAST)
    assert result.class_source == "label"
    labels = torch.cat([b[-1] for b in data])
    assert result.classes == sorted(set(labels.tolist()))
    fe = torch.tensor(result["m0"].per_example["functional_entropy"])
    for i, c in enumerate(result.classes):
        assert result["m0"].per_class["functional_entropy"][i] == pytest.approx(fe[labels == c].mean().item())
    unlabelled = bs.audit(Branches((5, 3)), [b[:-1] + (None,) for b in data], _mods(2), label_key=None, **FAST)
    assert unlabelled.accuracy is None and unlabelled.class_source == "prediction"


def test_limit_and_empty_data():
    batches = collect_batches(tuple_data((5, 3), n=64), limit=40)
    assert [b.size for b in batches] == [32, 8]
    with pytest.raises(bs.DataLoadError, match="empty"):
        bs.audit(Branches((5, 3)), [], _mods(2))


def test_mean_interval_matches_t_distribution():
    est = mean_interval([1.0, 2.0, 3.0, 4.0])
    # t(0.975, 3) = 3.182446; sd = 1.290994; sem = 0.645497
    assert est.mean == 2.5
    assert est.ci_high - 2.5 == pytest.approx(3.182446 * 0.645497, rel=1e-5)
    assert math.isnan(mean_interval([3.0]).ci_low)


def test_bootstrap_interval_of_nonnegative_heavy_tails_stays_nonnegative():
    import numpy as np

    values = np.r_[np.full(49, 0.001), 100.0]  # one example carries the mean
    t, boot = mean_interval(values), mean_interval(values, method="bootstrap")
    assert t.ci_low < 0 < boot.ci_low <= boot.mean <= boot.ci_high
    assert mean_interval(np.zeros(10), method="bootstrap") == Estimate(0.0, 0.0, 0.0)


def test_tensorization_with_an_ignored_modality_is_an_equality_within_its_interval():
    # joint = the used modality's own term: the paired gap's interval must contain 0
    model = Branches((5, 3), ignore={1})
    result = bs.audit(model, labelled_by(model, tuple_data((5, 3))), _mods(2), samples=8, permutation_repeats=2, shapley=False, tensorization=True)
    gap = result.joint.entropy_gap
    assert gap.ci_low <= 0 <= gap.ci_high and result.joint.holds


@pytest.mark.parametrize(
    "options, needle",
    [
        (dict(samples=1), "samples"),
        (dict(scale=0.0), "scale"),
        (dict(max_rows=0), "max_rows"),
        (dict(divergence="js"), "divergence"),
        (dict(permutation_repeats=1), "permutation_repeats"),
    ],
)
def test_invalid_options_fail_before_any_work(options, needle):
    with pytest.raises(bs.ConfigError, match=needle):
        bs.audit(Branches((5, 3)), tuple_data((5, 3)), _mods(2), **options)


def test_labels_one_hot_and_column_are_converted_and_others_refused():
    model = Branches((5, 3))
    data = labelled_by(model, tuple_data((5, 3)))
    plain = bs.audit(model, data, _mods(2), **FAST)
    column = bs.audit(model, [(*b[:-1], b[-1][:, None]) for b in data], _mods(2), **FAST)
    onehot = bs.audit(model, [(*b[:-1], torch.nn.functional.one_hot(b[-1], 4).float()) for b in data], _mods(2), **FAST)
    assert plain.accuracy == column.accuracy == onehot.accuracy == 1.0
    assert column.to_dict() == plain.to_dict() == onehot.to_dict()
    with pytest.raises(bs.DataLoadError, match="class indices"):
        bs.audit(model, [(*b[:-1], torch.rand(b[-1].shape[0], 3)) for b in data], _mods(2), **FAST)


def test_half_precision_model_gives_exact_zero_for_an_ignored_modality():
    model = Branches((5, 3), ignore={1}).to(torch.bfloat16)
    data = [tuple(t.to(torch.bfloat16) if t.is_floating_point() else t for t in b) for b in labelled_by(Branches((5, 3), ignore={1}), tuple_data((5, 3)))]
    result = bs.audit(model, data, _mods(2, layer=True), **FAST)
    assert result["m1"].functional_entropy.mean == 0.0 and result["m0"].functional_entropy.mean > 0


def test_options_object_overrides_and_four_argument_progress():
    calls = []
    opts = bs.AuditOptions(samples=4, permutation_repeats=2, shapley=False)
    result = bs.audit(Branches((5, 3)), tuple_data((5, 3)), _mods(2), options=opts, seed=3,
                      progress=lambda stage, done, total, info: calls.append((stage, done, total, info)))
    assert result.settings["samples"] == 4 and result.settings["seed"] == 3
    assert ("entropy", 2, 2, {}) in calls and any(c[0] == "permutation" for c in calls)
    with pytest.raises(bs.ConfigError, match="Unknown audit option"):
        bs.audit(Branches((5, 3)), tuple_data((5, 3)), _mods(2), sampels=4)


def test_result_is_consistent_without_mutation():
    model = Branches((5, 3), ignore={1})
    result = bs.audit(model, labelled_by(model, tuple_data((5, 3))), _mods(2), **FAST)
    assert result.agreement is not None and result.reliance_measurable is True
    shares = {s.modality: (s.sensitivity, s.reliance) for s in result.agreement.shares}
    assert shares["m1"] == (0.0, 0.0) and shares["m0"] == (1.0, 1.0)
    assert result["m0"].reliance_share == 1.0 and result["m1"].verdict == "ignored"
    # the data checks come first, the probe's reading after the measures' diagnostics
    assert [d.code for d in result.diagnostics] == [
        "label_balance", "labels_imbalanced", "site_unreachable", "ignoring_is_right"]
