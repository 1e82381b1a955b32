"""Device choice, moving a user's model there and back, forward-pass precision, and chunk
sizes that adapt to the device's memory."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TypeVar

import torch
from torch import nn

from ..errors import ConfigError, ModelOutputError
from .options import PRECISIONS, AuditOptions, check_choice

__all__ = [
    "resolve_device",
    "model_device",
    "on_device",
    "autocast_for",
    "is_out_of_memory",
    "run_with_oom_retry",
    "auto_max_rows",
]

T = TypeVar("T")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` is CUDA when available, else CPU; anything else is checked as given."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"Unknown device {device!r} ({exc}); use auto, cpu, cuda or cuda:N.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"Device {device!r} was asked for but CUDA is not available here; use --device auto or cpu."
        )
    return dev


def model_device(model: nn.Module) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


@contextmanager
def on_device(model: nn.Module, device: torch.device, *, train: bool = False) -> Iterator[nn.Module]:
    """Within the context the model is on ``device`` in eval (or train) mode; on exit it goes
    back to where it was, in the mode it was in."""
    home, was_training = model_device(model), model.training
    model.to(device)
    model.train(train)
    try:
        yield model
    finally:
        model.to(home)
        model.train(was_training)


_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_for(device: torch.device | str, precision: str) -> AbstractContextManager[None]:
    """The forward-pass precision context: ``fp32`` is a no-op anywhere; ``bf16`` and ``fp16``
    are torch autocast on CUDA; on CPU only ``bf16`` (torch's CPU autocast type, which lets
    CI exercise the reduced-precision path); ``fp16`` on CPU is refused.

    Divergences and estimators are computed from the logits cast to float64 outside it.
    """
    check_choice("precision", precision, PRECISIONS)
    dev = torch.device(device)
    if precision == "fp32":
        return nullcontext()
    dtype = _AUTOCAST_DTYPES[precision]
    if dev.type == "cuda":
        if dtype is torch.bfloat16 and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            raise ConfigError(
                "precision 'bf16' needs a GPU with bfloat16 support (Ampere or newer); "
                "use precision 'fp16' or 'fp32'."
            )
        return torch.autocast("cuda", dtype=dtype)
    if dev.type == "cpu" and dtype is torch.bfloat16:
        return torch.autocast("cpu", dtype=dtype)
    raise ConfigError(
        f"precision {precision!r} is not available on {dev.type}: use precision 'fp32' "
        "(or 'bf16' on CPU; 'fp16' is for CUDA devices)."
    )


def is_out_of_memory(exc: BaseException) -> bool:
    """A device (or host) allocation failure: CUDA's OutOfMemoryError, or the RuntimeError
    the CPU and MPS allocators raise."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("out of memory", "can't allocate memory", "not enough memory")
    )


def _release_cached_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_with_oom_retry(
    fn: Callable[[int], T], max_rows: int, on_halve: Callable[[int, int], None] | None = None
) -> T:
    """``fn(max_rows)``; on an out-of-memory error free the cache, halve the rows, tell
    ``on_halve(old_rows, new_rows)`` and try again, down to one row (then the error is
    raised as a :class:`ModelOutputError`, the forward pass failing). Other errors pass through.

    ``fn`` must be restartable (it recomputes its chunk from scratch); the caller keeps the
    halved size for later chunks through ``on_halve``.
    """
    rows = max_rows
    while True:
        failed = False
        try:
            return fn(rows)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            if rows <= 1:
                raise ModelOutputError(
                    f"Out of memory even at max_rows 1 ({type(exc).__name__}: {exc}). Use a "
                    "smaller model or batch, a device with more memory, or precision 'bf16'."
                ) from exc
            failed = True
        if failed:  # outside the except block: the traceback no longer pins the tensors
            _release_cached_memory()
            halved = max(1, rows // 2)
            if on_halve is not None:
                on_halve(rows, halved)
            rows = halved


def auto_max_rows(
    model: nn.Module,
    bytes_per_row_estimate: int,
    device: torch.device | str,
    *,
    fraction: float = 0.5,
    cap: int = 1 << 20,
) -> int:
    """A chunk size (rows of the expanded batch) that fits ``fraction`` of the free memory
    of a CUDA ``device`` (``torch.cuda.mem_get_info``), counting the model's parameters as
    used if they are not there yet. On other devices: the ``max_rows`` default of
    :class:`AuditOptions`."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return int(AuditOptions.max_rows)
    free, _total = torch.cuda.mem_get_info(dev)
    if model_device(model) != dev:
        free -= sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    rows = int(max(free, 0) * fraction) // max(int(bytes_per_row_estimate), 1)
    return max(1, min(rows, cap))
