"""Permutation scores and modality Shapley values: closed forms, exact zeros, Shapley axioms,
whole-set permutation, layer and input sites, dict and tuple batches, and a cross-check
against captum's ShapleyValues."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from biasscope import Modality, OutputSpec
from biasscope.runtime._batch import split_batch
from biasscope.errors import ConfigError, DataLoadError
from biasscope.measuring.perception import modality_shapley, permutation_scores
from biasscope.results import PermutationScore

from planted import Branches, DictBranches, dict_data, tuple_data

SCALE = 3.0


class OneHotReader(nn.Module):
    """logits = SCALE * a (a is the one-hot class, through the identity layer ``enc_a``)
    + b * (1, ..., 1): ``b`` shifts every logit alike, so softmax never sees it."""

    def __init__(self) -> None:
        super().__init__()
        self.enc_a = nn.Identity()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return SCALE * self.enc_a(a) + b


def _onehot_data(n=60, classes=3, batch=20, seed=1):
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, classes, (n,), generator=g)
    a = nn.functional.one_hot(label, classes).float()
    b = torch.randn(n, 1, generator=g)
    return label, a, b, [split_batch((a[i : i + batch], b[i : i + batch], label[i : i + batch])) for i in range(0, n, batch)]


def _perms(n, count, seed=0):
    """The audit's permutations: repeat r keyed by (seed, r) only."""
    from biasscope.measuring._noise import example_permutation, stream_id

    return [example_permutation(n, seed=seed, stream=stream_id("permutation", 0, r)) for r in range(count)]


def _batches(raw):
    return [split_batch(b) for b in raw]


def _fitted(model, raw):
    """The batches relabelled with the model's own predictions (clean accuracy 1), so that
    every modality it reads carries performance."""
    with torch.no_grad():
        return [split_batch((*b[:-1], model(*b[:-1]).argmax(1))) for b in raw]


def _mods(n, *, layer=False):
    if layer:
        return [Modality(f"m{i}", layer=f"encoders.{i}") for i in range(n)]
    return [Modality(f"m{i}", input=i) for i in range(n)]


# ---------------------------------------------------------------- closed forms


@pytest.mark.parametrize("site", ["input", "layer"])
def test_permutation_score_equals_closed_form(site):
    label, a, b, batches = _onehot_data()
    mod_a = Modality("a", input=0) if site == "input" else Modality("a", layer="enc_a")
    repeats = 5
    scores = permutation_scores(OneHotReader(), batches, [mod_a, Modality("b", input=1)], repeats=repeats, seed=7)
    # clean: every example right; permuted: right iff label[pi(i)] == label(i).
    # CE_i = log(e^s + C - 1) - s [pred right], so the loss increase is s * accuracy drop.
    drops = [1.0 - float((label[p] == label).double().mean()) for p in _perms(len(label), repeats, seed=7)]
    sa = scores["a"]
    assert sa.repeats == repeats
    assert sa.accuracy_drop.mean == pytest.approx(sum(drops) / repeats, abs=1e-12)
    assert sa.relative_accuracy_drop.mean == pytest.approx(sum(drops) / repeats, abs=1e-12)
    assert sa.loss_increase.mean == pytest.approx(SCALE * sum(drops) / repeats, abs=1e-5)
    assert sa.accuracy_drop.ci_low < sa.accuracy_drop.mean < sa.accuracy_drop.ci_high
    # b adds the same number to every logit: no accuracy change, loss change at rounding level
    sb = scores["b"]
    assert sb.accuracy_drop.mean == 0.0
    assert abs(sb.loss_increase.mean) < 1e-6


def test_shapley_equals_closed_form():
    label, a, b, batches = _onehot_data()
    acc, ll = modality_shapley(OneHotReader(), batches, [Modality("a", input=0), Modality("b", input=1)], seed=3)
    (pi,) = _perms(len(label), 1, seed=3)
    agree = float((label[pi] == label).double().mean())
    assert acc.exact and acc.metric == "accuracy" and ll.metric == "log_likelihood"
    assert acc.full == 1.0 and acc.empty == pytest.approx(agree, abs=1e-12)
    assert acc.values["a"] == pytest.approx(1.0 - agree, abs=1e-12)
    assert acc.values["b"] == 0.0
    assert acc.interaction == 0.0
    norm = math.log(math.exp(SCALE) + 2)
    assert ll.full == pytest.approx(SCALE - norm, abs=1e-5)
    assert ll.values["a"] == pytest.approx(SCALE * (1.0 - agree), abs=1e-5)
    assert abs(ll.values["b"]) < 1e-6 and abs(ll.interaction) < 1e-6


def test_relative_drop_is_zero_when_clean_accuracy_is_zero():
    label, a, b, _ = _onehot_data()
    wrong = (label + 1) % 3  # the model is always wrong: clean accuracy 0
    batches = [split_batch((a, b, wrong))]
    s = permutation_scores(OneHotReader(), batches, [Modality("a", input=0)], repeats=3)["a"]
    assert s.relative_accuracy_drop.mean == 0.0 and s.accuracy_drop.mean <= 0.0


# ---------------------------------------------------------------- exact zeros


@pytest.mark.parametrize("layer", [False, True])
def test_structurally_ignored_modality_is_exactly_zero(layer):
    model = Branches((5, 3, 4), ignore={1}, seed=2)
    batches = _fitted(model, tuple_data((5, 3, 4), n=48, batch=16))
    mods = _mods(3, layer=layer)
    scores = permutation_scores(model, batches, mods, repeats=4)
    s = scores["m1"]
    for est in (s.accuracy_drop, s.relative_accuracy_drop, s.loss_increase):
        assert (est.mean, est.ci_low, est.ci_high) == (0.0, 0.0, 0.0)
    assert scores["m0"].accuracy_drop.ci_low > 0 and scores["m0"].loss_increase.ci_low > 0
    for sv in modality_shapley(model, batches, mods):
        assert sv.values["m1"] == 0.0
        assert sv.values["m0"] > 0.0


# ---------------------------------------------------------------- Shapley axioms


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_efficiency_for_any_number_of_modalities(count):
    dims = (5, 3, 4, 2, 6)[:count]
    model = Branches(dims, seed=count)
    batches = _batches(tuple_data(dims, n=48, batch=16))
    out = modality_shapley(model, batches, _mods(count))
    assert [sv.metric for sv in out] == ["accuracy", "log_likelihood"]
    for sv in out:
        assert sv.exact and set(sv.values) == {f"m{i}" for i in range(count)}
        assert sum(sv.values.values()) == pytest.approx(sv.full - sv.empty, abs=1e-9)
        if count == 1:
            assert sv.interaction == pytest.approx(0.0, abs=1e-12)


def test_one_modality_shapley_is_the_first_permutation_repeat():
    model = Branches((5,), seed=1)
    batches = _batches(tuple_data((5,), n=64, batch=16))
    acc, ll = modality_shapley(model, batches, _mods(1), seed=4)
    s = permutation_scores(model, batches, _mods(1), repeats=1, seed=4)["m0"]
    assert acc.values["m0"] == pytest.approx(s.accuracy_drop.mean, abs=1e-12)
    assert ll.values["m0"] == pytest.approx(s.loss_increase.mean, abs=1e-12)


class Twins(nn.Module):
    """logits = f(a) + f(b) + g(c), with f's weights copied into two separate layers."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.fa, self.fb, self.gc = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(2, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
            self.fb.load_state_dict(self.fa.state_dict())

    def forward(self, a, b, c):
        return torch.tanh(self.fa(a)) * 2 + torch.tanh(self.fb(b)) * 2 + self.gc(c)


def test_symmetry_of_interchangeable_modalities():
    g = torch.Generator().manual_seed(0)
    a, c = torch.randn(48, 4, generator=g), torch.randn(48, 2, generator=g)
    label = torch.randint(0, 3, (48,), generator=g)
    batches = [split_batch((a[i : i + 16], a[i : i + 16].clone(), c[i : i + 16], label[i : i + 16])) for i in range(0, 48, 16)]
    for sv in modality_shapley(Twins(), batches, _mods(3)):
        assert sv.values["m0"] == pytest.approx(sv.values["m1"], abs=1e-12)
        assert sv.values["m0"] != pytest.approx(sv.values["m2"], abs=1e-6)


def test_sampled_estimator_agrees_with_exact():
    dims = (5, 3, 4, 2, 6)
    model = Branches(dims, seed=5)
    batches = _fitted(model, tuple_data(dims, n=48, batch=16))
    exact = modality_shapley(model, batches, _mods(5))
    seen = []
    sampled = modality_shapley(
        model, batches, _mods(5), exact_max=2, samples=2000,
        progress=lambda stage, done, total: seen.append((stage, done, total)),
    )
    assert seen[0] == ("shapley", 0, 2000) and seen[-1] == ("shapley", 2000, 2000)
    for e, s in zip(exact, sampled):
        assert e.exact and not s.exact
        # v(all), v(none) and the interaction use the same coalitions: identical
        assert (s.full, s.empty, s.interaction) == (e.full, e.empty, e.interaction)
        assert sum(s.values.values()) == pytest.approx(s.full - s.empty, abs=1e-9)
        scale = max(abs(x) for x in e.values.values())
        for name in e.values:
            # 1000 antithetic pairs of orderings: Monte-Carlo error well under 5% of the range
            assert s.values[name] == pytest.approx(e.values[name], abs=0.05 * scale)


# ---------------------------------------------------------------- whole-set permutation


def test_permutation_is_across_the_whole_set():
    # batch 0 holds only class 0, batch 1 only class 1: a within-batch shuffle changes
    # nothing for a model that reads a's class; the global one does
    label = torch.tensor([0] * 16 + [1] * 16)
    a = nn.functional.one_hot(label, 2).float()
    b = torch.zeros(32, 1)
    batches = [split_batch((a[:16], b[:16], label[:16])), split_batch((a[16:], b[16:], label[16:]))]
    repeats = 6
    s = permutation_scores(OneHotReader(), batches, [Modality("a", input=0)], repeats=repeats)["a"]
    drops = [1.0 - float((label[p] == label).double().mean()) for p in _perms(32, repeats)]
    assert s.accuracy_drop.mean == pytest.approx(sum(drops) / repeats, abs=1e-12)
    assert s.accuracy_drop.mean > 0.3
    (acc, _) = modality_shapley(OneHotReader(), batches, [Modality("a", input=0)])
    assert acc.values["a"] == pytest.approx(drops[0], abs=1e-12)
    # the same for a layer modality (captured in a first pass, then permuted globally)
    s_layer = permutation_scores(OneHotReader(), batches, [Modality("a", layer="enc_a")], repeats=repeats)["a"]
    assert s_layer.accuracy_drop == s.accuracy_drop
    if hasattr(s, "scope"):
        assert s.scope == "global"


class PoolReader(nn.Module):
    """logits = SCALE * mean over the sequence of a (one-hot per position)."""

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return SCALE * a.mean(dim=1)


def test_varying_shapes_fall_back_to_within_batch_permutation():
    # sequence length 2 in batch 0 and 3 in batch 1: no global pool, so each batch is
    # shuffled within itself; both batches hold one class, so nothing changes
    batches = []
    for cls, length in ((0, 2), (1, 3)):
        label = torch.full((8,), cls)
        a = nn.functional.one_hot(label, 2).float()[:, None, :].expand(8, length, 2).contiguous()
        batches.append(split_batch((a, label)))
    s = permutation_scores(PoolReader(), batches, [Modality("a", input=0)], repeats=3)["a"]
    assert s.accuracy_drop.mean == 0.0 and s.loss_increase.mean == 0.0
    if hasattr(s, "scope"):
        assert s.scope == "within_batch"


def test_within_batch_fallback_uses_the_induced_block_permutation():
    g = torch.Generator().manual_seed(2)
    label = torch.randint(0, 2, (20,), generator=g)
    onehot = nn.functional.one_hot(label, 2).float()
    a0 = onehot[:12, None, :].expand(12, 2, 2).contiguous()
    a1 = onehot[12:, None, :].expand(8, 3, 2).contiguous()
    batches = [split_batch((a0, label[:12])), split_batch((a1, label[12:]))]
    s = permutation_scores(PoolReader(), batches, [Modality("a", input=0)], repeats=4, seed=1)["a"]
    drops = []
    for p in _perms(20, 4, seed=1):
        local = torch.cat([torch.argsort(p[:12]), 12 + torch.argsort(p[12:])])
        drops.append(1.0 - float((label[local] == label).double().mean()))
    assert s.accuracy_drop.mean == pytest.approx(sum(drops) / 4, abs=1e-12)


# ---------------------------------------------------------------- sites and batch kinds


def test_layer_and_input_sites_agree_for_row_wise_encoders():
    # permuting encoders.i's output across the set is running it on permuted inputs
    model = Branches((5, 3), seed=4)
    batches = _batches(tuple_data((5, 3), n=48, batch=16))
    by_input = permutation_scores(model, batches, _mods(2), repeats=3)
    by_layer = permutation_scores(model, batches, _mods(2, layer=True), repeats=3)
    for name in ("m0", "m1"):
        assert by_layer[name].accuracy_drop.mean == pytest.approx(by_input[name].accuracy_drop.mean, abs=1e-12)
        assert by_layer[name].loss_increase.mean == pytest.approx(by_input[name].loss_increase.mean, abs=1e-5)
    sv_in = modality_shapley(model, batches, _mods(2))
    sv_layer = modality_shapley(model, batches, _mods(2, layer=True))
    for x, y in zip(sv_in, sv_layer):
        for name in x.values:
            assert y.values[name] == pytest.approx(x.values[name], abs=1e-5)


def test_dict_and_tuple_batches_give_the_same_values():
    dims = (5, 3)
    tuple_batches = _batches(tuple_data(dims, n=48, batch=16))
    dict_batches = _batches(dict_data(dims, n=48, batch=16))
    tmods = _mods(2)
    dmods = [Modality(f"m{i}", input=f"m{i}") for i in range(2)]
    t = permutation_scores(Branches(dims, seed=6), tuple_batches, tmods, repeats=3)
    d = permutation_scores(DictBranches(dims, seed=6), dict_batches, dmods, repeats=3)
    assert t == d
    assert modality_shapley(Branches(dims, seed=6), tuple_batches, tmods) == modality_shapley(
        DictBranches(dims, seed=6), dict_batches, dmods
    )


def test_output_spec_and_progress():
    class DictOut(Branches):
        def forward(self, *inputs):
            return {"scores": super().forward(*inputs)}

    batches = _batches(tuple_data((5, 3), n=32, batch=16))
    seen = []
    scores = permutation_scores(
        DictOut((5, 3)), batches, _mods(2), repeats=2, output=OutputSpec(key="scores"),
        progress=lambda *a: seen.append(a),
    )
    assert scores == permutation_scores(Branches((5, 3)), batches, _mods(2), repeats=2)
    assert seen[0] == ("permutation", 0, 4) and seen[-1] == ("permutation", 4, 4)
    assert all(isinstance(v, PermutationScore) for v in scores.values())


def test_seed_changes_and_fixes_the_draws():
    model = Branches((5, 3), seed=1)
    batches = _batches(tuple_data((5, 3), n=48, batch=16))
    one = permutation_scores(model, batches, _mods(2), repeats=3, seed=0)
    assert one == permutation_scores(model, batches, _mods(2), repeats=3, seed=0)
    assert one != permutation_scores(model, batches, _mods(2), repeats=3, seed=1)


def test_errors_say_what_is_wrong():
    model = Branches((5, 3))
    unlabelled = [split_batch(b[:-1], label_key=None) for b in tuple_data((5, 3), n=16)]
    with pytest.raises(DataLoadError, match="integer class labels"):
        permutation_scores(model, unlabelled, _mods(2))
    batches = _batches(tuple_data((5, 3), n=16))
    with pytest.raises(ConfigError, match="metrics"):
        modality_shapley(model, batches, _mods(2), metrics=("f1",))
    with pytest.raises(ConfigError, match="repeats"):
        permutation_scores(model, batches, _mods(2), repeats=0)
    bad = [split_batch((*b[:-1], b[-1] + 10)) for b in tuple_data((5, 3), n=16)]
    with pytest.raises(DataLoadError, match="class indices"):
        permutation_scores(model, bad, _mods(2))


# ---------------------------------------------------------------- captum cross-check


@pytest.mark.parametrize("metric", ["accuracy", "log_likelihood"])
def test_matches_captum_shapley_values(metric):
    """captum's exact ShapleyValues with one feature group per modality and the permuted
    inputs as the 'absent' baseline, on a forward that returns the metric over the whole
    set, equals modality_shapley (both use the same permutation)."""
    from captum.attr import ShapleyValues

    dims = (5, 3, 4)
    model = Branches(dims, seed=8)
    raw = tuple_data(dims, n=64, batch=16)
    inputs = tuple(torch.cat([b[i] for b in raw]) for i in range(len(dims)))
    label = torch.cat([b[-1] for b in raw])
    (pi,) = _perms(len(label), 1, seed=11)

    def forward(*xs):
        with torch.no_grad():
            logits = model(*xs)
        if metric == "accuracy":
            return (logits.argmax(1) == label).double().mean()
        return torch.log_softmax(logits.double(), 1).gather(1, label[:, None]).mean()

    attr = ShapleyValues(forward).attribute(
        inputs,
        baselines=tuple(x[pi] for x in inputs),
        feature_mask=tuple(torch.full((1, d), i) for i, d in enumerate(dims)),
    )
    expected = {f"m{i}": float(t.flatten()[0]) for i, t in enumerate(attr)}
    (ours,) = modality_shapley(model, _batches(raw), _mods(3), seed=11, metrics=(metric,))
    assert ours.metric == metric
    for name, value in expected.items():
        # captum returns attributions in the inputs' dtype (float32)
        assert ours.values[name] == pytest.approx(value, rel=1e-6, abs=1e-9)
    assert all(name_value != 0.0 for name_value in expected.values())
