"""Downstream-only recomputation (biasscope.measuring._downstream): a perturbed pass that reuses the
clean pass's values for what does not depend on the site gives the full pass's f and q, on
every zoo model and on tiny Hugging Face models, and falls back to full passes (with the
reason) where that cannot be established."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import biasscope as bs
from biasscope.runtime._batch import OutputSpec
from biasscope.measuring._downstream import DownstreamPlan
from biasscope.measuring._perturbation import (
    CleanPass, ExampleNoise, perturbation_samples, representation_std,
)
from biasscope.auditing.audit import collect_batches
from tests import _tiny_hf as hf
from tests.zoo import cases

K = 4


def _measure(model, batch, mods, output, plan):
    sigmas = representation_std(model, [batch], mods, output)
    clean = CleanPass(model, batch, mods, output, expand=False, downstream=plan)
    out = {}
    for j, m in enumerate(mods):
        keyed = ExampleNoise(0, {m: j})
        f, q = perturbation_samples(model, batch, {m: sigmas[m.name]}, samples=K, keyed=keyed, output=output,
                                    clean=clean)
        out[m.name] = (f, q[m.name])
    return out


def assert_same_as_full(model, data, mods, output=OutputSpec(), *, label_key="label"):
    """f and q of every modality with replaying equal those of full passes; returns the plan."""
    batch = collect_batches(data, label_key=label_key)[0]
    plan = DownstreamPlan(model, mods, output)
    full = _measure(model, batch, mods, output, None)
    fast = _measure(model, batch, mods, output, plan)
    for name, (f, q) in full.items():
        torch.testing.assert_close(fast[name][0], f, rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(fast[name][1], q, rtol=1e-4, atol=1e-9)
    return plan


def _zoo():
    return [c for c in cases() if c.error is None]


@pytest.mark.parametrize("case", _zoo(), ids=lambda c: c.name)
def test_every_zoo_model_gives_the_full_passes_numbers(case):
    model, data, mods, extra = case.build()
    label_key = extra.get("label_key", "label")
    plan = assert_same_as_full(model, data, mods, extra.get("output", OutputSpec()), label_key=label_key)
    assert plan.reason == ""
    assert plan.skipped > 0  # each modality's pass takes the other branches from the clean pass


def test_hf_dual_encoder_at_its_encoders_skips_the_other_encoder():
    with hf.one_thread():
        model = hf.dual_encoder("clip")
        mods = [bs.Modality("text", layer="backbone.text_model", element="pooler_output"),
                bs.Modality("image", layer="backbone.vision_model", element="pooler_output")]
        plan = assert_same_as_full(model, [hf.dual_batch(6)], mods)
    assert plan.reason == "" and plan.skipped >= 2


def test_vilt_at_its_embeddings_runs_the_whole_encoder():
    with hf.one_thread():
        model = hf.vilt()
        mods = [bs.Modality("text", layer="vilt.embeddings.text_embeddings"),
                bs.Modality("image", layer="vilt.embeddings.patch_embeddings")]
        plan = assert_same_as_full(model, [hf.vilt_batch(6)], mods)
    assert plan.reason == ""


class Shared(nn.Module):
    """One encoder called on both inputs (a module called twice), an in-place ReLU on the
    first branch's output and a tuple-returning layer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Linear(4, 6)
        self.a, self.b = nn.Linear(6, 6), nn.GRU(6, 6, batch_first=True)
        self.head = nn.Linear(12, 3)

    def forward(self, x, y):
        u = torch.relu_(self.a(self.enc(x)))
        v, _ = self.b(self.enc(y)[:, None])
        return self.head(torch.cat([u, v[:, 0]], 1))


def test_shared_modules_in_place_ops_and_tuple_outputs():
    data = [(torch.randn(8, 4), torch.randn(8, 4), torch.randint(0, 3, (8,)))]
    mods = [bs.Modality("x", layer="a"), bs.Modality("y", input=1)]
    plan = assert_same_as_full(Shared().eval(), data, mods)
    assert plan.reason == "" and plan.skipped > 0


class Noisy(nn.Module):
    def __init__(self, norm: bool) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8) if norm else nn.Dropout(0.5))
        self.head = nn.Linear(12, 2)

    def forward(self, x, y):
        return self.head(torch.cat([self.enc(x), y], 1))


@pytest.mark.parametrize("norm, reason", [(True, "buffers"), (False, "full pass")])
def test_randomness_and_batch_statistics_fall_back_to_full_passes(norm, reason):
    model = Noisy(norm).train()
    batch = collect_batches([(torch.randn(8, 4), torch.randn(8, 4), torch.randint(0, 2, (8,)))])[0]
    plan = DownstreamPlan(model, [bs.Modality("y", input=1)], OutputSpec())
    plan.prepare(batch)
    assert not plan.active and reason in plan.reason


class Jitter(Noisy):
    """Adds fresh noise in every forward pass, even in eval mode."""

    def forward(self, x, y):
        return super().forward(x + 0.1 * torch.randn_like(x), y)


@pytest.mark.parametrize("cls, full", [(Noisy, False), (Jitter, True)])
def test_the_audit_says_when_it_runs_full_passes(cls, full):
    model = cls(False).train()  # the audit runs in eval mode: no dropout
    data = [(torch.randn(16, 4), torch.randn(16, 4), torch.randint(0, 2, (16,)))]
    result = bs.audit(model, data, [bs.Modality("x", layer="enc"), bs.Modality("y", input=1)], samples=4,
                      permutation_repeats=0, shapley=False, probe=False, explain=0, device="cpu")
    assert ("full_passes" in {d.code for d in result.diagnostics}) == full


def _off(monkeypatch, module):
    monkeypatch.setattr(module, "DownstreamPlan", lambda *a, **k: DownstreamPlan(*a, **{**k, "enabled": False}))


def test_permutation_and_shapley_passes_give_the_full_passes_numbers(monkeypatch):
    from biasscope.measuring import perception

    model, data, mods, _ = next(c for c in cases() if c.name == "three_modalities").build()
    batches = collect_batches(data)
    run = lambda: (perception.permutation_scores(model, batches, mods, repeats=2),  # noqa: E731
                   perception.modality_shapley(model, batches, mods))
    fast = run()
    _off(monkeypatch, perception)
    full = run()
    assert fast == full


def test_the_regularizer_term_and_its_gradient_match_full_passes():
    from biasscope.fixing.regularizer import FunctionalEntropyRegularizer

    model, data, mods, _ = next(c for c in cases() if c.name == "layer_sites").build()
    results = []
    for enabled in (True, False):
        reg = FunctionalEntropyRegularizer(model, mods, samples=4, seed=0, term_examples=None)
        reg._downstream = DownstreamPlan(model, mods, OutputSpec(), enabled=enabled)
        model.zero_grad()
        term, _ = reg(data[0])
        term.backward()
        results.append((term.detach(), [p.grad.clone() for p in model.parameters()]))
        assert enabled is False or reg._downstream.skipped > 0
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-9)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
