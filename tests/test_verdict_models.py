"""The verdict on planted models whose answer is known by construction: effect size, not
significance; entropy from forward passes (hard thresholds, models that block gradients);
outputs of other kinds; a constant predictor; a gate; duplicate modalities."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import biasscope as bs

torch.set_num_threads(1)

FAST = dict(samples=4, probe=False, explain=0, device="cpu", tensorization=False)
MODS = [bs.Modality("a", input=0), bs.Modality("b", input=1)]


def _inputs(n=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randn(n, 4, generator=g)


def _weights(out=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, out, generator=g) * 2, torch.randn(4, out, generator=g)


class Reads(nn.Module):
    """logits = a Wa + g(b) Wb, with ``g`` how the model reads ``b`` (``eps`` scales it)."""

    def __init__(self, read=lambda b: b, eps=1.0, out=3):
        super().__init__()
        wa, wb = _weights(out)
        self.wa, self.wb = nn.Parameter(wa), nn.Parameter(wb)
        self.read, self.eps = read, eps

    def forward(self, a, b):
        return a @ self.wa + self.eps * (self.read(b) @ self.wb)


def _self_labelled(model, n=64, seed=1):
    """Two batches labelled by the model's own predictions (a perfectly accurate model)."""
    a, b = _inputs(n, seed)
    with torch.no_grad():
        y = model(a, b).argmax(1)
    h = n // 2
    return [(a[:h], b[:h], y[:h]), (a[h:], b[h:], y[h:])]


def _codes(result, modality=None):
    return {d.code for d in result.diagnostics if modality is None or d.modality in (None, modality)}


# ------------------------------------------------------------- effect size, not significance

def test_a_modality_that_changes_no_prediction_is_not_used_at_every_repeat_count():
    # b carries the label (labels of the full-strength model) but is read at 1e-6 of it
    model = Reads(eps=1e-6)
    data = _self_labelled(Reads(eps=0.3))
    for repeats in range(2, 21):
        r = bs.audit(model, data, MODS, permutation_repeats=repeats, shapley=False, **FAST)
        p = r["b"].permutation
        assert p.flip_rate.mean == 0.0 and p.accuracy_drop.mean == 0.0
        assert 0 < p.loss_increase.mean < 1e-6  # ~1e-7 nats: significant at 20 shuffles, not sizeable
        assert r["b"].verdict in ("ignored", "unused") and r.failing("ignored") == ["b"], repeats
        assert r["a"].verdict == "dominant"
    assert p.loss_increase.ci_low > 0


FAINT_FACTORY = """
import torch
from torch import nn

class Faint(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.wa = nn.Parameter(torch.randn(4, 3, generator=g) * 2)
        self.wb = nn.Parameter(torch.randn(4, 3, generator=g))

    def forward(self, a, b):
        return a @ self.wa + 1e-6 * (b @ self.wb)
"""


@pytest.mark.parametrize("repeats", ["2", "20"])
def test_fail_on_ignored_exits_1_for_a_modality_that_changes_no_prediction(tmp_path, monkeypatch, repeats):
    from typer.testing import CliRunner

    from biasscope.cli.main import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "faint.py").write_text(FAINT_FACTORY)
    import importlib.util

    spec = importlib.util.spec_from_file_location("faint_models", tmp_path / "faint.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.Faint()
    torch.save(model.state_dict(), tmp_path / "faint.pt")
    a, b = _inputs()
    with torch.no_grad():
        torch.save({"a": a, "b": b, "label": model(a, b).argmax(1)}, tmp_path / "val.pt")
    res = CliRunner().invoke(app, [
        "audit", "faint.pt", "--factory", "faint.py:Faint", "--data", "val.pt", "-m", "a=input:a",
        "-m", "b=input:b", "--samples", "4", "--no-probe", "--explain", "0", "--no-shapley", "--device", "cpu",
        "--permutation-repeats", repeats, "--out", "r", "--fail-on", "ignored", "--quiet",
    ])
    assert res.exit_code == 1, res.output
    fail = " ".join(res.output[res.output.index("FAIL"):].split())
    assert fail.startswith("FAIL --fail-on ignored") and "b" in fail and "a" not in fail.split(":", 1)[1].split()[:1]


def test_prediction_flip_rate_and_confidence_change_per_modality():
    model = Reads()
    r = bs.audit(model, _self_labelled(model), MODS, permutation_repeats=5, shapley=False, **FAST)
    for m in r.modalities:
        p = m.permutation
        # labels are the clean predictions: every flipped prediction is a lost one
        assert p.flip_rate.mean == pytest.approx(p.accuracy_drop.mean)
        assert p.flip_rate.ci_low <= p.flip_rate.mean <= p.flip_rate.ci_high
        assert 0 < p.confidence_change.mean < 1
    assert r["a"].permutation.flip_rate.mean > r["b"].permutation.flip_rate.mean > 0.05
    loaded = bs.AuditResult.from_dict(r.to_dict())
    assert loaded["b"].permutation.flip_rate == r["b"].permutation.flip_rate
    assert loaded["b"].accuracy_share == pytest.approx(r["b"].accuracy_share)


# ------------------------------------------------------------- entropy from forward passes

def _bucketize(b):
    return torch.bucketize(b, torch.tensor([-0.5, 0.0, 0.5])).float()


_TABLE = 3 * torch.randn(4, 4, generator=torch.Generator().manual_seed(3))
HARD = {
    "sign": torch.sign,
    "round": lambda b: torch.round(2 * b),
    "bucketize": _bucketize,
    "argmax": lambda b: nn.functional.one_hot(b.argmax(1), 4).float(),
    "lookup": lambda b: _TABLE[torch.bucketize(b[:, 0].contiguous(), torch.tensor([-0.5, 0.0, 0.5]))],
}


@pytest.mark.parametrize("read", list(HARD))
def test_a_modality_read_through_a_hard_threshold_gets_its_entropy_and_no_bounds(read):
    model = Reads(HARD[read])
    r = bs.audit(model, _self_labelled(model), MODS, permutation_repeats=3, shapley=False, **FAST)
    b = r["b"]
    assert b.functional_entropy.mean > 0 and b.variance.mean > 0 and b.share > 0.01
    assert math.isnan(b.fisher_bound.mean) and math.isnan(b.poincare_bound.mean)
    assert math.isfinite(r["a"].fisher_bound.mean)  # a is read smoothly: its bounds stand
    assert "gradient_blind" in _codes(r, "b") and "site_unreachable" not in _codes(r)
    assert b.permutation.flip_rate.mean > 0.05 and b.verdict not in ("ignored", "unused")
    data = r.to_dict()["modalities"][1]
    assert data["fisher_bound"]["mean"] is None and data["unavailable"] == ["fisher_bound", "poincare_bound"]


class Blocked(nn.Module):
    """A model whose forward blocks gradients in one of four ways."""

    def __init__(self, how):
        super().__init__()
        wa, wb = _weights()
        self.wa, self.wb, self.how = nn.Parameter(wa), nn.Parameter(wb), how

    def forward(self, a, b):
        if self.how == "no_grad":
            with torch.no_grad():
                return a @ self.wa + b @ self.wb
        if self.how == "inference_mode":
            with torch.inference_mode():
                return a @ self.wa + b @ self.wb
        if self.how == "detach":
            return (a @ self.wa + b @ self.wb).detach()
        out = a.numpy() @ self.wa.detach().numpy() + b.numpy() @ self.wb.detach().numpy()  # numpy inside
        return torch.from_numpy(out)


@pytest.mark.parametrize("how", ["no_grad", "inference_mode", "detach", "numpy"])
def test_a_model_that_blocks_gradients_gets_every_forward_measure(how):
    model = Blocked(how)
    r = bs.audit(model, _self_labelled(model), MODS, permutation_repeats=3, samples=4, device="cpu",
                 probe=False, explain=3)
    for m in r.modalities:
        assert m.functional_entropy.mean > 0 and m.variance.mean > 0 and m.permutation.flip_rate.mean > 0
        assert math.isnan(m.fisher_bound.mean) and math.isnan(m.poincare_bound.mean)
        assert m.verdict not in ("ignored", "unused")
    assert r.shapley and all(v > 0 for v in r.shapley[0].values.values())
    assert "gradients_blocked" in _codes(r) and r.attributions == []
    assert "every modality" not in r.sentence


def test_nan_gradients_are_named_and_the_bound_is_unavailable():
    # sqrt's unselected branch is nan for b <= 0: its gradient (0 x inf) is nan, f is finite
    model = Reads(lambda b: torch.where(b > 0, b.clamp_min(0).sqrt() + torch.where(b > 0, 0.0, b).sqrt(), b))
    r = bs.audit(model, _self_labelled(model), MODS, permutation_repeats=3, shapley=False, **FAST)
    assert math.isfinite(r["b"].functional_entropy.mean) and r["b"].functional_entropy.mean > 0
    assert math.isnan(r["b"].fisher_bound.mean) and math.isnan(r["b"].poincare_bound.mean)
    nonfinite = [d for d in r.diagnostics if d.code == "gradient_nonfinite"]
    assert [d.modality for d in nonfinite] == ["b"] and "nan or inf" in nonfinite[0].message
    assert "bound_exceeded" not in _codes(r)


# ------------------------------------------------------------- outputs of other kinds

@pytest.mark.parametrize("kind, head", [("probs", lambda z: z.softmax(1)), ("log_probs", lambda z: z.log_softmax(1))])
def test_probabilities_and_log_probabilities_measure_as_their_logits(kind, head):
    logits = Reads()
    wrapped = Reads()
    wrapped.forward = lambda a, b: head(Reads.forward(wrapped, a, b))  # type: ignore[method-assign]
    data = _self_labelled(logits)
    ref = bs.audit(logits, data, MODS, permutation_repeats=3, **FAST)
    got = bs.audit(wrapped, data, MODS, permutation_repeats=3, **FAST)
    assert got.settings["output_kind"] == kind and ref.settings["output_kind"] == "logits"
    for m in ("a", "b"):
        assert got[m].functional_entropy.mean == pytest.approx(ref[m].functional_entropy.mean, rel=1e-6)
        assert got[m].permutation.loss_increase.mean == pytest.approx(ref[m].permutation.loss_increase.mean, rel=1e-6)
        assert got[m].verdict == ref[m].verdict
    assert ("output_kind" in _codes(got)) and "output_kind" not in _codes(ref)


def test_one_output_column_is_a_bernoulli_logit():
    one = Reads(out=1)
    two = Reads(out=1)
    two.forward = lambda a, b: torch.cat([torch.zeros(len(a), 1), Reads.forward(one, a, b)], 1)  # type: ignore
    a, b = _inputs()
    data = [(a, b, (Reads.forward(one, a, b)[:, 0] > 0).long().detach())]
    r1, r2 = bs.audit(one, data, MODS, permutation_repeats=3, **FAST), bs.audit(two, data, MODS, permutation_repeats=3, **FAST)
    assert r1.settings["output_kind"] == "binary" and r2.settings["output_kind"] == "logits"
    for m in ("a", "b"):
        assert r1[m].functional_entropy.mean == pytest.approx(r2[m].functional_entropy.mean, rel=1e-9)


def test_multilabel_heads_sum_per_label_bernoulli_kls():
    from biasscope.measuring.estimators import bernoulli_divergence, kl_divergence

    c, p = torch.randn(6, 5), torch.randn(6, 5)
    per_label = sum(kl_divergence(torch.stack([torch.zeros(6), c[:, j]], 1), torch.stack([torch.zeros(6), p[:, j]], 1))
                    for j in range(5))
    assert torch.allclose(bernoulli_divergence(c, p), per_label)
    model = Reads(out=5)
    a, b = _inputs()
    with torch.no_grad():
        data = [(a, b, (model(a, b) > 0).long())]  # multi-hot labels
    r = bs.audit(model, data, MODS, permutation_repeats=3, **FAST)
    assert r.settings["output_kind"] == "multilabel" and r.settings["divergence"] == "bernoulli"
    assert r.accuracy is None and all(m.permutation is None for m in r.modalities)
    assert r["a"].functional_entropy.mean > r["b"].functional_entropy.mean > 0
    assert "output_kind" in _codes(r)


def test_regression_outputs_measure_half_the_squared_change():
    model = Reads(out=1)
    a, b = _inputs(256)
    with torch.no_grad():
        data = [(a, b, model(a, b)[:, 0] + 0.1)]  # real-valued targets
    r = bs.audit(model, data, MODS, permutation_repeats=3, **{**FAST, "samples": 32})
    assert r.settings["output_kind"] == "regression" and r.accuracy is None
    # f = 1/2 (w.z)^2 with w.z ~ N(0, s^2), s^2 = sum_j w_j^2 sigma_j^2: Var f = s^4 / 2
    for name, w, x in (("a", model.wa, a), ("b", model.wb, b)):
        s2 = float((w[:, 0].detach() ** 2 * x.var(0, unbiased=False)).sum())
        assert r[name].variance.mean == pytest.approx(s2**2 / 2, rel=0.3)
    bs.audit(model, [(a, b)], MODS, label_key=None, output_kind="regression", **FAST)  # no labels: given


# ------------------------------------------------------------- chance, gates, duplicates

def test_a_constant_predictor_does_not_make_reliance_measurable():
    class Constant(nn.Module):  # always class 0; b moves the margin, never the decision
        def forward(self, a, b):
            return torch.stack([4 + 0.5 * b[:, 0], torch.zeros(len(b))], 1)

    a, b = _inputs(200)
    labels = (torch.arange(200) % 20 == 0).long()  # 95 / 5
    r = bs.audit(Constant(), [(a, b, labels)], MODS, permutation_repeats=5, **FAST)
    assert r.accuracy == pytest.approx(0.95) and r.chance_accuracy == pytest.approx(0.95)
    assert r.reliance_measurable is False and "Reliance not measurable" in r.sentence
    assert "leans on" not in r.sentence and "its output moves most with `b`" in r.sentence


def test_a_gate_is_unused_and_the_sentence_says_what_moves():
    class Gate(Reads):  # b only rescales a's logits (by 0.5..3): no prediction can change
        def forward(self, a, b):
            return (a @ self.wa) * (0.5 + 2.5 * torch.sigmoid(2 * b @ self.wb[:, :1]))

    model = Gate()
    r = bs.audit(model, _self_labelled(model), MODS, permutation_repeats=10, **FAST)
    p = r["b"].permutation
    assert p.flip_rate.mean == 0.0 and p.accuracy_drop.mean == 0.0 and p.confidence_change.mean > 0.01
    assert r["b"].verdict == "unused" and r["b"].functional_entropy.ci_low > 0
    assert r["b"].share * 2 < 0.1  # its sensitivity share alone would say "ignored": the shuffle says more
    assert r.sentence.startswith(
        "The model does not rely on `b` for its predictions (shuffling `b` changes 0.0% of the predictions and "
        f"moves the top-class probability by {p.confidence_change.mean:.2g} on average: the confidence moves, "
        "not the decisions); it leans on `a`.")


def test_duplicate_modalities_are_named():
    model = Reads()
    a, _ = _inputs()
    with torch.no_grad():
        data = [(a, a.clone(), model(a, a).argmax(1))]
    r = bs.audit(model, data, MODS, permutation_repeats=3, **FAST)
    dup = [d for d in r.diagnostics if d.code == "duplicate_modalities"]
    assert len(dup) == 1 and "`a` and `b` carry the same data" in dup[0].message
    assert "duplicate_modalities" not in _codes(bs.audit(model, _self_labelled(model), MODS, permutation_repeats=3, **FAST))


def test_accuracy_shares_sit_beside_loss_shares():
    model = Reads()
    r = bs.audit(model, _self_labelled(model), MODS, permutation_repeats=5, **FAST)
    drops = np.array([r[m].permutation.accuracy_drop.mean for m in ("a", "b")])
    assert [r[m].accuracy_share for m in ("a", "b")] == pytest.approx(list(drops / drops.sum()))
    assert r["a"].reliance_share != pytest.approx(r["a"].accuracy_share)


def test_unavailable_bounds_are_said_in_every_view():
    from rich.console import Console

    from biasscope.render import audit_table, render_html

    model = Reads(torch.sign)
    r = bs.audit(model, _self_labelled(model), MODS, permutation_repeats=3, shapley=False, **FAST)
    html = render_html(r, plotlyjs="cdn")
    assert html.count(">unavailable</td>") == 2  # b's Fisher and Poincaré cells
    console = Console(record=True, width=160, color_system=None)
    console.print(audit_table(r))
    row = next(line for line in console.export_text().splitlines() if line.split()[:1] == ["b"])
    assert row.count("unavailable") == 2
    loaded = bs.AuditResult.from_dict(r.to_dict())
    assert math.isnan(loaded["b"].fisher_bound.mean) and math.isfinite(loaded["a"].fisher_bound.mean)
    from biasscope.results.json_schema import validate

    validate(json.loads(r.to_json()), "audit")  # null bounds, flip rates and shares fit the schema


def test_labels_that_fit_no_output_kind_are_refused_naming_the_flag():
    model = Reads()  # three class scores
    a, b = _inputs()
    with pytest.raises(bs.DataLoadError, match="--output-kind"):
        bs.audit(model, [(a, b, torch.rand(len(a)))], MODS, **FAST)  # real-valued, one column


@pytest.mark.parametrize("spelling", ["none", "None", "NONE"])
def test_label_key_none_audits_without_labels_even_with_a_label_in_the_file(tmp_path, monkeypatch, spelling):
    from typer.testing import CliRunner

    from biasscope.cli.main import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "faint.py").write_text(FAINT_FACTORY)
    torch.save(Reads().state_dict(), tmp_path / "m.pt")
    a, b = _inputs()
    torch.save({"a": a, "b": b, "label": torch.randn(len(a))}, tmp_path / "val.pt")  # a regression target
    res = CliRunner().invoke(app, [
        "audit", "m.pt", "--factory", "faint.py:Faint", "--data", "val.pt", "-m", "a=input:a", "-m", "b=input:b",
        "--samples", "4", "--no-probe", "--explain", "0", "--device", "cpu", "--out", "r", "--label-key", spelling,
    ])
    assert res.exit_code == 0, res.output
    result = bs.AuditResult.load(tmp_path / "r" / "audit.json")
    assert result.accuracy is None and result.class_source == "prediction"


def test_redundant_modalities_when_the_joint_shuffle_costs_more_than_the_single_ones():
    from biasscope.auditing.diagnostics import audit_diagnostics
    from biasscope.results import Estimate, ModalityResult, PermutationScore, ShapleyValues
    from biasscope.auditing.verdict import Reliance

    zero = Estimate(0.0, 0.0, 0.0)

    def mod(name):
        return ModalityResult(name, f"input:{name}", zero, zero, zero, zero, share=0.5, per_class={},
                              per_example={}, permutation=PermutationScore(zero, zero, zero, repeats=10))

    shapley = [ShapleyValues("accuracy", {"a": 0.25, "b": 0.25}, full=1.0, empty=0.5, interaction=-0.5, exact=True)]
    found = [d for d in audit_diagnostics([mod("a"), mod("b")], reliance=Reliance(True), labelled=True, shapley=shapley)
             if d.code == "redundant_modalities"]
    assert len(found) == 1 and "costs 50.0% accuracy" in found[0].message and "`a` and `b`" in found[0].message
    from biasscope.auditing.verdict import modality_verdicts

    verdicts = modality_verdicts([mod("a"), mod("b")], reliance=Reliance(True), shapley=shapley)
    assert "ignored" not in verdicts.values()  # each costs nothing alone, yet the pair is used
