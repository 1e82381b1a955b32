"""Device choice and moving a user's model there and back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .errors import ConfigError

__all__ = ["resolve_device", "model_device", "on_device"]


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
