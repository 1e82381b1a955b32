"""Closed-form values and inequalities of the pure estimators."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from biasscope.measuring.estimators import (
    fisher_bound, functional_entropy, kl_divergence, official_divergence, plugin_entropy,
    poincare_bound, quadratic_form, variance,
)

EULER_GAMMA = 0.5772156649015329


def test_entropy_of_constant_and_zero_is_zero():
    assert functional_entropy(torch.full((7, 3), 2.5, dtype=torch.float64)).abs().max() == 0
    assert functional_entropy(torch.zeros(7, 3)).abs().max() == 0
    assert fisher_bound(torch.zeros(7, 3), torch.zeros(7, 3)).abs().max() == 0


def test_entropy_of_two_point_function():
    # f in {0, 1} with equal weight: E[f log f] = 0, E[f] = 1/2  ->  Ent = log(2) / 2
    f = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    assert plugin_entropy(f).item() == pytest.approx(math.log(2) / 2)
    # K = 2: each delete-one entropy is 0, so the jackknife is 2 x the plug-in value
    assert functional_entropy(f).item() == pytest.approx(math.log(2))
    assert variance(f).item() == pytest.approx(0.5)  # K/(K-1) x the population 0.25


def _gaussian(n, sigma, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, generator=g, dtype=torch.float64) * sigma


def test_square_function_closed_form():
    # f(z) = z^2, z ~ N(0, s^2): Ent = s^2 (2 - gamma - log 2), Fisher = 1/2 E[s^2 (2z)^2 / z^2] = 2 s^2,
    # Var = 2 s^4, Poincare = E[s^2 (2z)^2] = 4 s^4
    s = 1.5
    z = _gaussian(400_000, s)
    f, q = z.square(), s**2 * (2 * z).square()
    assert functional_entropy(f).item() == pytest.approx(s**2 * (2 - EULER_GAMMA - math.log(2)), rel=0.02)
    assert fisher_bound(f, q[:, 0:1]).item() == pytest.approx(2 * s**2, rel=1e-9)
    assert variance(f).item() == pytest.approx(2 * s**4, rel=0.03)
    assert poincare_bound(q).item() == pytest.approx(4 * s**4, rel=0.02)


def test_exponential_saturates_log_sobolev():
    # f = exp(a z) is extremal for the Gaussian log-Sobolev inequality: Ent = Fisher bound
    # = (a^2 s^2 / 2) exp(a^2 s^2 / 2)
    a, s = 0.8, 0.7
    z = _gaussian(1_000_000, s, seed=1)
    f = torch.exp(a * z)
    q = s**2 * (a * f).square()
    expected = a**2 * s**2 / 2 * math.exp(a**2 * s**2 / 2)
    assert functional_entropy(f).item() == pytest.approx(expected, rel=0.02)
    assert fisher_bound(f, q).item() == pytest.approx(expected, rel=0.02)


def test_quadratic_form_weights_each_feature():
    grad = torch.tensor([[[1.0, 2.0], [3.0, 0.0]]])  # (N=1, 2, 2)
    sigma2 = torch.tensor([[1.0, 0.5], [2.0, 4.0]])
    assert quadratic_form(grad, sigma2).tolist() == [1.0 + 2.0 + 18.0]
    # a per-channel (last-dim) sigma broadcasts over the other feature dims
    assert quadratic_form(grad, torch.tensor([1.0, 0.5])).tolist() == [1.0 + 2.0 + 9.0]


def test_kl_is_zero_on_equal_logits_and_positive_otherwise():
    logits = torch.randn(6, 5)
    assert kl_divergence(logits, logits.clone()).abs().max() == 0
    other = logits + torch.randn(6, 5)
    p, q = logits.softmax(-1), other.softmax(-1)
    expected = (p * (p.log() - q.log())).sum(-1)
    assert torch.allclose(kl_divergence(logits, other), expected.double(), atol=1e-6)
    assert (kl_divergence(logits, other) > 0).all()


def test_official_divergence_is_bce_against_clean_probabilities():
    logits = torch.randn(4, 3)
    pert = logits + 0.5
    p = logits.softmax(-1)
    s = torch.sigmoid(pert)
    expected = -(p * s.log() + (1 - p) * (1 - s).log()).mean(-1)
    assert torch.allclose(official_divergence(logits, pert), expected.double(), atol=1e-6)
    # unlike KL it is not zero at z = 0
    assert (official_divergence(logits, logits) > 0).all()


def test_bounds_hold_for_random_smooth_functions():
    # random f(z) = softplus(w . z + b)^2 + c on R^3 with per-feature sigma; compare means
    rng = np.random.default_rng(0)
    for trial in range(20):
        sigma = torch.tensor(rng.uniform(0.2, 2.0, 3))
        w = torch.tensor(rng.normal(size=3))
        b, c = float(rng.normal()), float(rng.uniform(0, 0.5))
        z = torch.randn(20_000, 3, generator=torch.Generator().manual_seed(trial), dtype=torch.float64) * sigma
        z.requires_grad_(True)
        f = torch.nn.functional.softplus(z @ w + b).square() + c
        (g,) = torch.autograd.grad(f.sum(), z)
        q = quadratic_form(g, sigma.square())
        f, q = f.detach()[:, None], q[:, None]
        ent, fis = functional_entropy(f).item(), fisher_bound(f, q).item()
        var, poi = variance(f).item(), poincare_bound(q).item()
        # Monte-Carlo error of the right-hand side: 4 standard errors
        fis_err = 4 * (0.5 * q / f).std().item() / math.sqrt(f.shape[0])
        poi_err = 4 * q.std().item() / math.sqrt(f.shape[0])
        assert ent <= fis + fis_err
        assert var <= poi + poi_err


def test_constant_f_is_exactly_zero_in_every_estimator():
    # the official divergence's constant offset (or any value whose mean rounds) gives exact 0
    for value in (0.1, 0.6931471805599453, 1e-7, 3.0):
        f = torch.full((8, 5), value, dtype=torch.float64)
        assert functional_entropy(f).abs().max().item() == 0.0
        assert plugin_entropy(f).abs().max().item() == 0.0
        assert variance(f).abs().max().item() == 0.0


def test_entropy_keeps_its_digits_at_small_divergences():
    # f = c (1 + eps z): Ent ~ c eps^2 Var(z) / 2, far below float rounding of c log c
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200_000, 1, generator=g, dtype=torch.float64)
    c, eps = 0.7, 1e-6
    f = c * (1 + eps * z)
    assert plugin_entropy(f).item() == pytest.approx(c * eps**2 / 2, rel=0.02)


def test_divergences_are_float64_from_the_logits():
    logits = torch.randn(4, 3)
    pert = logits + 1e-4 * torch.randn(4, 3)
    kl = kl_divergence(logits, pert)
    assert kl.dtype == torch.float64
    p = logits.double().log_softmax(-1)
    expected = (p.exp() * (p - pert.double().log_softmax(-1))).sum(-1)
    assert torch.allclose(kl, expected, rtol=1e-9, atol=1e-18)
    assert official_divergence(logits, pert).dtype == torch.float64


def _coverage(k: int, *, reps: int = 200, n: int = 64, seed: int = 0) -> tuple[float, float]:
    """Share of ``reps`` simulated audits whose reported 95% interval (mean over ``n``
    examples of the per-example estimate from ``k`` samples) covers the true mean, on
    f = exp(a.z), z ~ N(0, I): Ent = |a|^2/2 e^{|a|^2/2}, Var = e^{2|a|^2} - e^{|a|^2}."""
    from biasscope.measuring._stats import mean_interval

    norm = torch.linspace(0.2, 0.75, n, dtype=torch.float64)  # |a| per example
    ent_true = float((norm**2 / 2 * torch.exp(norm**2 / 2)).mean())
    var_true = float((torch.exp(2 * norm**2) - torch.exp(norm**2)).mean())
    g = torch.Generator().manual_seed(seed)
    f = torch.exp(norm * torch.randn(k, reps, n, generator=g, dtype=torch.float64))  # a.z ~ N(0, |a|^2)
    ent, var = functional_entropy(f).numpy(), variance(f).numpy()
    covered = np.zeros(2)
    for r in range(reps):
        for i, (values, truth) in enumerate(((ent[r], ent_true), (var[r], var_true))):
            est = mean_interval(values, method="bootstrap", seed=r)
            covered[i] += est.ci_low <= truth <= est.ci_high
    return covered[0] / reps, covered[1] / reps


@pytest.mark.parametrize("k", [8, 32])
def test_reported_interval_covers_the_closed_form_truth(k):
    ent_cov, var_cov = _coverage(k)
    assert ent_cov >= 0.90 and var_cov >= 0.90


def test_plugin_entropy_alone_would_not_cover():
    # the check above can fail: the plug-in estimator's bias at K = 8 sinks its coverage
    from biasscope.measuring._stats import mean_interval

    norm = torch.linspace(0.2, 0.75, 256, dtype=torch.float64)
    truth = float((norm**2 / 2 * torch.exp(norm**2 / 2)).mean())
    f = torch.exp(norm * torch.randn(8, 50, 256, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    plug = plugin_entropy(f).numpy()
    hits = sum(
        (lambda e: e.ci_low <= truth <= e.ci_high)(mean_interval(plug[r], method="bootstrap", seed=r))
        for r in range(50)
    )
    assert hits / 50 < 0.8
