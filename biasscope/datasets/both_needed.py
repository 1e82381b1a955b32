"""Both-needed digits: the colour carries a genuine part of the label *and* a hue shortcut.

The label is ``(digit + 5 * bright) % 10``: the digit comes from the image (the shape of
:func:`colored_digits`), the bit ``bright`` from the colour's brightness (value 1.0 or 0.5
of a fully saturated hue). In training the colour's *hue* is also tied to the label (hue
index = label with probability ``hue_correlation``), a shortcut that reads the whole label
from the colour; at test the hue is uniformly random. So:

- a model that drops the colour knows the digit but not the bit: at most ~50% (chance on it);
- a model that follows the hue scores ~100% in training and ~10% at decorrelated test;
- the intended model reads the shape from the image and the brightness from the colour.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError
from .colored_digits import _check_split, _generator, colored_digits

__all__ = ["both_needed", "HUE_MODES", "hue_rgb", "BRIGHT_VALUES"]

HUE_MODES = ("correlated", "random")
#: HSV value of the two brightness levels (bit 0, bit 1).
BRIGHT_VALUES = (1.0, 0.5)
_DEFAULT_HUES = {"train": "correlated", "val": "correlated", "test": "random"}


def hue_rgb(hue_index: Tensor, value: Tensor, n_hues: int = 10) -> Tensor:
    """Fully saturated RGB of hue ``hue_index / n_hues`` on the colour wheel at HSV ``value``."""
    h = hue_index.float() / n_hues * 6.0  # sector position in [0, 6)
    k = (torch.tensor([5.0, 3.0, 1.0]) + h[:, None]) % 6.0
    # HSV -> RGB with s = 1: v - v * max(0, min(k, 4 - k, 1))
    return value[:, None] * (1.0 - torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))


def both_needed(
    split: str = "train",
    *,
    n: int | None = None,
    hues: str | None = None,
    hue_correlation: float = 0.99,
    seed: int = 0,
    color_noise: float = 0.03,
    **image_options: float,
) -> dict[str, Tensor]:
    """Digits whose label needs the image (digit) and the colour (brightness bit), with a hue
    shortcut in training: ``{"image", "color", "label"}`` (image (n, 1, S, S), color (n, 3)).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (disjoint digit images, as in
            :func:`colored_digits`).
        n: number of examples (defaults as :func:`colored_digits`).
        hues: ``"correlated"`` (the hue index is the label with probability
            ``hue_correlation``, else another class's; default for train and val) or
            ``"random"`` (independent of the label; default for test).
        hue_correlation: probability that the hue matches the label (``"correlated"``).
        seed: seeds every draw.
        color_noise: standard deviation of the Gaussian jitter of the RGB colour.
        image_options: ``image_size``, ``rotation``, ``shift``, ``scale``, ``pixel_noise``
            of :func:`colored_digits`.
    """
    _check_split(split)
    hues = _DEFAULT_HUES[split] if hues is None else hues
    if hues not in HUE_MODES:
        raise ConfigError(f"hues={hues!r} is not a hue mode; choose one of {', '.join(HUE_MODES)}.")
    if not 0.0 <= hue_correlation <= 1.0:
        raise ConfigError(f"hue_correlation={hue_correlation} must lie in [0, 1].")
    base = colored_digits(split, n=n, colors="gray", seed=seed, color_noise=0.0, **image_options)
    digit = base["label"]
    count = digit.shape[0]
    g = _generator(seed, split, 4)
    bright = torch.randint(0, 2, (count,), generator=g)
    label = (digit + 5 * bright) % 10
    if hues == "correlated":
        tied = torch.rand(count, generator=g) < hue_correlation
        other = (label + torch.randint(1, 10, (count,), generator=g)) % 10
        hue = torch.where(tied, label, other)
    else:
        hue = torch.randint(0, 10, (count,), generator=g)
    value = torch.tensor(BRIGHT_VALUES)[bright]
    color = hue_rgb(hue, value)
    if color_noise > 0:
        color = color + color_noise * torch.randn(color.shape, generator=g)
    return {"image": base["image"], "color": color.contiguous(), "label": label}
