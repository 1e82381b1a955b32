"""Means with 95% confidence intervals.

Per-example measures (functional entropy, variance and their bounds) get a bias-corrected and
accelerated (BCa) bootstrap interval of the mean over examples (scipy, 2000 resamples,
seeded), which corrects for the skew of these non-negative, heavy-tailed values; the
permutation repeats get a Student-t interval.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats

from ..results import Estimate

__all__ = ["mean_interval"]

BOOTSTRAP_RESAMPLES = 2000


def mean_interval(
    values: np.ndarray, *, method: str = "t", confidence: float = 0.95, seed: int = 0
) -> Estimate:
    """The mean of ``values`` with a confidence interval (nan bounds for fewer than 2 values;
    a zero-width interval when every value is the same).

    ``method="t"``: Student-t, for roughly symmetric values such as R permutation repeats.
    ``method="bootstrap"``: BCa bootstrap (percentile bootstrap where BCa is undefined),
    for per-example measures: skewed and heavy-tailed, where a t-interval can dip below 0.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    mean = float(values.mean())
    if values.size < 2:
        return Estimate(mean, float("nan"), float("nan"))
    if np.all(values == values[0]):
        return Estimate(mean, mean, mean)
    if method == "t":
        sem = float(values.std(ddof=1)) / np.sqrt(values.size)
        low, high = stats.t.interval(confidence, values.size - 1, loc=mean, scale=sem)
        return Estimate(mean, float(low), float(high))
    low, high = _bootstrap(values, confidence, seed, "BCa")
    if not (math.isfinite(low) and math.isfinite(high)):
        low, high = _bootstrap(values, confidence, seed, "percentile")
    return Estimate(mean, low, high)


def _bootstrap(values: np.ndarray, confidence: float, seed: int, method: str) -> tuple[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate resamples are reported as nan bounds
        res = stats.bootstrap(
            (values,), np.mean, confidence_level=confidence, n_resamples=BOOTSTRAP_RESAMPLES,
            method=method, vectorized=True, batch=max(1, 4_000_000 // values.size),
            rng=np.random.default_rng(seed),
        )
    low, high = res.confidence_interval
    return float(low), float(high)
