"""The real-model zoo's machinery (benchmarks/_real_zoo*.py) on its smallest model: the planted
task, the truth by ablation, the route's round trip, and the scoring rule. Only the
development seed is used here: the held-out seeds stay out of every test."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _real_zoo as z  # noqa: E402
from _real_zoo_routes import load_back, logits_fn  # noqa: E402
from _real_zoo_score import gate_right, verdict_right  # noqa: E402


def test_truth_rule_margins():
    assert z.truth_label(0.0, 0.0) == "ignored"
    assert z.truth_label(0.009, 0.0) == "ignored"
    assert z.truth_label(0.02, 0.0) == "partial"
    assert z.truth_label(0.0, 0.05) == "relied"  # an accuracy cost alone counts
    assert z.truth_label(0.75, 0.7) == "relied"


def test_scoring_rule():
    assert verdict_right("ignored", "unused", 0.0, 0.75) and not verdict_right("ignored", "weak", 0.0, 0.75)
    assert verdict_right("relied", "weak", 0.1, 0.75) and not verdict_right("relied", "weak", 0.5, 0.75)
    assert not verdict_right("relied", "ignored", 0.1, 0.75)
    assert verdict_right("partial", "weak", 0.02, 0.75) and not verdict_right("partial", "ok", 0.02, 0.75)
    assert verdict_right("partial", "cannot_tell", 0.02, 0.75)  # a verdict a later rule may add
    assert gate_right(["ignored", "relied"], 1) and not gate_right(["ignored", "relied"], 0)
    assert gate_right(["relied", "relied"], 0) and gate_right(["partial", "relied"], 1)


def test_decorrelated_split_breaks_only_the_shortcut():
    arch = z.ARCHS["late_fusion"]
    val = z.make_split(arch, "shortcut", n=400, seed=2)
    decor = z.make_split(arch, "shortcut", n=400, seed=2, decorrelated=True)
    token = lambda b: b["input_ids"][:, 1] - 6  # the text's planted class (the shortcut here)  # noqa: E731
    assert torch.equal(token(val), val["label"])  # p = 1 in training and validation
    assert (token(decor) == decor["label"]).float().mean() < 0.4  # random: 1/4 expected
    assert set(val) == {"image", "input_ids", "label"}


@pytest.mark.parametrize("seed", z.DEV_SEEDS)
def test_shortcut_model_truth_and_round_trip(tmp_path, seed):
    torch.set_num_threads(1)
    arch = z.ARCHS["torchscript"]  # image + tabular, the image the shortcut: the fastest to train
    built = z.build(arch, "shortcut", seed, cache=tmp_path)
    truth = built.truth["modalities"]
    assert truth["image"]["truth"] == "relied" and truth["image"]["flip"] > 0.5
    assert truth["tabular"]["truth"] == "ignored"
    assert built.truth["val_accuracy"] > 0.95 and built.truth["decorrelated_accuracy"] < 0.4
    assert z.build(arch, "shortcut", seed, cache=tmp_path) == built  # from the cache
    # the saved TorchScript archive, loaded by biasscope, predicts what was measured
    val = torch.load(built.data("val"), weights_only=True)
    assert z.accuracy(logits_fn(load_back(arch, built.model)), val) == built.truth["val_accuracy"]
