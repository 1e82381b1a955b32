"""fix's target and guard on planted models whose answer is known by construction: the
ModDrop target is the modality the model relies on (not the most sensitive one), and the
guard stops a fix that teaches the model a pure-noise modality but not one that removes a
shortcut."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from biasscope import Modality
from biasscope.fixing.fix import fix
from biasscope.fixing.regularizer import FunctionalEntropyRegularizer

torch.set_num_threads(1)


class SameMap(nn.Module):
    """logits = a W + b W: the output moves alike with noise in ``a`` or ``b``."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(2.0 * torch.randn(3, 3, generator=g))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ self.w + b @ self.w


def test_target_is_the_relied_upon_modality_when_sensitivity_ties():
    model = SameMap()
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(256, 3, generator=g), torch.randn(256, 3, generator=g)
    with torch.no_grad():
        label = (a @ model.w).argmax(dim=1)  # the label is a's part of the output: a shortcut
    data = [{"a": a[i : i + 64], "b": b[i : i + 64], "label": label[i : i + 64]} for i in range(0, 256, 64)]
    mods = [Modality("b", input="b"), Modality("a", input="a")]  # b first: a tie would pick it
    with torch.no_grad():
        scores = FunctionalEntropyRegularizer(model, mods, samples=16).scores(data[0])
    assert 0.7 < float(scores["a"] / scores["b"]) < 1.4  # sensitivity: a tie
    result = fix(model, data, mods, max_steps=1, lambda_=0.0, device="cpu")
    target = result.target
    assert target["modality"] == "a" and target["rule"] == "reliance"
    assert target["reliance"]["a"] > 3 * abs(target["reliance"]["b"]) and target["reliance"]["a"] > 0.5
    assert target["held"] == {"source": "training", "examples": 256}
    assert all(h["augmented"] == "a" for h in result.history)
    named = fix(model, data, mods, max_steps=1, lambda_=0.0, augment="b", device="cpu")
    assert named.target["modality"] == "b" and named.target["rule"] == "given"


class TwoPath(nn.Module):
    """A shortcut path reading the one-hot ``s`` (strong) and an ``x`` path (zero at start)."""

    def __init__(self) -> None:
        super().__init__()
        self.s_head = nn.Linear(3, 3)
        self.x_head = nn.Linear(4, 3)
        with torch.no_grad():
            self.s_head.weight.copy_(4.0 * torch.eye(3))
            self.s_head.bias.zero_()
            self.x_head.weight.zero_()
            self.x_head.bias.zero_()

    def forward(self, s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.s_head(s) + self.x_head(x)


def shortcut_data(n: int, *, informative_x: bool, seed: int) -> list[dict[str, torch.Tensor]]:
    """``s`` agrees with the label 95% of the time; ``x`` predicts it (or is pure noise)."""
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 3, (n,), generator=g)
    agree = torch.rand(n, generator=g) < 0.95
    s_class = torch.where(agree, label, torch.randint(0, 3, (n,), generator=g))
    s = nn.functional.one_hot(s_class, 3).float()
    x = torch.randn(n, 4, generator=g)
    if informative_x:
        x[:, :3] += 2.5 * nn.functional.one_hot(label, 3).float()
    return [{"s": s[i : i + 32], "x": x[i : i + 32], "label": label[i : i + 32]} for i in range(0, n, 32)]


MODS = [Modality("s", input="s"), Modality("x", input="x")]
OPTS = dict(lambda_=0.0, modality_dropout=1.0, lr=0.05, epochs=6, eval_every=2, device="cpu", seed=0)


def _accuracy(model: nn.Module, data) -> float:
    with torch.no_grad():
        right = sum(int((model(b["s"], b["x"]).argmax(1) == b["label"]).sum()) for b in data)
    return right / sum(len(b["label"]) for b in data)


def test_guard_does_not_trip_when_the_fix_removes_a_shortcut():
    train, val = shortcut_data(512, informative_x=True, seed=0), shortcut_data(256, informative_x=True, seed=1)
    result = fix(TwoPath(), train, MODS, val_data=val, **OPTS)
    guard = result.guard
    assert result.target["modality"] == "s" and guard["modality"] == "s" and guard["pushed"] == ["x"]
    assert not result.guard_tripped and result.steps == 6 * 16
    vals = [h for h in result.history if "val_accuracy" in h]
    assert guard["start"]["val_proxy_accuracy"] < 0.5  # s permuted: near chance at the start
    assert vals[-1]["val_proxy_accuracy"] > 0.9  # the fixed model reads x
    assert _accuracy(result.model, val) > 0.9


def test_guard_trips_when_the_fix_pushes_a_pure_noise_modality():
    train, val = shortcut_data(512, informative_x=False, seed=0), shortcut_data(256, informative_x=False, seed=1)
    model = TwoPath()
    start = _accuracy(model, val)
    result = fix(model, train, MODS, val_data=val, **OPTS)
    guard = result.guard
    assert result.guard_tripped and guard["trip"]["reason"] == "no_gain"
    assert result.steps < 6 * 16  # stopped early
    trip = guard["trip"]
    assert start - trip["val_accuracy"] > OPTS.get("guard_tolerance", 0.03)
    assert trip["val_proxy_accuracy"] - guard["start"]["val_proxy_accuracy"] <= 0.03
    # the weights kept are the last that passed: their accuracy is within the tolerance
    assert _accuracy(result.model, val) >= start - 0.03 - 1e-9
    message = guard["message"]
    assert "off s towards x" in message and f"{start:.3f}" in message
    assert any(d.code == "fix_guard_tripped" for d in result.diagnostics)


def test_max_drop_accuracy_is_a_hard_bound():
    train, val = shortcut_data(512, informative_x=True, seed=0), shortcut_data(256, informative_x=True, seed=1)
    result = fix(TwoPath(), train, MODS, val_data=val, guard=False, max_drop_accuracy=0.0, **{**OPTS, "lr": 0.2})
    assert result.guard_tripped and result.guard["trip"]["reason"] == "max_drop_accuracy"
    assert result.guard["trip"]["val_accuracy"] < result.guard["start"]["val_accuracy"]
    assert result.guard["trip"]["val_proxy_accuracy"] > 0.8  # the proxy rose: only the bound stops it


def test_warning_when_a_pushed_modality_gains_sensitivity_but_no_reliance():
    from types import SimpleNamespace

    from biasscope.fixing.fix import FixResult, _diagnostics

    history = [{"scores": {"s": 1.0, "x": 0.01}}, {"scores": {"s": 0.5, "x": 0.4}}]
    trainer = SimpleNamespace(history=history, guard=SimpleNamespace(pushed=["x"]), val=[object()], validated=True)
    result = FixResult(model=nn.Identity(), history=history, lambda_value=1.0, best_step=None, stopped_early=False)
    warned = _diagnostics(trainer, result, {"s": 1.2, "x": 0.0})
    assert [(d.code, d.modality) for d in warned] == [("fix_pushed_uninformative", "x")]
    assert not _diagnostics(trainer, result, {"s": 1.2, "x": 0.3})  # x is now relied upon
    trainer.history = history[::-1]  # sensitivity fell: nothing to warn about
    assert not _diagnostics(trainer, result, {"s": 1.2, "x": 0.0})
