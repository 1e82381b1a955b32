"""Fix checkpoints as tensors + JSON, never a pickle: one safetensors file whose tensors are
every tensor of the training state and whose header metadata holds the rest of the state as
JSON (with each tensor replaced by a reference to its name). Loading it runs no code from the
file, so ``resume`` is safe on a checkpoint from anywhere. Written atomically."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..runtime._files import write_atomic
from ..errors import ConfigError

__all__ = ["CHECKPOINT_NAME", "LEGACY_CHECKPOINT_NAME", "CheckpointStore", "content_sha256", "pack", "unpack"]

CHECKPOINT_NAME = "fix_checkpoint.safetensors"
#: the pickle-based checkpoint of earlier versions: never loaded (it could run code)
LEGACY_CHECKPOINT_NAME = "fix_checkpoint.pt"
_FORMAT = "biasscope-fix-checkpoint"
_VERSION = 2
_META_KEY = "biasscope"


def content_sha256(obj: Any) -> str:
    """The sha256 of nested containers of tensors and plain values (a state dict, a list of
    batches): names, dtypes, shapes and bytes, so any change of weights or data shows."""
    import hashlib

    digest = hashlib.sha256()

    def walk(x: Any) -> None:
        if isinstance(x, Tensor):
            t = x.detach().cpu().contiguous()
            digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            try:
                digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
            except (RuntimeError, TypeError):  # a layout without plain bytes (sparse, quantized)
                digest.update(repr(t.tolist() if t.layout == torch.strided else t).encode())
        elif isinstance(x, dict):
            digest.update(b"{")
            for k, v in x.items():
                digest.update(repr(k).encode())
                walk(v)
            digest.update(b"}")
        elif isinstance(x, (list, tuple)):
            digest.update(b"[")
            for v in x:
                walk(v)
            digest.update(b"]")
        else:
            digest.update(repr(x).encode())

    walk(obj)
    return digest.hexdigest()


def pack(state: Any) -> tuple[Any, dict[str, Tensor]]:
    """Split a nested state into a JSON-able skeleton and its tensors (by generated name).

    Dicts with non-string keys (an optimizer's per-parameter state) and tuples keep their
    types through tagged forms; non-finite floats are written as strings.
    """
    tensors: dict[str, Tensor] = {}

    def walk(x: Any) -> Any:
        if isinstance(x, Tensor):
            name = f"t{len(tensors)}"
            tensors[name] = x.detach().cpu().contiguous().clone()
            return {"__tensor__": name}
        if isinstance(x, dict):
            if all(isinstance(k, str) for k in x):
                return {"__dict__": {k: walk(v) for k, v in x.items()}}
            return {"__items__": [[walk(k), walk(v)] for k, v in x.items()]}
        if isinstance(x, (list, tuple)):
            return {"__tuple__" if isinstance(x, tuple) else "__list__": [walk(v) for v in x]}
        if isinstance(x, float) and not math.isfinite(x):
            return {"__float__": repr(x)}
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        if isinstance(x, Path):
            return str(x)
        raise TypeError(f"cannot checkpoint a {type(x).__name__}")

    return walk(state), tensors


def unpack(skeleton: Any, tensors: dict[str, Tensor]) -> Any:
    """The inverse of :func:`pack`."""

    def walk(x: Any) -> Any:
        if not isinstance(x, dict):
            return x
        ((tag, value),) = x.items()
        if tag == "__tensor__":
            return tensors[value]
        if tag == "__dict__":
            return {k: walk(v) for k, v in value.items()}
        if tag == "__items__":
            return {walk(k): walk(v) for k, v in value}
        if tag == "__tuple__":
            return tuple(walk(v) for v in value)
        if tag == "__list__":
            return [walk(v) for v in value]
        if tag == "__float__":
            return float(value)
        raise ValueError(f"unknown tag {tag!r}")

    return walk(skeleton)


class CheckpointStore:
    """The checkpoint of one fix run in ``folder`` (``fix_checkpoint.safetensors``)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / CHECKPOINT_NAME

    def exists(self) -> bool:
        return self.path.is_file()

    def save(self, state: dict[str, Any]) -> Path:
        """Write ``state`` atomically (a temp file renamed: never a half-written checkpoint)."""
        from safetensors.torch import save

        skeleton, tensors = pack(state)
        header = json.dumps({"format": _FORMAT, "version": _VERSION, "state": skeleton})
        return write_atomic(self.path, save(tensors, metadata={_META_KEY: header}))

    def load(self) -> dict[str, Any]:
        """The state saved by :meth:`save`; refuses anything else with a message that says what
        to do. A legacy pickle checkpoint is never opened."""
        if not self.exists():
            legacy = self.folder / LEGACY_CHECKPOINT_NAME
            hint = (
                f" {legacy} is a checkpoint of an earlier version (a pickle, which could run code "
                "when loaded): it is not read; start afresh with resume=False."
                if legacy.exists()
                else ""
            )
            raise ConfigError(f"No fix checkpoint in {self.folder}.{hint}")
        from safetensors import safe_open
        from safetensors.torch import load

        try:
            with safe_open(str(self.path), framework="pt") as handle:
                header = json.loads((handle.metadata() or {})[_META_KEY])
            tensors = load(self.path.read_bytes())
        except Exception as exc:  # truncated, bit-flipped, not safetensors, no header
            raise ConfigError(
                f"Cannot read the checkpoint {self.path} ({type(exc).__name__}: {exc}); delete it "
                "or start afresh with resume=False."
            ) from None
        if header.get("format") != _FORMAT or header.get("version") != _VERSION:
            raise ConfigError(
                f"{self.path} is not a biasscope fix checkpoint of this version; delete it or "
                "start afresh with resume=False."
            )
        try:
            return unpack(header["state"], tensors)
        except (KeyError, ValueError, TypeError) as exc:
            raise ConfigError(
                f"The checkpoint {self.path} is damaged ({exc}); delete it or resume=False."
            ) from None
