"""Comparing two audit results number by number (invariance and distributed tests)."""

from __future__ import annotations

import math
from typing import Any

SKIPPED = ("settings", "provenance")


def differences(a: Any, b: Any, *, rel: float = 1e-5, abs_: float = 1e-10, path: str = "") -> list[str]:
    """Where ``a`` and ``b`` (to_dict() trees) differ: numbers beyond rel/abs, anything else unequal."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(set(a) ^ set(b))}"]
        return [d for k in a if k not in SKIPPED or path for d in differences(a[k], b[k], rel=rel, abs_=abs_, path=f"{path}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, rel=rel, abs_=abs_, path=f"{path}[{i}]")]
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return [] if a is b else [f"{path}: {a} != {b}"]
        if math.isnan(a) and math.isnan(b):
            return []
        ok = math.isclose(a, b, rel_tol=rel, abs_tol=abs_)
        return [] if ok else [f"{path}: {a!r} != {b!r}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def count_numbers(tree: Any) -> int:
    if isinstance(tree, dict):
        return sum(count_numbers(v) for k, v in tree.items() if k not in SKIPPED)
    if isinstance(tree, (list, tuple)):
        return sum(count_numbers(v) for v in tree)
    return int(isinstance(tree, float))
