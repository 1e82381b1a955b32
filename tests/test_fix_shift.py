"""fix with and without shifted data, on planted two-path models whose answer is known by
construction: a model on the shortcut (`s`) and a model on the real signal (`x`), trained
where both predict the label. With shifted data (`s` random) fix keeps the weights that score
best on it; without, a swap of reliance is a failure, and near-ties get symmetric ModDrop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from biasscope import Modality
from biasscope.fixing._moddrop import TIE_MARGIN, ModDrop, choose_target
from biasscope.runtime._batch import split_batch
from biasscope.errors import ConfigError
from biasscope.fixing.fix import fix
from biasscope.measuring.shift import shift_accuracy, shift_batches

torch.set_num_threads(1)
MODS = [Modality("s", input="s"), Modality("x", input="x")]
OPTS = dict(lambda_=0.0, modality_dropout=1.0, lr=0.05, epochs=4, eval_every=4, device="cpu", seed=0)


class TwoPath(nn.Module):
    """logits = s_head(s) + x_head(x); ``on`` says which path starts strong (the other is zero)."""

    def __init__(self, on: str) -> None:
        super().__init__()
        self.s_head, self.x_head = nn.Linear(3, 3), nn.Linear(4, 3)
        with torch.no_grad():
            for layer in (self.s_head, self.x_head):
                layer.weight.zero_()
                layer.bias.zero_()
            if on == "s":
                self.s_head.weight.copy_(4.0 * torch.eye(3))
            else:
                self.x_head.weight[:, :3].copy_(4.0 * torch.eye(3))

    def forward(self, s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.s_head(s) + self.x_head(x)


def planted(n: int, *, seed: int, s_agrees: float) -> list[dict[str, torch.Tensor]]:
    """``x`` predicts the label (about 90%); ``s`` (one-hot) equals it with probability
    ``s_agrees``, else a random class (0: the shifted data, where the shortcut is broken)."""
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 3, (n,), generator=g)
    agree = torch.rand(n, generator=g) < s_agrees
    s = nn.functional.one_hot(torch.where(agree, label, torch.randint(0, 3, (n,), generator=g)), 3).float()
    x = torch.randn(n, 4, generator=g)
    x[:, :3] += 2.5 * nn.functional.one_hot(label, 3).float()
    return [{"s": s[i : i + 32], "x": x[i : i + 32], "label": label[i : i + 32]} for i in range(0, n, 32)]


def _data():
    return planted(384, seed=0, s_agrees=0.98), planted(192, seed=1, s_agrees=0.98), planted(192, seed=2, s_agrees=0.0)


def _same_outputs(a: nn.Module, b: nn.Module, data) -> bool:
    with torch.no_grad():
        return all(torch.equal(a(d["s"], d["x"]), b(d["s"], d["x"])) for d in data)


def test_shift_data_keeps_the_weights_with_the_best_shifted_accuracy():
    """Model on the shortcut: ModDrop on `s` raises the shifted accuracy; fix returns the
    weights of the best validation, whose shifted accuracy the guard reports."""
    train, val, shifted = _data()
    model = TwoPath("s")
    start = shift_accuracy(model, shift_batches(shifted))
    assert start < 0.5  # the shortcut model is near chance where s is random
    result = fix(model, train, MODS, val_data=val, shift_data=shifted, **OPTS)
    g = result.guard
    assert not result.failed and g["shifted"] and g["start"]["shift_accuracy"] == start
    kept = shift_accuracy(result.model, shift_batches(shifted))
    assert kept == g["best_shift_accuracy"] > start + 0.3
    best = max(h["shift_accuracy"] for h in result.history if "shift_accuracy" in h)
    assert kept == best and result.best_step == g["kept_step"] > 0
    assert "shifted data" in result.assumption and result.swap is None


def test_shift_data_refuses_a_fix_in_the_wrong_direction():
    """Model on the real signal: ModDrop on `x` teaches it the shortcut; no step beats the
    input on the shifted data, so the guard trips and the input's weights come back."""
    train, val, shifted = _data()
    model = TwoPath("x")
    result = fix(model, train, MODS, val_data=val, shift_data=shifted, **OPTS)
    assert result.target["modality"] == "x"
    assert result.failed and result.guard["trip"]["reason"] == "no_shift_gain"
    assert _same_outputs(result.model, model, shifted)
    assert "kept the input's weights" in result.guard["message"]


def test_the_comparison_gates_of_a_fix_that_kept_the_input_weights():
    """The workflow's gates read a no-gain trip (it has no in-distribution accuracy of its
    own; this raised KeyError 'val_accuracy' through `biasscope fix --shift-data`)."""
    from biasscope.workflow import _guard_gates

    train, val, shifted = _data()
    result = fix(TwoPath("x"), train, MODS, val_data=val, shift_data=shifted, **OPTS)
    assert "val_accuracy" not in result.guard["trip"]
    for gate in _guard_gates(result) or []:
        assert "in-distribution accuracy" in gate.detail


def test_without_shift_data_a_swap_of_reliance_is_a_failure():
    """The same wrong-direction fix without shifted data: the assumption is stated, and the
    reliance moving from `x` onto `s` makes the result a failure that says how to check."""
    train, val, _ = _data()
    result = fix(TwoPath("x"), train, MODS, val_data=val, **OPTS)
    assert result.assumption == "assumes `x`, the modality the model relies on, is the shortcut"
    swap = result.swap
    assert swap is not None and swap["modality"] == "x" and swap["now_relied_upon"] == "s"
    assert swap["after"] < 0.5 * swap["before"] and result.failed and not result.guard_tripped
    (d,) = [d for d in result.diagnostics if d.code == "fix_swapped_reliance"]
    assert "--shift-data" in d.message and "--augment s" in d.message


def test_a_balancing_fix_is_not_a_swap():
    """ModDrop p 0.5 on a model on both paths keeps both in use: no swap."""
    from biasscope.fixing._guard import reliance_swap

    target = {"reliance": {"s": 1.0, "x": 0.2}, "relied_upon": "s"}
    assert reliance_swap(target, {"s": 0.6, "x": 0.5}) is None  # kept over half
    assert reliance_swap(target, {"s": 0.3, "x": 0.2}) is None  # fell, but nothing overtook it
    assert reliance_swap(target, {"s": 0.3, "x": 0.9})["now_relied_upon"] == "x"
    assert reliance_swap({"reliance": {"s": 0.0, "x": 0.0}, "relied_upon": "s"}, {"s": 0.0, "x": 1.0}) is None


def test_target_choice_rules_and_near_ties():
    names = ["a", "b", "c"]
    assert choose_target({"a": 1.0, "b": 0.1, "c": 0.0}, "reliance", names) == ("a", "reliance")
    tie = {"a": 1.0, "b": 1.0 - TIE_MARGIN / 2, "c": 0.0}  # e.g. 1.09 vs 1.06 nats
    with pytest.raises(ConfigError, match="--augment a .* --augment b"):
        choose_target(tie, "reliance", names)
    assert choose_target({"a": 1.0, "b": 1.0 - 2 * TIE_MARGIN, "c": 0.0}, "reliance", names) == ("a", "reliance")
    assert choose_target(tie, "b", names) == ("b", "given")
    assert choose_target(tie, "all", names) == (None, "all")
    assert choose_target({"a": 0.0, "b": -0.1, "c": 0.0}, "reliance", names) == (None, "sensitivity")


def test_symmetric_moddrop_permutes_one_modality_per_dropped_row():
    n = 400
    batch = split_batch({"a": torch.arange(n).float()[:, None], "b": torch.arange(n).float()[:, None] + 1000,
                         "label": torch.zeros(n, dtype=torch.long)})
    mods = [Modality("a", input="a"), Modality("b", input="b")]
    transforms = ModDrop(mods, dropout=1.0, noise=0.0).transforms(batch, ["a", "b"], torch.Generator().manual_seed(0))
    moved = {m.name: (t(batch.get_input(m.name)) != batch.get_input(m.name))[:, 0] for m, t in transforms.items()}
    fixed_points = (moved["a"] | moved["b"]).logical_not().sum()  # rows the permutation maps to themselves
    assert not (moved["a"] & moved["b"]).any() and fixed_points < 5
    assert 150 < int(moved["a"].sum()) < 250  # each modality about half the rows


def test_a_near_tie_is_refused_and_symmetric_moddrop_is_asked_for():
    """A model on both paths equally (each carries the label alike): the target is not a coin
    flip; fix refuses, naming --augment; --augment all trains with symmetric ModDrop."""
    model = TwoPath("x")
    with torch.no_grad():
        model.s_head.weight.copy_(4.0 * torch.eye(3))
    train, _, _ = _data()
    train = [{**b, "s": nn.functional.one_hot(b["label"], 3).float(),
              "x": torch.cat([nn.functional.one_hot(b["label"], 3).float(), torch.zeros(len(b["label"]), 1)], 1)}
             for b in train]
    opts = {k: v for k, v in OPTS.items() if k != "epochs"}
    with pytest.raises(ConfigError, match="about equally .* --augment"):
        fix(model, train, MODS, max_steps=4, **opts)
    result = fix(model, train, MODS, max_steps=4, augment="all", **opts)
    r = result.target["reliance"]
    assert result.target["rule"] == "all" and abs(r["s"] - r["x"]) <= TIE_MARGIN * r["s"], r
    assert {h["augmented"] for h in result.history} == {"all"}
    assert "every modality" in result.assumption


def test_history_has_scores_by_default():
    train, val, _ = _data()
    result = fix(TwoPath("s"), train, MODS, val_data=val, **OPTS)
    scored = [h for h in result.history if h["scores"]]
    assert result.history[0]["scores"] and set(result.history[0]["scores"]) == {"s", "x"}
    assert all("val_accuracy" in h for h in scored[1:])  # the first step's, then each validation's
    first = result.history[0]["scores"]  # after one step of a model on s alone
    assert first["s"] > 100 * first["x"]


def test_from_scratch_measures_the_input_then_reinitialises():
    """The target is chosen on the input (it relies on s); the weights trained are fresh
    (lr 0: the returned weights are the re-initialised ones)."""
    train, _, _ = _data()
    model = TwoPath("s")
    result = fix(model, train, MODS, from_scratch=True, max_steps=1, **{**OPTS, "lr": 0.0})
    assert result.target["modality"] == "s" and result.target["reliance"]["s"] > 1.0
    assert not torch.equal(result.model.s_head.weight, model.s_head.weight)
    assert torch.equal(model.s_head.weight, 4.0 * torch.eye(3))  # the input is untouched
    with pytest.raises(ConfigError, match="reset_parameters"):
        fix(torch.jit.script(TwoPath("s")), train, MODS, from_scratch=True, max_steps=1, **OPTS)
