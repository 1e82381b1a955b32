"""Bundled benchmark data and models: digits with a planted colour shortcut (built offline
from scikit-learn's UCI handwritten digits), a both-needed variant where the colour also
carries part of the label, small late-fusion models and a plain trainer.

:data:`BENCHMARKS` names each two-modality benchmark (``"colored"``, ``"both"``): a function
``(split, *, n=None, seed=0, decorrelated=None) -> {"image", "color", "label"}`` where
``decorrelated`` picks the shortcut-free colours (True), the biased ones (False) or the
split's default (None: biased for train/val, decorrelated for test).

May import: errors.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from ..errors import ConfigError
from .both_needed import BRIGHT_VALUES, HUE_MODES, both_needed, hue_rgb
from .colored_digits import (
    COLOR_MODES,
    GRAY,
    PALETTE,
    SPLITS,
    colored_digits,
    three_modality_digits,
)
from .models import ThreeModalityNet, TwoModalityNet, accuracy, train_plain

__all__ = [
    "colored_digits",
    "three_modality_digits",
    "both_needed",
    "benchmark_data",
    "BENCHMARKS",
    "TwoModalityNet",
    "ThreeModalityNet",
    "train_plain",
    "accuracy",
    "PALETTE",
    "GRAY",
    "SPLITS",
    "COLOR_MODES",
    "HUE_MODES",
    "BRIGHT_VALUES",
    "hue_rgb",
]


def _colored(split: str, *, n: int | None = None, seed: int = 0, decorrelated: bool | None = None):
    colors = None if decorrelated is None else ("random" if decorrelated else "correlated")
    return colored_digits(split, n=n, seed=seed, colors=colors)


def _both(split: str, *, n: int | None = None, seed: int = 0, decorrelated: bool | None = None):
    hues = None if decorrelated is None else ("random" if decorrelated else "correlated")
    return both_needed(split, n=n, seed=seed, hues=hues)


#: benchmark name -> data function (see the module docstring); both fit ``TwoModalityNet()``.
BENCHMARKS: dict[str, Callable[..., dict[str, Tensor]]] = {"colored": _colored, "both": _both}


def benchmark_data(
    name: str, split: str, *, n: int | None = None, seed: int = 0, decorrelated: bool | None = None
) -> dict[str, Tensor]:
    """The ``split`` of benchmark ``name`` (a key of :data:`BENCHMARKS`)."""
    if name not in BENCHMARKS:
        raise ConfigError(f"Unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}.")
    return BENCHMARKS[name](split, n=n, seed=seed, decorrelated=decorrelated)
