"""The model-format registry: one module per format, each with ``load(path, LoadRequest)``
and ``save(loaded, module, out, SaveRequest)``, registered under its kind.

Use :func:`biasscope.io.loading.load_model` / :func:`~biasscope.io.loading.save_model`; this
package is their private machinery."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from . import export, hf, pickled, state_dict, torchscript
from ._base import LoadedModel, LoadRequest, SaveRequest

__all__ = ["Format", "FORMATS", "register", "LoadedModel", "LoadRequest", "SaveRequest"]


@dataclass(frozen=True)
class Format:
    """A model format: its kind, a loader and a saver (``save`` may write a directory)."""

    kind: str
    load: Callable[[Path, LoadRequest], LoadedModel]
    save: Callable[[LoadedModel, nn.Module, Path, SaveRequest], None]
    directory: bool = False


FORMATS: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    """Add ``fmt`` under its kind (a later registration of the same kind replaces it)."""
    FORMATS[fmt.kind] = fmt
    return fmt


for _module in (torchscript, export, state_dict, pickled):
    register(Format(_module.KIND, _module.load, _module.save))
register(Format(hf.KIND, hf.load, hf.save, directory=True))
