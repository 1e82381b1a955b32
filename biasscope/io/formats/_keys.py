"""Matching a checkpoint's keys to a factory's model: finding the state dict inside a
checkpoint, the key prefix to strip (Lightning's ``model.``, DataParallel's ``module.``),
and a message naming the missing, unexpected or mis-shaped tensors."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .._sources import first_line
from ...errors import ModelLoadError
from ._base import list_keys

__all__ = ["WRAPPER_KEYS", "find_state_dict", "load_into"]

# keys under which checkpoints commonly keep the model's state dict (Lightning: "state_dict")
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")


def _is_state_dict(obj: Any) -> bool:
    if not isinstance(obj, Mapping) or not obj:
        return False
    if not all(isinstance(k, str) for k in obj):
        return False
    return any(isinstance(v, Tensor) for v in obj.values()) and all(
        isinstance(v, Tensor) or k.endswith("_extra_state") for k, v in obj.items()
    )


def find_state_dict(obj: Any) -> tuple[str | None, dict[str, Any]] | None:
    """``(wrapper key or None, state dict)`` found in a loaded checkpoint, else None."""
    if _is_state_dict(obj):
        return None, dict(obj)
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if key in obj and _is_state_dict(obj[key]):
                return key, dict(obj[key])
    return None


def _candidate_prefixes(keys: Iterable[str]) -> list[str]:
    found: set[str] = set()
    for k in keys:
        parts = k.split(".")
        for i in range(1, len(parts)):
            found.add(".".join(parts[:i]) + ".")
    return sorted(found, key=len)


def _shapes_match(stripped: Mapping[str, Any], reference: Mapping[str, Any]) -> bool:
    return all(
        not (isinstance(v, Tensor) and isinstance(reference[k], Tensor))
        or v.shape == reference[k].shape
        for k, v in stripped.items()
    )


def _strip(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _choose_prefix(state: Mapping[str, Any], reference: Mapping[str, Any]) -> tuple[str, str]:
    """The key prefix to strip so the checkpoint's keys become the model's, and a verdict:
    ``"ok"``, ``"shapes"`` (keys match, shapes do not) or ``"keys"`` (no prefix matches).

    Prefixes shared by every key (Lightning's ``model.``, DataParallel's ``module.``) are
    tried first; then prefixes of a subset of the keys (a LightningModule that also holds a
    loss or a teacher), whose tensors must match the model's shapes too; the shortest wins.
    For a failure, the returned prefix is the all-keys prefix with the largest key overlap.
    """
    target = set(reference)
    keys = list(state)
    full = [""] + [c for c in _candidate_prefixes(keys) if all(k.startswith(c) for k in keys)]
    shape_fail: str | None = None
    for prefix in full:
        stripped = _strip(state, prefix)
        if set(stripped) == target:
            if _shapes_match(stripped, reference):
                return prefix, "ok"
            shape_fail = prefix if shape_fail is None else shape_fail
    if shape_fail is not None:
        return shape_fail, "shapes"
    for prefix in _candidate_prefixes(keys):
        if prefix in full:
            continue
        stripped = _strip(state, prefix)
        if set(stripped) == target and _shapes_match(stripped, reference):
            return prefix, "ok"
    best = max(full, key=lambda c: (len(target & set(_strip(state, c))), -len(c)))
    return best, "keys"


def load_into(module: nn.Module, state: dict[str, Any], p: Path, factory: str) -> str:
    """Load ``state`` into ``module`` (strictly); returns the prefix stripped from its keys."""
    reference = module.state_dict()
    target = set(reference)
    prefix, verdict = _choose_prefix(state, reference)
    stripped = _strip(state, prefix)
    strip_note = f" after stripping the prefix {prefix!r}" if prefix else ""
    if verdict == "keys":
        missing = target - set(stripped)
        unexpected = set(stripped) - target
        raise ModelLoadError(
            f"The state dict in {str(p)!r} does not match the model of factory {factory!r}"
            f"{strip_note}. Missing in the file ({len(missing)}): {list_keys(missing) or 'none'}. "
            f"Unexpected in the file ({len(unexpected)}): {list_keys(unexpected) or 'none'}. "
            "Check that the factory builds the same architecture (and configuration) the "
            "weights were trained with."
        )
    if verdict == "shapes":
        mismatched = [
            f"{k}: file {tuple(v.shape)} vs model {tuple(reference[k].shape)}"
            for k, v in stripped.items()
            if isinstance(v, Tensor) and isinstance(reference[k], Tensor)
            and v.shape != reference[k].shape
        ]
        raise ModelLoadError(
            f"The state dict in {str(p)!r} has the model's keys{strip_note} but different shapes: "
            f"{'; '.join(mismatched[:10])}. Check that the factory {factory!r} builds the model "
            "with the same sizes (hidden width, number of classes, vocabulary) as the trained one."
        )
    try:
        module.load_state_dict(stripped, strict=True)
    except Exception as exc:
        raise ModelLoadError(
            f"Loading the state dict from {str(p)!r} into the model of factory {factory!r} "
            f"failed: {first_line(exc)}. Check that the factory builds the same architecture."
        ) from exc
    return prefix
