"""Tests of the bundled colored-digits data and the small benchmark models."""

from __future__ import annotations

import math
import socket

import pytest
import torch

from biasscope.datasets import (
    GRAY,
    PALETTE,
    ThreeModalityNet,
    TwoModalityNet,
    accuracy,
    colored_digits,
    three_modality_digits,
    train_plain,
)
from biasscope.datasets.colored_digits import _digits, split_indices
from biasscope.errors import ConfigError


def _palette_class(color: torch.Tensor) -> torch.Tensor:
    """Index of the nearest palette colour for each row."""
    return torch.cdist(color, PALETTE).argmin(dim=1)


def _binomial_tol(p: float, n: int, z: float = 4.5) -> float:
    return z * math.sqrt(max(p * (1 - p), 1e-4) / n)


def _no_jitter() -> dict[str, float | int]:
    # identity rendering: the 8x8 digit exactly, so rows can be matched to the source images
    return dict(image_size=8, rotation=0.0, shift=0.0, scale=0.0, pixel_noise=0.0)


# --- determinism -------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_same_seed_same_tensors_other_seed_different(split: str) -> None:
    a = colored_digits(split, n=300, seed=7)
    b = colored_digits(split, n=300, seed=7)
    c = colored_digits(split, n=300, seed=8)
    for key in ("image", "color", "label"):
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a["image"], c["image"])
    assert not torch.equal(a["color"], c["color"])
    assert not torch.equal(a["label"], c["label"])


def test_three_modality_deterministic_and_extends_colored_digits() -> None:
    a = three_modality_digits("train", n=200, seed=3)
    b = three_modality_digits("train", n=200, seed=3)
    c = three_modality_digits("train", n=200, seed=4)
    two = colored_digits("train", n=200, seed=3)
    for key in a:
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a["noise"], c["noise"])
    for key in ("image", "color", "label"):
        assert torch.equal(a[key], two[key])


def test_seed_does_not_leak_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    colored_digits("train", n=50, seed=0)
    TwoModalityNet(seed=0)
    assert torch.equal(torch.rand(5), expected)


# --- shapes and dtypes -------------------------------------------------------------------


def test_shapes_and_dtypes_with_defaults() -> None:
    expected_n = {"train": 3000, "val": 1000, "test": 1000}
    for split, n in expected_n.items():
        d = colored_digits(split)
        assert set(d) == {"image", "color", "label"}
        assert d["image"].shape == (n, 1, 16, 16) and d["image"].dtype == torch.float32
        assert d["color"].shape == (n, 3) and d["color"].dtype == torch.float32
        assert d["label"].shape == (n,) and d["label"].dtype == torch.int64
        assert int(d["label"].min()) >= 0 and int(d["label"].max()) <= 9


def test_three_modality_shapes() -> None:
    d = three_modality_digits("test", n=64, noise_dim=5, image_size=28)
    assert set(d) == {"image", "color", "noise", "label"}
    assert d["image"].shape == (64, 1, 28, 28)
    assert d["noise"].shape == (64, 5) and d["noise"].dtype == torch.float32


# --- the colour modality -----------------------------------------------------------------


@pytest.mark.parametrize("rho", [0.99, 0.7, 1.0])
def test_training_colour_matches_label_with_the_documented_correlation(rho: float) -> None:
    d = colored_digits("train", n=4000, color_correlation=rho, seed=1)
    match = (_palette_class(d["color"]) == d["label"]).float().mean().item()
    assert abs(match - rho) <= _binomial_tol(rho, 4000)


def test_mismatched_training_colours_spread_over_other_classes() -> None:
    d = colored_digits("train", n=6000, color_correlation=0.5, seed=2)
    cls = _palette_class(d["color"])
    offset = (cls - d["label"]) % 10
    off = offset[offset != 0]
    counts = torch.bincount(off, minlength=10)[1:].float()
    share = counts / counts.sum()
    # each of the 9 other classes gets ~1/9 of the mismatches (~3000 in all)
    assert torch.all((share - 1 / 9).abs() <= _binomial_tol(1 / 9, int(counts.sum())))


def test_val_split_is_correlated_by_default() -> None:
    d = colored_digits("val", n=1000, seed=0)
    match = (_palette_class(d["color"]) == d["label"]).float().mean().item()
    assert abs(match - 0.99) <= _binomial_tol(0.99, 1000)


def test_test_split_colour_is_independent_of_label() -> None:
    d = colored_digits("test", n=3000, seed=0)
    cls = _palette_class(d["color"])
    match = (cls == d["label"]).float().mean().item()
    assert abs(match - 0.1) <= _binomial_tol(0.1, 3000)
    # every palette colour appears about equally often
    share = torch.bincount(cls, minlength=10).float() / 3000
    assert torch.all((share - 0.1).abs() <= _binomial_tol(0.1, 3000))


def test_random_mode_in_training_removes_the_shortcut() -> None:
    d = colored_digits("train", n=3000, colors="random", seed=0)
    match = (_palette_class(d["color"]) == d["label"]).float().mean().item()
    assert abs(match - 0.1) <= _binomial_tol(0.1, 3000)


def test_colour_jitter_is_small_and_keeps_the_palette_class() -> None:
    d = colored_digits("train", n=2000, color_correlation=1.0, seed=0, color_noise=0.05)
    residual = d["color"] - PALETTE[d["label"]]
    assert abs(residual.std().item() - 0.05) < 0.005
    assert abs(residual.mean().item()) < 0.005
    clean = colored_digits("train", n=50, color_correlation=1.0, seed=0, color_noise=0.0)
    assert torch.equal(clean["color"], PALETTE[clean["label"]])


@pytest.mark.parametrize("split", ["train", "test"])
def test_gray_mode_is_one_constant_colour(split: str) -> None:
    d = colored_digits(split, n=500, colors="gray", seed=0)
    assert torch.equal(d["color"], GRAY.expand(500, 3))
    # the other modalities are those of the same seed
    ref = colored_digits(split, n=500, seed=0)
    assert torch.equal(d["image"], ref["image"]) and torch.equal(d["label"], ref["label"])


def test_palette_is_well_separated_and_gray_is_far_from_it() -> None:
    dist = torch.cdist(PALETTE, PALETTE) + torch.eye(10) * 10
    assert dist.min() >= 0.5 - 1e-6
    assert torch.cdist(GRAY[None], PALETTE).min() >= 0.7


# --- images and splits -------------------------------------------------------------------


def test_split_indices_are_a_disjoint_60_20_20_partition() -> None:
    parts = {s: split_indices(s) for s in ("train", "val", "test")}
    assert {s: p.numel() for s, p in parts.items()} == {"train": 1078, "val": 359, "test": 360}
    union = torch.cat(list(parts.values()))
    assert torch.equal(union.sort().values, torch.arange(1797))


def test_splits_draw_from_disjoint_digit_images_and_carry_their_labels() -> None:
    images, labels = _digits()
    seen: dict[str, set[bytes]] = {}
    for split in ("train", "val", "test"):
        d = colored_digits(split, n=2500, seed=5, **_no_jitter())
        rows = d["image"].reshape(len(d["image"]), -1)
        source = images[split_indices(split)].reshape(-1, 64)
        pool = {r.numpy().tobytes(): int(l) for r, l in zip(source, labels[split_indices(split)])}
        keys = [r.numpy().tobytes() for r in rows]
        assert all(k in pool for k in keys), f"{split} holds an image outside its split"
        assert [pool[k] for k in keys] == d["label"].tolist()
        seen[split] = set(keys)
        # n > images in the split: every image is used, each about equally often
        assert len(seen[split]) == len(pool)
    assert not seen["train"] & seen["val"]
    assert not seen["train"] & seen["test"]
    assert not seen["val"] & seen["test"]


def test_augmentation_makes_distinct_samples_from_repeated_images() -> None:
    d = colored_digits("train", n=2500, seed=0)  # 1078 source images
    rows = d["image"].reshape(2500, -1)
    assert torch.unique(rows, dim=0).shape[0] == 2500
    # the rendered image is the digit, not noise: the mean image of each class differs
    means = torch.stack([d["image"][d["label"] == c].mean(0).flatten() for c in range(10)])
    assert torch.cdist(means, means).add(torch.eye(10) * 99).min() > 0.5


def test_pixel_noise_has_the_requested_scale() -> None:
    clean = colored_digits("test", n=200, seed=0, pixel_noise=0.0)
    noisy = colored_digits("test", n=200, seed=0, pixel_noise=0.3)
    assert abs((noisy["image"] - clean["image"]).std().item() - 0.3) < 0.01


def test_noise_modality_is_standard_normal_and_independent_of_the_label() -> None:
    d = three_modality_digits("train", n=4000, seed=0)
    noise, label = d["noise"], d["label"]
    assert abs(noise.mean().item()) < 0.02 and abs(noise.std().item() - 1) < 0.02
    # class-conditional means are all ~0 (std error 1/sqrt(400) = 0.05)
    means = torch.stack([noise[label == c].mean(0) for c in range(10)])
    assert means.abs().max() < 0.25


def test_no_network_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access attempted")

    _digits.cache_clear()
    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    d = colored_digits("train", n=20, seed=0)
    t = three_modality_digits("test", n=20, seed=0)
    assert d["image"].shape[0] == 20 and t["noise"].shape[0] == 20


@pytest.mark.parametrize(
    "kwargs",
    [
        {"split": "validation"},
        {"colors": "blue"},
        {"color_correlation": 1.5},
        {"n": 0},
    ],
)
def test_bad_options_raise_config_error_naming_the_choices(kwargs: dict) -> None:
    with pytest.raises(ConfigError) as info:
        colored_digits(**kwargs)
    assert next(iter(kwargs)) in str(info.value)


# --- models and training -----------------------------------------------------------------


def test_models_have_named_encoders_and_small_size() -> None:
    two = TwoModalityNet(16, 10, hidden=32, seed=0)
    three = ThreeModalityNet(16, 10, hidden=32, noise_dim=8, seed=0)
    assert {n for n, _ in two.named_children()} == {"image_encoder", "color_encoder", "head"}
    assert {n for n, _ in three.named_children()} == {
        "image_encoder", "color_encoder", "noise_encoder", "head"
    }
    for model in (two, three):
        size = sum(p.numel() for p in model.parameters())
        assert 2_000 <= size <= 100_000
    d = three_modality_digits("test", n=7, seed=0)
    assert two(d["image"], d["color"]).shape == (7, 10)
    assert three(**{k: v for k, v in d.items() if k != "label"}).shape == (7, 10)
    assert two.image_encoder(d["image"]).shape == (7, 32)
    assert two.color_encoder(d["color"]).shape == (7, 32)
    assert three.noise_encoder(d["noise"]).shape == (7, 32)


def test_model_seed_fixes_initial_weights() -> None:
    a, b, c = TwoModalityNet(seed=1), TwoModalityNet(seed=1), TwoModalityNet(seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_image_size_must_be_a_multiple_of_four() -> None:
    with pytest.raises(ConfigError):
        TwoModalityNet(image_size=10)


def test_train_plain_is_deterministic() -> None:
    data = colored_digits("train", n=256, seed=0)
    a = train_plain(TwoModalityNet(seed=0), data, epochs=1, seed=3, num_threads=1)
    b = train_plain(TwoModalityNet(seed=0), data, epochs=1, seed=3, num_threads=1)
    assert not a.training
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_short_training_learns_the_colour_shortcut() -> None:
    train = colored_digits("train", n=2000, color_correlation=1.0, seed=0)
    test = colored_digits("test", n=1000, seed=0)
    model = train_plain(TwoModalityNet(seed=0), train, epochs=4, seed=0, num_threads=1)
    train_acc, test_acc = accuracy(model, train), accuracy(model, test)
    assert train_acc >= 0.97
    assert test_acc <= 0.5
    assert test_acc <= train_acc - 0.45
    # the colour alone predicts: the label follows the colour on random-colour data
    prediction = model(test["image"], test["color"]).argmax(1)
    follows_colour = prediction == _palette_class(test["color"])
    assert follows_colour.float().mean().item() >= 0.6


def test_three_modality_training_runs_and_learns() -> None:
    train = three_modality_digits("train", n=1000, seed=0)
    model = train_plain(ThreeModalityNet(seed=0), train, epochs=5, seed=0, num_threads=1)
    assert accuracy(model, train) >= 0.9


def test_train_plain_restores_the_thread_count() -> None:
    before = torch.get_num_threads()
    train_plain(TwoModalityNet(seed=0), colored_digits("train", n=32), epochs=1, num_threads=1)
    assert torch.get_num_threads() == before


def test_accuracy_counts_correct_predictions() -> None:
    class Fixed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.one_hot(x, 3).float()

    data = {"x": torch.tensor([0, 1, 2, 2]), "label": torch.tensor([0, 1, 1, 2])}
    assert accuracy(Fixed(), data, batch_size=3) == 0.75
    with pytest.raises(ConfigError):
        accuracy(Fixed(), {"x": data["x"]})


# -- both-needed digits (issue 12, item 4) -----------------------------------------------------


def test_both_needed_label_needs_the_digit_and_the_brightness():
    from biasscope.datasets import BRIGHT_VALUES, both_needed, colored_digits

    d = both_needed("test", n=2000, seed=3)
    digit = colored_digits("test", n=2000, seed=3, colors="gray")["label"]
    assert torch.equal(d["image"], colored_digits("test", n=2000, seed=3, colors="gray")["image"])
    bright = (d["color"].max(dim=1).values < sum(BRIGHT_VALUES) / 2).long()  # read from colour
    assert torch.equal(d["label"], (digit + 5 * bright) % 10)
    # without the colour the best guess from the digit is right half the time (<= 55%)
    best = sum(
        int(torch.bincount(d["label"][digit == k], minlength=10).max()) for k in range(10)
    )
    assert 0.45 < best / 2000 <= 0.55


def test_both_needed_hue_is_a_training_shortcut_only():
    from biasscope.datasets import both_needed, hue_rgb

    def hue_agreement(data):
        palette = hue_rgb(torch.arange(10), torch.ones(10))
        # normalise the brightness away, then the nearest hue
        rgb = data["color"] / data["color"].max(dim=1, keepdim=True).values
        nearest = torch.cdist(rgb, palette).argmin(dim=1)
        return float((nearest == data["label"]).float().mean())

    assert hue_agreement(both_needed("train", n=2000)) > 0.97
    assert hue_agreement(both_needed("test", n=2000)) < 0.2
    a, b = both_needed("val", n=50, seed=1), both_needed("val", n=50, seed=1)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_benchmark_registry():
    from biasscope.datasets import BENCHMARKS, benchmark_data, both_needed

    assert set(BENCHMARKS) == {"colored", "both"}
    got = benchmark_data("both", "train", n=20, seed=2, decorrelated=True)
    assert torch.equal(got["color"], both_needed("train", n=20, seed=2, hues="random")["color"])
    with pytest.raises(ConfigError, match="colored, both"):
        benchmark_data("nope", "train")
    with pytest.raises(ConfigError, match="hues"):
        both_needed("train", hues="gray")
