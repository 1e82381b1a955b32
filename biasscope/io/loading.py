"""Model loading and saving: TorchScript, ``torch.export`` programs, state dicts with a
factory, pickled modules (opt-in), Hugging Face directories. Every failure raises a
:class:`~biasscope.errors.ModelLoadError` whose message names the problem and the fix; the
input file is never modified, and a fine-tuned model is saved back in the input's format.

Each format lives in its own module under :mod:`biasscope.io.formats` (the registry); no
file's pickled content is run unless ``trust_pickle=True``."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._exported import ExportedModule
from ._sources import check_regular, fingerprint
from ..errors import ModelLoadError
from .formats import FORMATS, LoadedModel, LoadRequest, SaveRequest
from .formats._base import SUPPORTED_MODELS, naming, set_eval

__all__ = ["LoadedModel", "load_model", "save_model", "ExportedModule", "MODEL_KINDS"]

#: the model formats load_model reads (the keys of biasscope.io.formats.FORMATS)
MODEL_KINDS = tuple(FORMATS)


def load_model(
    path: str | os.PathLike[str],
    *,
    factory: str | None = None,
    kind: str | None = None,
    trust_pickle: bool = False,
    hf_class: str | None = None,
    map_location: str | torch.device = "cpu",
) -> LoadedModel:
    """Load a model file or directory; the kind is detected from its contents.

    Args:
        path: TorchScript, ``.pt2``, state dict / checkpoint, pickled module, or a Hugging Face
            ``save_pretrained`` directory.
        factory: ``"package.module:function"`` or ``"file.py:function"`` building the module a
            state dict is loaded into (required for state dicts).
        kind: force one of :data:`MODEL_KINDS` instead of detecting it.
        trust_pickle: allow unpickling Python objects stored in the file (a fully pickled
            module, a ``.pt2`` with pickled sample inputs or weights): runs code from the file.
        hf_class: transformers class name for a Hugging Face directory
            (default: ``architectures[0]`` of config.json).
        map_location: device the weights are loaded onto.
    """
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(
            f"Model file {str(p)!r} does not exist. Check the path (relative paths start from "
            f"{os.getcwd()})."
        )
    check_regular(p, what="model", error=ModelLoadError, folder_ok=True)
    if kind is not None and kind not in MODEL_KINDS:
        raise naming(ModelLoadError(
            f"Unknown kind={kind!r}. Use one of {', '.join(MODEL_KINDS)}, or leave it out to "
            "detect the format from the file."
        ), "kind")
    detected = kind or _detect_kind(p)
    if p.is_dir() and detected != "hf":
        raise ModelLoadError(
            f"{str(p)!r} is a directory without a config.json, so it is not a Hugging Face "
            f"model. Supported: {SUPPORTED_MODELS}."
        )
    request = LoadRequest(
        digest=fingerprint(p), map_location=map_location, factory=factory,
        trust_pickle=trust_pickle, hf_class=hf_class, forced=kind is not None,
    )
    loaded = FORMATS[detected].load(p, request)
    set_eval(loaded.module)
    return loaded


def _detect_kind(p: Path) -> str:
    """The kind a path looks like; a ``torch.save`` file (or anything unrecognised) is read
    as a state dict, whose loader hands a pickled module on to the pickle format."""
    if p.is_dir():
        return "hf" if (p / "config.json").is_file() else "unknown"
    if p.suffix == ".safetensors":
        return "state_dict"
    names = _zip_entries(p)
    if names is None:  # not a zip: a legacy torch.save file, or a damaged archive
        return "export" if p.suffix == ".pt2" else "state_dict"
    tails = {n.split("/", 1)[1] if "/" in n else n for n in names}
    if "archive_format" in tails or any(t.startswith("models/") for t in tails):
        return "export"
    if "constants.pkl" in tails or any(t.startswith("code/") for t in tails):
        return "torchscript"
    if p.suffix == ".pt2" or "serialized_exported_program.json" in tails:
        return "export"  # a pre-2.8 archive: the export loader says why it is refused
    return "state_dict"


def _zip_entries(p: Path) -> list[str] | None:
    try:
        with zipfile.ZipFile(p) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return None


def save_model(
    loaded: LoadedModel,
    module: nn.Module,
    dest: str | os.PathLike[str],
    *,
    example_inputs: tuple[Any, ...] | None = None,
    example_kwargs: dict[str, Any] | None = None,
    dynamic_shapes: Any = None,
) -> Path:
    """Write ``module`` (e.g. fine-tuned) to ``dest`` in the format ``loaded`` came in.

    TorchScript: ``torch.jit.save``. Export: re-exported with ``torch.export.export(module,
    example_inputs, example_kwargs, dynamic_shapes=...)`` in eval mode; without example inputs
    the sample inputs stored in the original ``.pt2`` are used (an error when it has none).
    State dict: the input's checkpoint structure (wrapper dict, key prefix, other entries) with
    the module's weights on CPU. Pickle: ``torch.save(module)``. HF: a ``save_pretrained``
    directory. The write is atomic; ``dest`` may not be (or contain, or lie in) the input.
    """
    out = Path(dest)
    src = loaded.path.resolve()
    target = out.resolve()
    if target == src or src in target.parents or target in src.parents:
        raise ModelLoadError(
            f"Refusing to write the model to {str(out)!r}: it is (or overlaps) the input "
            f"{str(loaded.path)!r}, and biasscope never modifies its input. Choose another "
            "destination (dest) for the model."
        )
    fmt = FORMATS.get(loaded.kind)
    if fmt is None:
        raise ModelLoadError(
            f"Unknown model kind {loaded.kind!r}; use one of {', '.join(MODEL_KINDS)}."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_dir() and not fmt.directory:
        raise ModelLoadError(f"{str(out)!r} is a directory; give a file path for the model.")
    request = SaveRequest(
        example_inputs=example_inputs, example_kwargs=example_kwargs, dynamic_shapes=dynamic_shapes
    )
    fmt.save(loaded, module, out, request)
    return out
