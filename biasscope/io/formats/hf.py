"""Hugging Face ``save_pretrained`` directories: loaded with the transformers class that
config.json names (``trust_remote_code`` always passed, False unless the caller trusts code
in files, so transformers never asks on stdin; a config with ``auto_map``, which names
Python files of the folder to run, is refused unless ``trust_pickle``; transformers reads
``pytorch_model.bin`` with ``weights_only=True``), saved back with ``save_pretrained`` as a
directory swap."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from .._sources import first_line
from ...errors import ModelLoadError
from ._base import LoadedModel, LoadRequest, SaveRequest, atomic_dir, list_keys, quiet_transformers

KIND = "hf"


def load(p: Path, request: LoadRequest) -> LoadedModel:
    """Load a ``save_pretrained`` directory with ``hf_class`` or config.json's architecture."""
    try:
        import transformers
    except ImportError as exc:
        raise ModelLoadError(
            f"{str(p)!r} is a Hugging Face model directory, but the optional dependency "
            "'transformers' is not installed. Run: pip install biasscope[hf]"
        ) from exc
    if not p.is_dir() or not (p / "config.json").is_file():
        raise ModelLoadError(
            f"{str(p)!r} is not a Hugging Face save_pretrained directory (it needs a "
            "config.json beside the weights). Save the model with model.save_pretrained(dir)."
        )
    name = _class_name(p, request.hf_class, request.trust_pickle)
    cls = getattr(transformers, name, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        source = "hf_class" if request.hf_class else "config.json 'architectures'"
        raise ModelLoadError(
            f"transformers {transformers.__version__} has no model class {name!r} (from "
            f"{source}): a custom PreTrainedModel subclass, whose code biasscope does not run "
            "from the directory (it never sets trust_remote_code). Load its weights into a "
            f"model your own code builds: `biasscope audit {_weights_file(p)} --factory "
            "my_models.py:build` (build() returns the model, e.g. "
            f"{name}(ItsConfig.from_pretrained(DIR))). Or set "
            "hf_class to a class transformers provides, e.g. 'AutoModelForSequenceClassification'."
        )
    module = _from_pretrained(p, cls, name, trust_code=request.trust_pickle)
    module.to(request.map_location)
    return LoadedModel(module=module, kind=KIND, path=p, sha256=request.digest, hf_class=name)


def _weights_file(p: Path) -> str:
    """The directory's weights file for the state-dict route (model.safetensors by default)."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (p / name).is_file():
            return str(p / name)
    return str(p / "model.safetensors")


def _class_name(p: Path, hf_class: str | None, trust_code: bool) -> str:
    try:
        config = json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise ModelLoadError(
            f"{str(p / 'config.json')!r} is not valid JSON ({first_line(exc)}). Re-save the "
            "model with save_pretrained."
        ) from exc
    if isinstance(config, dict) and config.get("auto_map") and not trust_code:
        raise ModelLoadError(
            f"{str(p / 'config.json')!r} has an auto_map: the model's classes are Python files "
            f"of {str(p)!r} ({_auto_map_text(config['auto_map'])}) that transformers would run. "
            "biasscope runs no code from a file unless you allow it with trust_pickle; if you "
            "trust the folder, pass it, else load the model yourself and save it with a "
            "transformers class (save_pretrained without custom code)."
        )
    archs = config.get("architectures") if isinstance(config, dict) else None
    name = hf_class or (archs[0] if isinstance(archs, list) and archs else None)
    return str(name or "AutoModelForSequenceClassification")


def _auto_map_text(auto_map: Any) -> str:
    values = auto_map.values() if isinstance(auto_map, dict) else [auto_map]
    return ", ".join(sorted({str(v) for v in values}))[:200]


def _from_pretrained(p: Path, cls: Any, name: str, *, trust_code: bool) -> nn.Module:
    try:
        with quiet_transformers():
            module, info = cls.from_pretrained(
                str(p), local_files_only=True, output_loading_info=True,
                trust_remote_code=bool(trust_code),
            )
    except Exception as exc:
        if "Weights only load failed" in str(exc) or "Unsupported global" in str(exc):
            raise ModelLoadError(
                f"The weights in {str(p)!r} hold pickled Python objects, not only tensors. "
                "Unpickling runs arbitrary code stored in the file, so biasscope refuses (for a "
                "Hugging Face directory there is no opt-in). Re-save the model with "
                "save_pretrained (safetensors weights)."
            ) from None
        raise ModelLoadError(
            f"transformers could not load {str(p)!r} with {name} ({type(exc).__name__}: "
            f"{first_line(exc)}). Check that the directory holds the config and weights written "
            "by save_pretrained, or choose the class with hf_class."
        ) from exc
    # weights the class needs but the directory lacks would be random: auditing them is moot
    missing = set(info.get("missing_keys") or ()) | {
        k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys") or ()
    }
    if missing:
        raise ModelLoadError(
            f"{str(p)!r} lacks weights that {name} needs ({list_keys(missing)}); transformers "
            "would initialise them at random. Choose the class the model was saved from with "
            "hf_class (config.json 'architectures' names it), or fine-tune and save the "
            "full model first."
        )
    if not isinstance(module, nn.Module):
        raise ModelLoadError(
            f"{name}.from_pretrained returned a {type(module).__name__}, not a PyTorch module. "
            "Choose a PyTorch class with hf_class (not a TF/Flax one)."
        )
    return module


def save(loaded: LoadedModel, module: nn.Module, out: Path, request: SaveRequest) -> None:
    """Write a ``save_pretrained`` directory in place of ``out`` (atomically)."""
    if not hasattr(module, "save_pretrained"):
        raise ModelLoadError(
            f"The model to save is a {type(module).__name__} without save_pretrained; a "
            "Hugging Face input is saved back as a save_pretrained directory."
        )
    if out.exists() and not out.is_dir():
        raise ModelLoadError(
            f"{str(out)!r} is a file, but a Hugging Face model is saved as a directory. "
            "Choose a directory path."
        )

    def write_pretrained(tmp: Path) -> None:
        with quiet_transformers():
            module.save_pretrained(str(tmp))

    atomic_dir(out, write_pretrained)
