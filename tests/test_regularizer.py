"""The functional-entropy regularizer: its scores are the audit's bounds, its term's forms,
gradients, the score floor, calibration, and a planted model whose ignored modality it
brings back."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from biasscope import ConfigError, Modality, audit
from biasscope.runtime._batch import split_batch
from biasscope.measuring._perturbation import perturbation_samples, representation_std
from biasscope.measuring.estimators import fisher_bound, poincare_bound
from biasscope.fixing.calibration import calibrate_lambda
from biasscope.fixing.regularizer import FORMS, FunctionalEntropyRegularizer, regularizer_term

MODS = [Modality("a", input="a"), Modality("b", input="b")]
LAYER_MODS = [Modality("a", layer="enc_a"), Modality("b", layer="enc_b")]


class GatedNet(nn.Module):
    """Two encoders and a linear head; ``b``'s encoder output is multiplied by ``gate``."""

    def __init__(self, gate: float = 1.0, seed: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.enc_a = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
            self.enc_b = nn.Sequential(nn.Linear(3, 8), nn.Tanh())
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(16, 3))
        self.gate = nn.Parameter(torch.tensor(float(gate)))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.enc_a(a), self.gate * self.enc_b(b)], dim=1))


class IgnoresB(nn.Module):
    """Never reads ``b``: its gradient w.r.t. ``b`` does not exist."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            self.enc_a = nn.Linear(4, 3)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.enc_a(a)


def make_data(n: int = 48, seed: int = 0) -> dict[str, torch.Tensor]:
    """Labels that depend on both modalities."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, 4, generator=g), torch.randn(n, 3, generator=g)
    wa, wb = torch.randn(4, 3, generator=g), torch.randn(3, 3, generator=g)
    return {"a": a, "b": b, "label": (a @ wa + 1.5 * b @ wb).argmax(dim=1)}


@pytest.mark.parametrize("estimator", ["fisher", "poincare"])
@pytest.mark.parametrize("mods", [MODS, LAYER_MODS], ids=["input", "layer"])
def test_scores_equal_the_audit(estimator, mods):
    """The regularizer and the audit run the same engine on the same sigmas; the regularizer
    draws its noise from its generator, the audit from the examples' keys, so each is
    checked against the engine with its own noise."""
    from dataclasses import replace

    from biasscope.measuring._noise import stream_id
    from biasscope.measuring._perturbation import ExampleNoise

    model = GatedNet().eval()
    batch = make_data()
    unlabelled = {"a": batch["a"], "b": batch["b"]}
    reg = FunctionalEntropyRegularizer(
        model, mods, estimator=estimator, samples=6, seed=7, scale=0.8
    )
    _, scores = reg(batch)
    result = audit(
        model, [unlabelled], mods, samples=6, seed=7, scale=0.8, label_key=None, device="cpu"
    )
    b = replace(split_batch(unlabelled, label_key=None), index=torch.arange(48))
    sig = representation_std(model, [b], mods)
    bound = fisher_bound if estimator == "fisher" else (lambda f, q: poincare_bound(q))
    g = torch.Generator().manual_seed(7)
    key = "fisher_bound" if estimator == "fisher" else "poincare_bound"
    for j, m in enumerate(mods):
        f, q = perturbation_samples(model, b, {m: sig[m.name]}, samples=6, scale=0.8, generator=g)
        assert scores[m.name].item() == pytest.approx(bound(f.double(), q[m.name].double()).mean().item(), rel=1e-5)
        keyed = ExampleNoise(7, {m: stream_id("perturb", j)})
        f, q = perturbation_samples(model, b, {m: sig[m.name]}, samples=6, scale=0.8, keyed=keyed)
        audited = getattr(result.modalities[j], key).mean
        assert audited > 0
        assert audited == pytest.approx(bound(f.double(), q[m.name].double()).mean().item(), rel=1e-5)


def test_fixed_sigmas_equal_the_perturbation_engine():
    model = GatedNet().eval()
    batch = make_data()
    sigmas = {"a": torch.full((4,), 0.3), "b": torch.linspace(0.1, 0.5, 3)}
    reg = FunctionalEntropyRegularizer(model, MODS, samples=5, seed=3, sigmas=sigmas)
    _, scores = reg(batch)
    b = split_batch(batch)
    g = torch.Generator().manual_seed(3)
    for m in MODS:  # the audit's path: one modality at a time, shared generator
        f, q = perturbation_samples(model, b, {m: sigmas[m.name]}, samples=5, generator=g)
        expected = fisher_bound(f.detach().double(), q[m.name].detach().double()).mean()
        assert scores[m.name].item() == pytest.approx(expected.item(), rel=1e-5)
    # and the default sigmas are the audit's representation_std over the batch
    std = representation_std(model, [b], MODS)
    got = FunctionalEntropyRegularizer(model, MODS).noise_scales(b)
    for m in MODS:
        torch.testing.assert_close(got[m.name], std[m.name])


def test_poincare_is_mean_quadratic_form():
    model = GatedNet().eval()
    batch = make_data()
    reg = FunctionalEntropyRegularizer(model, MODS, estimator="poincare", samples=4, seed=2)
    _, scores = reg(batch)
    b = split_batch(batch)
    sig = representation_std(model, [b], MODS)
    g = torch.Generator().manual_seed(2)
    for m in MODS:
        _, q = perturbation_samples(model, b, {m: sig[m.name]}, samples=4, generator=g)
        assert scores[m.name].item() == pytest.approx(
            poincare_bound(q[m.name]).mean().item(), rel=1e-6
        )


def test_term_forms_closed_form():
    s = torch.tensor([1.0, 4.0])
    eps = 1e-12
    norm = math.sqrt(1 + 1 / 16)
    assert float(regularizer_term(s, form="inverse", eps=eps)) == pytest.approx(norm, rel=1e-6)
    assert float(regularizer_term(s, form="log_inverse", eps=eps)) == pytest.approx(
        math.log(norm), rel=1e-6
    )
    assert float(regularizer_term(s, form="mean_log", eps=eps)) == pytest.approx(
        -math.log(4) / 2, rel=1e-6
    )
    assert float(regularizer_term(s, form="log_share", eps=eps)) == pytest.approx(
        math.log(norm) + math.log(5), rel=1e-6
    )
    # scale-free forms: scaling every score by c shifts log forms by -log c, shares not at all
    c = 1e-3
    for form, shift in (
        ("log_inverse", -math.log(c)),
        ("mean_log", -math.log(c)),
        ("log_share", 0.0),
    ):
        base = float(regularizer_term(s, form=form, eps=eps))
        assert float(regularizer_term(c * s, form=form, eps=eps)) == pytest.approx(
            base + shift, rel=1e-5
        )
    # any M; log_share is smallest at equal shares
    for m in (1, 3, 5):
        equal = torch.full((m,), 0.2)
        assert float(regularizer_term(equal, form="log_share", eps=eps)) == pytest.approx(
            1.5 * math.log(m), abs=1e-5
        )
        skewed = equal.clone()
        skewed[0] = 0.01
        if m > 1:
            assert regularizer_term(skewed, form="log_share") > regularizer_term(
                equal, form="log_share"
            )


def test_score_floor_keeps_the_term_finite():
    zero = torch.tensor([0.0, 2.0], requires_grad=True)
    for form in FORMS:
        term = regularizer_term(zero, form=form, eps=1e-8)
        (grad,) = torch.autograd.grad(term, zero)
        assert torch.isfinite(term) and torch.isfinite(grad).all()
    assert float(regularizer_term(zero.detach(), form="inverse", eps=1e-8)) == pytest.approx(
        1e8, rel=1e-6
    )
    assert float(regularizer_term(zero.detach(), form="log_inverse", eps=1e-8)) == pytest.approx(
        -math.log(1e-8), rel=1e-6
    )


@pytest.mark.parametrize("mods", [MODS, LAYER_MODS], ids=["input", "layer"])
@pytest.mark.parametrize("form", FORMS)
def test_gradients_reach_every_encoder(mods, form):
    model = GatedNet().train()
    reg = FunctionalEntropyRegularizer(model, mods, form=form, samples=4)
    term, scores = reg(make_data())
    assert term.requires_grad and all(s.requires_grad for s in scores.values())
    term.backward()
    for enc in (model.enc_a, model.enc_b):
        weight = enc[0].weight.grad
        assert weight is not None and torch.isfinite(weight).all() and weight.abs().sum() > 0
    assert model.training  # the mode is restored after the eval-mode perturbation passes


@pytest.mark.parametrize("estimator", ["fisher", "poincare"])
@pytest.mark.parametrize(
    "model_fn", [lambda: GatedNet(gate=0.0), IgnoresB], ids=["gate0", "unread"]
)
def test_an_ignored_modality_gives_a_finite_term(estimator, model_fn):
    model = model_fn()
    for form in FORMS:
        reg = FunctionalEntropyRegularizer(
            model, MODS, form=form, estimator=estimator, samples=4, eps=1e-6
        )
        term, scores = reg(make_data())
        assert scores["b"].item() == 0.0 and scores["a"].item() > 0
        expected = regularizer_term(torch.tensor([scores["a"].item(), 0.0]), form=form, eps=1e-6)
        assert term.item() == pytest.approx(float(expected), rel=1e-5)
        model.zero_grad()
        term.backward()
        for p in model.parameters():
            assert p.grad is None or torch.isfinite(p.grad).all()


def test_dropout_does_not_leak_into_f():
    # in train mode with dropout, f would differ between clean and noisy passes by the masks;
    # the regularizer runs its passes in eval mode, so an ignored modality still scores 0
    model = GatedNet(gate=0.0, dropout=0.5).train()
    _, scores = FunctionalEntropyRegularizer(model, MODS, samples=4)(make_data())
    assert scores["b"].item() == 0.0
    assert model.training


def test_generator_state_round_trip_and_no_parameters():
    model = GatedNet().eval()
    reg = FunctionalEntropyRegularizer(model, MODS, samples=4, seed=5)
    assert list(reg.parameters()) == [] and reg.get_rng_state() is None
    data = make_data()
    with torch.no_grad():
        reg(data)
        state = reg.get_rng_state()
        second = reg(data)[1]
        reg.set_rng_state(state)
        again = reg(data)[1]
    assert all(second[k].item() == again[k].item() for k in second)


@pytest.mark.parametrize("criterion", ["gradient", "value"])
def test_calibrated_lambda_hits_the_target_ratio(criterion):
    model = GatedNet(gate=0.1).train()
    data = [make_data(32, seed=s) for s in range(3)]
    reg = FunctionalEntropyRegularizer(model, MODS, samples=4, seed=11, form="inverse")
    cal = calibrate_lambda(reg, data, target_ratio=0.25, criterion=criterion)
    # recompute the ratio independently on the same batches and noise
    fresh = FunctionalEntropyRegularizer(model, MODS, samples=4, seed=11, form="inverse")
    params = list(model.parameters())
    ce_m, term_m = [], []
    for batch in data:
        ce = F.cross_entropy(model(batch["a"], batch["b"]), batch["label"])
        term, _ = fresh(batch)
        if criterion == "gradient":
            ce_m.append(torch.cat([g.flatten() for g in torch.autograd.grad(ce, params)]).norm())
            term_m.append(
                torch.cat([g.flatten() for g in torch.autograd.grad(term, params)]).norm()
            )
        else:
            ce_m.append(ce.detach())
            term_m.append(term.detach().abs())
    ratio = cal.lambda_value * float(sum(term_m)) / float(sum(ce_m))
    assert ratio == pytest.approx(0.25, rel=1e-4)
    got = cal.gradient_ratio if criterion == "gradient" else cal.value_ratio
    assert got == pytest.approx(0.25, rel=1e-6)


def test_planted_ignored_modality_is_raised():
    """``b`` carries label information but its gate starts tiny: the model barely reads it.
    A short fine-tune on CE + lambda * term raises b's score many-fold, the loss stays finite."""
    torch.manual_seed(0)
    model = GatedNet(gate=1e-3).train()
    data = [make_data(48, seed=s) for s in range(4)]
    reg = FunctionalEntropyRegularizer(model, MODS, samples=4, seed=0)
    with torch.no_grad():
        before = reg.scores(data[0])["b"].item()
    lam = calibrate_lambda(reg, data[:2], target_ratio=1.0).lambda_value
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(30):
        batch = data[step % 4]
        term, _ = reg(batch)
        loss = F.cross_entropy(model(batch["a"], batch["b"]), batch["label"]) + lam * term
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    reg.set_rng_state(None)
    with torch.no_grad():
        after = reg.scores(data[0])["b"].item()
    assert after > 100 * before
    assert abs(model.gate.item()) > 0.05


def test_bad_options_raise():
    model = GatedNet()
    with pytest.raises(ConfigError, match="form"):
        FunctionalEntropyRegularizer(model, MODS, form="square")
    with pytest.raises(ConfigError, match="estimator"):
        FunctionalEntropyRegularizer(model, MODS, estimator="entropy")
    with pytest.raises(ConfigError, match="samples"):
        FunctionalEntropyRegularizer(model, MODS, samples=1)
    with pytest.raises(ConfigError, match="criterion"):
        calibrate_lambda(FunctionalEntropyRegularizer(model, MODS), [make_data()], criterion="loss")


# -- the gradient of the term (issue 12, item 1) ----------------------------------------------


def _float64_setup(detach_clean: bool, form: str, model: nn.Module | None = None):
    model = model if model is not None else GatedNet(seed=3).double().eval()
    data = {k: (v.double() if v.is_floating_point() else v) for k, v in make_data(n=12).items()}
    sigmas = {"a": torch.full((4,), 0.4), "b": torch.linspace(0.2, 0.6, 3)}

    def term_at() -> torch.Tensor:
        # fixed noise: a fresh regularizer (its generator reset from the seed) per evaluation
        reg = FunctionalEntropyRegularizer(
            model, MODS, samples=4, seed=5, sigmas=sigmas, form=form, detach_clean=detach_clean,
            eps=1e-12,  # the floor is detached by design: keep it negligible for the FD check
        )
        return reg(data)[0]

    return model, term_at


@pytest.mark.parametrize("form", ["inverse", "log_share", "min_log"])
def test_term_gradient_matches_finite_differences(form):
    """d term / d theta by autograd equals central finite differences of the term (float64,
    fixed noise): the gradient flows through the perturbed *and* the clean prediction."""
    model, term_at = _float64_setup(False, form)
    params = list(model.parameters())
    grads = torch.autograd.grad(term_at(), params)
    auto = torch.cat([g.reshape(-1) for g in grads])
    numeric = torch.zeros_like(auto)
    h, i = 1e-6, 0
    with torch.no_grad():
        for p in params:
            flat = p.view(-1)
            for j in range(flat.numel()):
                old = float(flat[j])
                flat[j] = old + h
                up = float(term_at())
                flat[j] = old - h
                down = float(term_at())
                flat[j] = old
                numeric[i] = (up - down) / (2 * h)
                i += 1
    rel = float((auto - numeric).norm() / numeric.norm())
    assert rel < 1e-4, rel


def test_detached_clean_is_another_gradient():
    """Detaching p_clean changes the gradient (the issue's 20-47%): the option is explicit."""
    model, full_at = _float64_setup(False, "log_share")
    _, detached_at = _float64_setup(True, "log_share", model)
    params = list(model.parameters())
    full = torch.cat([g.reshape(-1) for g in torch.autograd.grad(full_at(), params)])
    detached = torch.cat([g.reshape(-1) for g in torch.autograd.grad(detached_at(), params)])
    assert full_at().item() == pytest.approx(detached_at().item(), rel=1e-12)  # same value
    assert float((full - detached).norm() / full.norm()) > 0.05


def test_relative_floor_scales_with_the_scores():
    """With a modality ignored outright, the inverse term is sqrt(M)-ish / (eps * mean I):
    scaling every score by c divides it by c (no absolute 1e8)."""
    s = torch.tensor([0.0, 2.0], dtype=torch.float64)
    for c in (1.0, 1e-6, 1e6):
        got = float(regularizer_term(c * s, form="inverse", eps=1e-3))
        assert got == pytest.approx(math.hypot(1 / (c * 1e-3), 1 / (c * 2.001)), rel=1e-9)
    for c in (1.0, 1e-6):  # the ignored modality's log score is log(c * eps * mean I)
        got = float(regularizer_term(c * s, form="min_log", eps=1e-3))
        assert got == pytest.approx(-math.log(c * 1e-3), rel=1e-9)
    for form in ("min_share", "log_share"):  # scale-free: log(1/eps) + O(1) at any scale
        assert float(regularizer_term(1e-6 * s, form=form)) < 10.0


def test_min_forms_closed_form():
    s = torch.tensor([1.0, 4.0, 5.0])
    tiny = 1e-12
    assert float(regularizer_term(s, form="min_log", eps=tiny)) == pytest.approx(0.0, abs=1e-9)
    assert float(regularizer_term(2 * s, form="min_log", eps=tiny)) == pytest.approx(-math.log(2))
    assert float(regularizer_term(s, form="min_share", eps=tiny)) == pytest.approx(math.log(10))
    assert float(regularizer_term(7 * s, form="min_share", eps=tiny)) == pytest.approx(math.log(10))


def test_term_every_skips_and_reweights():
    model = GatedNet().eval()
    batch = make_data()
    full = FunctionalEntropyRegularizer(model, MODS, samples=4, seed=1)
    every = FunctionalEntropyRegularizer(model, MODS, samples=4, seed=1, term_every=3)
    with torch.no_grad():
        t_full, s_full = full(batch)
    terms = [every(batch) for _ in range(4)]
    assert terms[0][0].item() == pytest.approx(3 * t_full.item(), rel=1e-9)
    for t, s in terms[1:3]:
        assert float(t) == 0.0 and not t.requires_grad
        assert s["a"].item() == pytest.approx(s_full["a"].item(), rel=1e-9)  # the last scores
    assert terms[3][0].item() != 0.0 and every.calls == 4
    state = every.get_rng_state()
    again = FunctionalEntropyRegularizer(model, MODS, samples=4, seed=1, term_every=3)
    again.set_rng_state(state)
    assert again.calls == 4


def test_term_examples_scores_a_subset():
    """The sub-batch score equals the full score of the examples it drew (their mean)."""
    model = GatedNet().eval()
    batch = make_data(n=40)
    reg = FunctionalEntropyRegularizer(model, MODS, samples=4, seed=2, term_examples=8)
    _, scores = reg(batch)
    plain = FunctionalEntropyRegularizer(model, MODS, samples=4, seed=2)
    rows = torch.randperm(40, generator=plain.generator("cpu"))[:8]  # the same draw, then noise
    _, expected = plain({k: v[rows] for k, v in batch.items()})
    assert scores["a"].item() != pytest.approx(reg.compute(batch)[1]["a"].item(), rel=1e-3)
    for m in MODS:
        assert float(scores[m.name]) == pytest.approx(float(expected[m.name]), rel=1e-9)


def test_min_dominant_form_is_the_dominant_score_and_its_gradient_only():
    from biasscope.fixing.regularizer import MAXIMISING_FORMS, regularizer_term

    scores = torch.tensor([1.0, 3.0, 2.0], requires_grad=True)
    term = regularizer_term(scores, form="min_dominant")
    assert float(term) == 3.0  # the largest score by default
    term.backward()
    assert scores.grad.tolist() == [0.0, 1.0, 0.0]
    assert float(regularizer_term(scores, form="min_dominant", dominant=0)) == 1.0
    assert "min_dominant" not in MAXIMISING_FORMS


def test_min_dominant_regularizer_penalises_the_named_modality():
    from biasscope import FunctionalEntropyRegularizer, Modality
    from biasscope.datasets import TwoModalityNet, colored_digits
    from biasscope.demo import batches_of
    from biasscope.errors import ModalityError

    model = TwoModalityNet(seed=0)
    batch = batches_of(colored_digits("train", n=32), 32)[0]
    mods = [Modality("image", input="image"), Modality("color", input="color")]
    reg = FunctionalEntropyRegularizer(model, mods, samples=2, form="min_dominant", dominant="color")
    term, scores = reg(batch)
    assert torch.allclose(term, scores["color"])
    reg.dominant = "colour"
    with pytest.raises(ModalityError, match="colour"):
        reg(batch)
