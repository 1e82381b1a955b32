"""Means with 95% confidence intervals."""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats

from .results import Estimate

__all__ = ["mean_interval"]


def mean_interval(
    values: np.ndarray, *, method: str = "t", confidence: float = 0.95, seed: int = 0
) -> Estimate:
    """The mean of ``values`` with a confidence interval (nan bounds for fewer than 2 values).

    ``method="t"``: Student-t, for roughly symmetric values such as R permutation repeats.
    ``method="bootstrap"``: percentile bootstrap (scipy, 2000 resamples, seeded), for
    per-example measures: non-negative and heavy-tailed, where a t-interval can dip below 0.
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
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # degenerate resamples are fine for percentiles
            res = stats.bootstrap(
                (values,), np.mean, confidence_level=confidence, n_resamples=2000,
                method="percentile", vectorized=True, batch=max(1, 4_000_000 // values.size),
                rng=np.random.default_rng(seed),
            )
        low, high = res.confidence_interval
    return Estimate(mean, float(low), float(high))
