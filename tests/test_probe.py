"""Information available vs used, on planted models whose answer is known by construction."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import numpy as np
import pytest
import torch
from torch import nn

from biasscope.runtime._batch import split_batch
from biasscope.errors import DataLoadError
from biasscope.measuring.modality import Modality
from biasscope.measuring.probe import (
    ProbeResult, probe_diagnostics, probe_modalities, uninformative_warnings, wilson_interval,
)
from biasscope.results import Estimate, PermutationScore

torch.set_num_threads(1)
CLASSES = 3


class ReadsA(nn.Module):
    """Predicts from ``a`` alone (exactly the labelling rule); ``b`` is never read."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.enc_a = nn.Linear(weight.shape[1], weight.shape[0])
        self.enc_b = nn.Linear(6, 4)
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            self.enc_a.weight.copy_(weight)
            self.enc_a.bias.zero_()
            self.enc_b.weight.copy_(torch.randn(4, 6, generator=g))
            self.enc_b.bias.zero_()

    def forward(self, a, b):
        self.enc_b(b)  # computed, never used
        return self.enc_a(a)


def _planted(b_informative: bool, *, n: int = 360, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    weight = 2.0 * torch.randn(CLASSES, 4, generator=g)
    a = torch.randn(n, 4, generator=g)
    label = (a @ weight.T).argmax(1)
    b = torch.randn(n, 6, generator=g)
    if b_informative:  # b holds the label too: one-hot in its first 3 features, plus noise
        b[:, :CLASSES] += 2.5 * nn.functional.one_hot(label, CLASSES).float()
    batches = [
        split_batch({"a": a[i : i + 64], "b": b[i : i + 64], "label": label[i : i + 64]})
        for i in range(0, n, 64)
    ]
    return ReadsA(weight).eval(), batches


MODS = [Modality("a", input="a"), Modality("b", layer="enc_b")]


def test_ignored_informative_modality_is_information_left_unused():
    model, batches = _planted(b_informative=True)
    probes = probe_modalities(model, batches, MODS, seed=0)
    a, b = probes
    assert b.modality == "b" and b.site == "layer:enc_b" and b.dims == 4
    assert b.informative and b.accuracy.mean > 0.8 and b.accuracy.ci_low > b.chance + 0.3
    # the model never reads b: its accuracy is exactly unchanged when b is shuffled
    assert b.model_accuracy == 1.0 and b.model_accuracy_permuted.mean == 1.0 and b.used == 0.0
    assert a.informative and a.used > 0.5 and b.available > 0.6
    diags = probe_diagnostics(probes, {"a": "dominant", "b": "ignored"})
    assert [(d.code, d.modality, d.severity) for d in diags] == [("information_unused", "b", "warning")]
    assert "information left unused" in diags[0].message and "`b`" in diags[0].message
    assert uninformative_warnings(probes) == []


def test_ignored_noise_modality_is_ignored_rightly():
    model, batches = _planted(b_informative=False)
    a, b = probe_modalities(model, batches, MODS, seed=0)
    assert not b.informative and b.accuracy.ci_low <= b.chance
    assert abs(b.accuracy.mean - 1 / CLASSES) < 0.12 and b.available < 0.15
    diags = probe_diagnostics([a, b], {"a": "dominant", "b": "unused"})
    assert [(d.code, d.severity) for d in diags] == [("ignoring_is_right", "info")]
    assert "ignoring it is right" in diags[0].message and "probe at chance" in diags[0].message
    warn = uninformative_warnings([a, b])
    assert [(w.code, w.modality) for w in warn] == [("push_uninformative", "b")]


def test_used_modalities_get_no_ignoring_sentence_and_results_are_json_ready():
    model, batches = _planted(b_informative=True)
    probes = probe_modalities(model, batches, MODS, seed=0)
    assert probe_diagnostics(probes, {"a": "ok", "b": "ok"}) == []
    weak = probe_diagnostics(probes, {"a": "ok", "b": "weak"})
    assert [d.code for d in weak] == ["information_underused"]
    data = json.loads(json.dumps([asdict(p) for p in probes]))
    assert data[1]["accuracy"]["mean"] == probes[1].accuracy.mean
    assert probes == probe_modalities(model, batches, MODS, seed=0)  # seeded


def test_permutation_scores_are_reused_and_caps_hold():
    model, batches = _planted(b_informative=True, n=300)
    drop = Estimate(0.25, 0.2, 0.3)
    given = {"a": PermutationScore(drop, drop, drop, repeats=4)}
    a, b = probe_modalities(model, batches, MODS, seed=1, max_examples=120, permutation=given)
    assert a.n_examples == b.n_examples == 120
    assert a.model_accuracy_permuted == Estimate(0.75, 0.7, 0.8)
    assert b.model_accuracy_permuted.mean == 1.0  # computed: b is never read


def test_wide_representations_are_reduced_to_the_dims_cap():
    g = torch.Generator().manual_seed(3)
    n = 200
    label = torch.randint(0, 2, (n,), generator=g)
    image = torch.randn(n, 2, 8, 8, generator=g)
    image[:, 0, :2, :2] += 3.0 * label[:, None, None].float()  # label in one corner
    model = nn.Sequential(nn.Flatten(), nn.Linear(128, 2)).eval()
    batches = [split_batch((image[i : i + 50], label[i : i + 50])) for i in range(0, n, 50)]
    (p,) = probe_modalities(model, batches, [Modality("image", input=0)], max_dims=16)
    assert p.raw_dims == 128 and p.dims == 16 and p.folds == 5
    assert p.informative and p.accuracy.mean > 0.9


def test_unlabelled_data_is_refused_and_single_class_is_trivial():
    model, batches = _planted(b_informative=False, n=64)
    unlabelled = [split_batch({"a": b.kwargs["a"], "b": b.kwargs["b"]}, label_key=None) for b in batches]
    with pytest.raises(DataLoadError, match="probe=False"):
        probe_modalities(model, unlabelled, MODS)
    one = [split_batch({**b.kwargs, "label": torch.zeros(b.size, dtype=torch.long)}) for b in batches]
    for p in probe_modalities(model, one, MODS, permutation_repeats=2):
        assert p.folds == 0 and p.chance == 1.0 and not p.informative and p.available == 0.0


@pytest.mark.parametrize("k,n", [(0, 10), (7, 10), (10, 10), (512, 1000)])
def test_wilson_interval_closed_form(k, n):
    est = wilson_interval(k, n)
    p, z = k / n, 1.959964
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert est.mean == p
    assert est.ci_low == pytest.approx(max(0.0, centre - half))
    assert est.ci_high == pytest.approx(min(1.0, centre + half))
    assert est.ci_low <= p <= est.ci_high
    assert math.isnan(wilson_interval(0, 0).mean)


def test_wilson_interval_covers_at_95_percent():
    rng = np.random.default_rng(0)
    p, n = 0.3, 80
    hits = [
        (lambda e: e.ci_low <= p <= e.ci_high)(wilson_interval(int(k), n))
        for k in rng.binomial(n, p, size=2000)
    ]
    assert 0.93 <= np.mean(hits) <= 0.975


def test_probe_option_defaults_on_and_validates():
    from biasscope.errors import ConfigError
    from biasscope.runtime.options import AuditOptions

    assert AuditOptions().probe is True and AuditOptions(probe=False).probe is False
    with pytest.raises(ConfigError, match="probe must be True or False"):
        AuditOptions(probe="yes")


def test_classes_with_one_example_are_left_out_of_the_probe():
    """Stratified folds cannot hold a class seen once: such classes are dropped, and with
    fewer than two classes of two examples there is no probe at all (no crash)."""
    from biasscope.runtime._batch import split_batch
    from biasscope.measuring.modality import Modality
    from biasscope.measuring.probe import probe_modalities

    model = torch.nn.Linear(3, 4)
    x = torch.randn(9, 3, generator=torch.Generator().manual_seed(0))
    label = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2])
    batch = split_batch((x, label), label_key="label")
    (p,) = probe_modalities(model, [batch], [Modality("x", input=0)], device="cpu")
    assert p.n_examples == 8 and p.chance == 0.5
    tiny = split_batch((x[:2], torch.tensor([2, 3])), label_key="label")
    assert probe_modalities(model, [tiny], [Modality("x", input=0)], device="cpu") == []
