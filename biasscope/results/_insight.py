"""Result types of the probe (information available vs used) and of the attributions
inside a modality, with their JSON round trip. Torch-free, so that ``results`` and the
renderers can import them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._estimate import Estimate

__all__ = ["ProbeResult", "Attribution", "probe_from_dict", "attribution_from_dict", "above_chance"]


def above_chance(value: float, chance: float, top: float = 1.0) -> float:
    """(value - chance) / (top - chance), clipped to [0, 1]; 0 when top <= chance."""
    return min(max((value - chance) / (top - chance), 0.0), 1.0) if top > chance else 0.0


@dataclass(frozen=True)
class ProbeResult:
    """What a modality alone says about the label, and what the model loses without it.

    Attributes:
        accuracy: the probe's cross-validated accuracy with a Wilson 95% interval.
        chance: the majority-class rate of the probed examples.
        folds: cross-validation folds (0 when only one class is present: nothing to learn).
        dims: features given to the classifier (after pooling and PCA); ``raw_dims`` before.
        model_accuracy: the model's accuracy on the audit set.
        model_accuracy_permuted: its accuracy with this modality permuted (95% interval).
    """

    modality: str
    site: str
    accuracy: Estimate
    chance: float
    folds: int
    n_examples: int
    dims: int
    raw_dims: int
    model_accuracy: float
    model_accuracy_permuted: Estimate

    @property
    def informative(self) -> bool:
        """The probe beats chance: its interval's lower end is above the majority rate."""
        return self.accuracy.ci_low > self.chance

    @property
    def available(self) -> float:
        """Label information available, in [0, 1]: (probe - chance) / (1 - chance)."""
        return above_chance(self.accuracy.mean, self.chance)

    @property
    def used(self) -> float:
        """Label information used, in [0, 1]: the share of the model's above-chance accuracy
        lost when the modality is permuted, (acc - acc_permuted) / (acc - chance)."""
        lost = self.model_accuracy - self.model_accuracy_permuted.mean
        headroom = self.model_accuracy - self.chance
        return min(max(lost / headroom, 0.0), 1.0) if headroom > 0 else 0.0


@dataclass(frozen=True)
class Attribution:
    """One example's attribution over one modality's features at its audit site.

    Attributes:
        example: the example's index in the audit set (over all batches, in order).
        target: the class attributed (the model's prediction).
        method: ``"integrated_gradients"`` or ``"feature_ablation"``.
        kind: ``"image"`` (``values`` is H x W, non-negative), ``"tokens"`` (one signed
            score per token, ``tokens`` their text or ids) or ``"vector"`` (one per feature).
        shape: the shape of the site's representation for one example.
        convergence_delta: IG's completeness error (sum of attributions minus the logit
            difference to the baseline); None for feature ablation.
        selected: why the example was chosen (``"highest"`` or ``"lowest"`` functional
            entropy, from :func:`~biasscope.measuring.explain.choose_examples`), or None.
        image: for an image-like input site, the example itself as H x W x 3 values in
            [0, 1] (min-max scaled; grey repeated), drawn under the heatmap; else None.
    """

    modality: str
    site: str
    example: int
    target: int
    method: str
    kind: str
    values: list[Any]
    shape: list[int]
    tokens: list[str] | None = None
    convergence_delta: float | None = None
    selected: str | None = None
    image: list[Any] | None = None

    @property
    def array(self) -> np.ndarray:
        return np.asarray(self.values, dtype=np.float64)


#: derived keys written beside a probe's fields in audit.json (for JSON readers)
DERIVED = ("informative", "available", "used")


def probe_from_dict(d: dict[str, Any]) -> ProbeResult:
    """The inverse of ``dataclasses.asdict`` (after a JSON round trip: None for nan; the
    derived keys ignored)."""
    d = {k: v for k, v in d.items() if k not in DERIVED}
    return ProbeResult(**{
        **d, "accuracy": Estimate.from_dict(d["accuracy"]), "model_accuracy_permuted": Estimate.from_dict(d["model_accuracy_permuted"]),
    })


def attribution_from_dict(d: dict[str, Any]) -> Attribution:
    """The inverse of ``dataclasses.asdict``."""
    return Attribution(**d)
