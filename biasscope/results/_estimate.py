"""A mean with its confidence interval: the number every measure reports."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["Estimate"]


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95% confidence interval."""

    mean: float
    ci_low: float
    ci_high: float

    @property
    def excludes_zero(self) -> bool:
        return self.ci_low > 0.0 or self.ci_high < 0.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Estimate:
        """The JSON form back (``None`` -> NaN: a value that was not finite)."""
        return cls(*(math.nan if d[k] is None else float(d[k]) for k in ("mean", "ci_low", "ci_high")))
