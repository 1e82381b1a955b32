"""Bundled benchmark data and models: digits with a planted colour shortcut (built offline
from scikit-learn's UCI handwritten digits), small late-fusion models and a plain trainer."""

from __future__ import annotations

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
    "TwoModalityNet",
    "ThreeModalityNet",
    "train_plain",
    "accuracy",
    "PALETTE",
    "GRAY",
    "SPLITS",
    "COLOR_MODES",
]
