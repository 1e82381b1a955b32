"""What every model format shares: the loaded-model record, the load and save requests,
quiet library loggers, atomic file and directory writes, and the corrupt-file message."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ...runtime._files import atomic_path
from .._sources import first_line
from ...errors import BiasscopeError, ModelLoadError

__all__ = [
    "LoadedModel", "LoadRequest", "SaveRequest", "SUPPORTED_MODELS", "corrupt", "quiet_jit",
    "quiet_logger", "quiet_transformers", "atomic_file", "atomic_dir", "set_eval", "list_keys",
    "naming",
]

SUPPORTED_MODELS = (
    "TorchScript (torch.jit.save), a torch.export program (.pt2, torch.export.save), "
    "a state dict or checkpoint (.pt/.pth/.ckpt/.safetensors) with its model factory, a "
    "pickled module (torch.save(model)) allowed by trust_pickle, or a Hugging Face "
    "save_pretrained directory"
)


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model (in eval mode) and what is needed to save a fine-tuned copy back.

    Attributes:
        module: the model.
        kind: one of :data:`biasscope.io.loading.MODEL_KINDS`.
        path: the file or directory it came from.
        sha256: :func:`biasscope.io._sources.fingerprint` of ``path``.
        factory: the factory string (state dicts only).
        hf_class: the transformers class used (Hugging Face directories only).
        wrapper_key: the checkpoint key holding the state dict (None: the file is the state dict).
        key_prefix: the prefix stripped from the checkpoint's keys (e.g. ``"model."``).
        container: ``"torch"`` or ``"safetensors"`` (state dicts only).

    An exported program's graph keeps the train/eval behaviour (dropout, batch norm) it was
    exported with; its ``.train()``/``.eval()`` only set the flags.
    """

    module: nn.Module
    kind: str
    path: Path
    sha256: str
    factory: str | None = None
    hf_class: str | None = None
    wrapper_key: str | None = None
    key_prefix: str = ""
    container: str | None = None
    # the checkpoint minus the model's own tensors, original key order, export sample inputs
    checkpoint: Any = field(default=None, repr=False, compare=False)
    key_order: tuple[str, ...] = field(default=(), repr=False, compare=False)
    example_inputs: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class LoadRequest:
    """The options of :func:`biasscope.io.loading.load_model`, handed to a format's ``load``.

    ``forced`` is True when the caller chose the kind (``kind=...``) instead of detection."""

    digest: str
    map_location: Any = "cpu"
    factory: str | None = None
    trust_pickle: bool = False
    hf_class: str | None = None
    forced: bool = False


@dataclass(frozen=True)
class SaveRequest:
    """The export inputs of :func:`biasscope.io.loading.save_model` (used by ``.pt2`` only)."""

    example_inputs: tuple[Any, ...] | None = None
    example_kwargs: dict[str, Any] | None = None
    dynamic_shapes: Any = None


def set_eval(module: nn.Module) -> None:
    """Eval mode by the flags alone (exported GraphModules override ``.eval()`` to raise)."""
    nn.Module.train(module, False)


def list_keys(keys: Iterable[str], limit: int = 10) -> str:
    items = sorted(keys)
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def naming(error: BiasscopeError, parameter: str) -> BiasscopeError:
    """``error`` marked with the parameter its message names (a front end shows its flag)."""
    error.parameter = parameter  # type: ignore[attr-defined]
    return error


def corrupt(p: Path, what: str, exc: BaseException) -> ModelLoadError:
    return naming(ModelLoadError(
        f"Cannot read {str(p)!r} as {what} ({type(exc).__name__}: {first_line(exc)}). The file "
        f"may be corrupt, truncated or of another format. Supported: {SUPPORTED_MODELS}; "
        "set kind to force one."
    ), "kind")


@contextmanager
def quiet_jit() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*TorchScript.*", category=DeprecationWarning)
        yield


@contextmanager
def quiet_logger(*names: str) -> Iterator[None]:
    """Silence libraries' log records (a failure becomes our own error message instead)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 10)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """No progress bars or load reports from transformers (the CLI shows its own progress)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def atomic_file(out: Path, write: Callable[[Path], None], *, suffix: str = "") -> None:
    """Write one file through a temporary sibling renamed into place."""
    try:
        with atomic_path(out, suffix=".tmp" + (suffix or out.suffix)) as tmp:
            write(tmp)
    except Exception as exc:
        if isinstance(exc, BiasscopeError):
            raise
        raise ModelLoadError(
            f"Writing the model to {str(out)!r} failed ({type(exc).__name__}: {first_line(exc)}). "
            "Nothing was written; check the path and free disk space."
        ) from exc


def atomic_dir(out: Path, write: Callable[[Path], None]) -> None:
    """Write a directory into a temporary sibling, then swap it in (the old one removed)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    old: Path | None = None
    try:
        write(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.rmdir(old)
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException as exc:
        if old is not None and not out.exists():
            os.replace(old, out)
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, BiasscopeError) or not isinstance(exc, Exception):
            raise
        raise ModelLoadError(
            f"Writing the model directory {str(out)!r} failed ({type(exc).__name__}: "
            f"{first_line(exc)}). Nothing was replaced; check the path and free disk space."
        ) from exc
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
