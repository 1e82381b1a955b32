"""Colored digits: a planted colour shortcut on scikit-learn's bundled handwritten digits.

The shape modality is the UCI 8x8 digit (``sklearn.datasets.load_digits``, shipped with
scikit-learn, no download), re-rendered at ``image_size`` with a random affine jitter and
additive pixel noise so that the shape is harder to read than the colour (as MNIST is
harder than a colour lookup). The colour modality is an RGB vector from a fixed palette of
ten colours, tied to the label in training with probability ``color_correlation`` and
independent of it at test: a model that learns the shortcut scores ~100% in training and
far less on the test split.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError

__all__ = [
    "PALETTE",
    "GRAY",
    "SPLITS",
    "COLOR_MODES",
    "colored_digits",
    "three_modality_digits",
    "split_indices",
]

#: One RGB colour per class (rows 0..9): the eight corners of the RGB cube plus two edge
#: midpoints, pairwise at least 0.5 apart (colour jitter is 0.05 per channel).
PALETTE = torch.tensor(
    [
        [1.0, 0.0, 0.0],  # 0 red
        [0.0, 1.0, 0.0],  # 1 green
        [0.0, 0.0, 1.0],  # 2 blue
        [1.0, 1.0, 0.0],  # 3 yellow
        [1.0, 0.0, 1.0],  # 4 magenta
        [0.0, 1.0, 1.0],  # 5 cyan
        [1.0, 0.5, 0.0],  # 6 orange
        [0.5, 0.0, 1.0],  # 7 violet
        [0.0, 0.0, 0.0],  # 8 black
        [1.0, 1.0, 1.0],  # 9 white
    ],
    dtype=torch.float32,
)

#: The neutral colour of ``colors="gray"``: the centre of the cube, far from every palette entry.
GRAY = torch.tensor([0.5, 0.5, 0.5], dtype=torch.float32)

SPLITS = ("train", "val", "test")
COLOR_MODES = ("correlated", "random", "gray")

# Fractions of the 1797 images in train / val / test; the split is fixed (seed below) so that
# the splits stay disjoint whatever ``seed`` the caller passes.
_SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
_SPLIT_SEED = 20200612
_DEFAULT_COLORS = {"train": "correlated", "val": "correlated", "test": "random"}
_DEFAULT_N = {"train": 3000, "val": 1000, "test": 1000}


@lru_cache(maxsize=1)
def _digits() -> tuple[Tensor, Tensor]:
    """All 1797 digit images scaled to [0, 1], (1797, 8, 8) float32, and labels (1797,) int64."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no network

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32) / 16.0
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    return images, labels


def split_indices(split: str) -> Tensor:
    """Indices (into the 1797 bundled images) of the digit images that ``split`` draws from.

    A fixed seeded 60/20/20 partition: the three splits are disjoint for every ``seed``.
    """
    _check_split(split)
    total = _digits()[0].shape[0]
    perm = torch.randperm(total, generator=torch.Generator().manual_seed(_SPLIT_SEED))
    n_train = round(_SPLIT_FRACTIONS[0] * total)
    n_val = round(_SPLIT_FRACTIONS[1] * total)
    bounds = {
        "train": (0, n_train),
        "val": (n_train, n_train + n_val),
        "test": (n_train + n_val, total),
    }
    lo, hi = bounds[split]
    return perm[lo:hi].sort().values


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"split={split!r} is not a split; choose one of {', '.join(SPLITS)}.")


def _generator(seed: int, split: str, stream: int) -> torch.Generator:
    # independent streams per (seed, split, purpose), so that e.g. the train and test colours
    # of one seed are not the same draws
    return torch.Generator().manual_seed(
        (int(seed) * 1_000_003 + SPLITS.index(split) * 1009 + stream) % (2**63 - 1)
    )


def _render(
    base: Tensor,
    *,
    image_size: int,
    rotation: float,
    shift: float,
    scale: float,
    pixel_noise: float,
    generator: torch.Generator,
) -> Tensor:
    """Re-render 8x8 digits at ``image_size`` with a random affine jitter plus pixel noise."""
    n = base.shape[0]
    u = torch.rand(n, 4, generator=generator) * 2 - 1  # uniform in [-1, 1]
    angle = u[:, 0] * rotation * torch.pi / 180
    zoom = 1 + u[:, 1] * scale  # > 1 makes the digit larger
    tx, ty = u[:, 2] * shift, u[:, 3] * shift  # in units of the half-width
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    # theta maps output coordinates to input coordinates (the inverse transform)
    theta = torch.stack(
        [
            torch.stack([cos, -sin, tx], dim=1),
            torch.stack([sin, cos, ty], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, [n, 1, image_size, image_size], align_corners=False)
    out = F.grid_sample(
        base.unsqueeze(1), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    if pixel_noise > 0:
        out = out + pixel_noise * torch.randn(out.shape, generator=generator)
    return out.contiguous()


def _colors(
    labels: Tensor,
    *,
    colors: str,
    color_correlation: float,
    color_noise: float,
    generator: torch.Generator,
) -> Tensor:
    n = labels.shape[0]
    n_classes = PALETTE.shape[0]
    if colors == "gray":
        return GRAY.expand(n, 3).clone()
    if colors == "correlated":
        tied = torch.rand(n, generator=generator) < color_correlation
        # a uniformly random *other* class for the untied examples
        other = (labels + torch.randint(1, n_classes, (n,), generator=generator)) % n_classes
        cls = torch.where(tied, labels, other)
    else:  # random: independent of the label
        cls = torch.randint(0, n_classes, (n,), generator=generator)
    rgb = PALETTE[cls]
    if color_noise > 0:
        rgb = rgb + color_noise * torch.randn(rgb.shape, generator=generator)
    return rgb.contiguous()


def _check_options(
    split: str, n: int | None, colors: str | None, color_correlation: float
) -> tuple[int, str]:
    _check_split(split)
    colors = _DEFAULT_COLORS[split] if colors is None else colors
    if colors not in COLOR_MODES:
        raise ConfigError(
            f"colors={colors!r} is not a colour mode; choose one of {', '.join(COLOR_MODES)}."
        )
    if not 0.0 <= color_correlation <= 1.0:
        raise ConfigError(f"color_correlation={color_correlation} must lie in [0, 1].")
    n = _DEFAULT_N[split] if n is None else int(n)
    if n < 1:
        raise ConfigError(f"n={n} must be a positive number of examples.")
    return n, colors


def colored_digits(
    split: str = "train",
    *,
    n: int | None = None,
    colors: str | None = None,
    color_correlation: float = 0.99,
    seed: int = 0,
    image_size: int = 16,
    rotation: float = 15.0,
    shift: float = 0.15,
    scale: float = 0.15,
    pixel_noise: float = 0.2,
    color_noise: float = 0.05,
) -> dict[str, Tensor]:
    """Two-modality digits with a colour shortcut: ``{"image", "color", "label"}``.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``; each draws from its own disjoint set
            of digit images (a fixed 60/20/20 partition of the 1797 bundled images).
        n: number of examples (default 3000 for train, 1000 for val and test). Images are
            cycled through in a seeded order, each example with its own jitter, so ``n``
            may exceed the number of images in the split.
        colors: how the colour relates to the label --
            ``"correlated"``: the class's palette colour with probability
            ``color_correlation``, otherwise a uniformly random other class's colour
            (default for train and val: the biased distribution);
            ``"random"``: a uniformly random palette colour, independent of the label
            (default for test: the shortcut is gone);
            ``"gray"``: every colour the same neutral gray :data:`GRAY`, no jitter (the
            colour carries no information at all).
        color_correlation: probability that the colour matches the class (``"correlated"``).
        seed: seeds every random draw; the same seed gives the same tensors bit for bit.
        image_size: side of the rendered image.
        rotation, shift, scale: the affine jitter -- at most ``rotation`` degrees, a shift of
            ``shift`` half-widths, a zoom of ``1 +- scale``.
        pixel_noise: standard deviation of the additive Gaussian pixel noise.
        color_noise: standard deviation of the Gaussian jitter added to the RGB colour.

    Returns:
        ``"image"`` float32 (n, 1, image_size, image_size), ``"color"`` float32 (n, 3),
        ``"label"`` int64 (n,).
    """
    n, colors = _check_options(split, n, colors, color_correlation)
    images, labels = _digits()
    pool = split_indices(split)
    g_order = _generator(seed, split, 0)
    # cycle through the split's images, each pass in a fresh seeded order
    passes = -(-n // pool.numel())
    order = torch.cat(
        [pool[torch.randperm(pool.numel(), generator=g_order)] for _ in range(passes)]
    )[:n]
    label = labels[order].clone()
    image = _render(
        images[order],
        image_size=image_size,
        rotation=rotation,
        shift=shift,
        scale=scale,
        pixel_noise=pixel_noise,
        generator=_generator(seed, split, 1),
    )
    color = _colors(
        label,
        colors=colors,
        color_correlation=color_correlation,
        color_noise=color_noise,
        generator=_generator(seed, split, 2),
    )
    return {"image": image, "color": color, "label": label}


def three_modality_digits(
    split: str = "train",
    *,
    n: int | None = None,
    colors: str | None = None,
    color_correlation: float = 0.99,
    seed: int = 0,
    noise_dim: int = 8,
    image_size: int = 16,
    rotation: float = 15.0,
    shift: float = 0.15,
    scale: float = 0.15,
    pixel_noise: float = 0.2,
    color_noise: float = 0.05,
) -> dict[str, Tensor]:
    """Three-modality digits: ``{"image", "color", "noise", "label"}``.

    ``"image"`` and ``"color"`` are exactly those of :func:`colored_digits` with the same
    arguments; ``"noise"`` is float32 (n, noise_dim) standard Gaussian noise, independent of
    the label and of the other modalities in every split (a modality with no information).
    """
    data = colored_digits(
        split,
        n=n,
        colors=colors,
        color_correlation=color_correlation,
        seed=seed,
        image_size=image_size,
        rotation=rotation,
        shift=shift,
        scale=scale,
        pixel_noise=pixel_noise,
        color_noise=color_noise,
    )
    if noise_dim < 1:
        raise ConfigError(f"noise_dim={noise_dim} must be at least 1.")
    count = data["label"].shape[0]
    noise = torch.randn(count, noise_dim, generator=_generator(seed, split, 3))
    return {"image": data["image"], "color": data["color"], "noise": noise, "label": data["label"]}
