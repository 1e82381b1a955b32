"""Model loaders and savers: TorchScript, ``torch.export`` programs, state dicts with a
factory, pickled modules (opt-in), Hugging Face directories. Every failure raises a
:class:`~biasscope.errors.ModelLoadError` whose message names the problem and the fix; the
input file is never modified, and a fine-tuned model is saved back in the input's format."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ._files import atomic_path
from ._sources import call_factory, describe_obj, fingerprint, first_line
from .errors import BiasscopeError, ModelLoadError

__all__ = ["LoadedModel", "load_model", "save_model", "ExportedModule", "MODEL_KINDS"]

MODEL_KINDS = ("torchscript", "export", "state_dict", "pickle", "hf")

_SUPPORTED_MODELS = (
    "TorchScript (torch.jit.save), a torch.export program (.pt2, torch.export.save), "
    "a state dict or checkpoint (.pt/.pth/.ckpt/.safetensors) with --factory, a pickled "
    "module (torch.save(model)) with --trust-pickle, or a Hugging Face save_pretrained directory"
)
# keys under which checkpoints commonly keep the model's state dict (Lightning: "state_dict")
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model (in eval mode) and what is needed to save a fine-tuned copy back.

    Attributes:
        module: the model.
        kind: one of :data:`MODEL_KINDS`.
        path: the file or directory it came from.
        sha256: :func:`fingerprint` of ``path``.
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
        trust_pickle: allow unpickling a fully pickled module (runs code from the file).
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
    if kind is not None and kind not in MODEL_KINDS:
        raise ModelLoadError(
            f"Unknown model kind {kind!r}. Use one of {', '.join(MODEL_KINDS)}, or leave it out "
            "to detect the kind from the file."
        )
    detected = kind or _detect_kind(p)
    digest = fingerprint(p)
    if detected == "hf":
        loaded = _load_hf(p, hf_class=hf_class, map_location=map_location, digest=digest)
    elif p.is_dir():
        raise ModelLoadError(
            f"{str(p)!r} is a directory without a config.json, so it is not a Hugging Face "
            f"model. Supported: {_SUPPORTED_MODELS}."
        )
    elif detected == "torchscript":
        loaded = _load_torchscript(p, map_location=map_location, digest=digest)
    elif detected == "export":
        loaded = _load_export(p, map_location=map_location, digest=digest)
    else:
        loaded = _load_torch_file(
            p, factory=factory, kind=kind, trust_pickle=trust_pickle,
            map_location=map_location, digest=digest,
        )
    _set_eval(loaded.module)
    return loaded


def _set_eval(module: nn.Module) -> None:
    # exported GraphModules override .eval() to raise; the flag on each submodule is all we set
    nn.Module.train(module, False)


def _detect_kind(p: Path) -> str:
    if p.is_dir():
        return "hf" if (p / "config.json").is_file() else "unknown"
    if p.suffix == ".safetensors":
        return "state_dict"
    if zipfile.is_zipfile(p):
        try:
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return "unknown"
        tails = {n.split("/", 1)[1] if "/" in n else n for n in names}
        if "archive_format" in tails or "models/model.json" in tails or any(
            t.startswith("models/") for t in tails
        ):
            return "export"
        if "constants.pkl" in tails or any(t.startswith("code/") for t in tails):
            return "torchscript"
    return "torch"  # torch.save output (zip or legacy) or something corrupt: torch.load decides


@contextmanager
def _quiet_jit() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*TorchScript.*", category=DeprecationWarning)
        yield


@contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """Silence a library's warnings (a failure becomes our own error message instead)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR + 10)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextmanager
def _quiet_transformers() -> Iterator[None]:
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


def _corrupt(p: Path, what: str, exc: BaseException) -> ModelLoadError:
    return ModelLoadError(
        f"Cannot read {str(p)!r} as {what} ({type(exc).__name__}: {first_line(exc)}). The file "
        f"may be corrupt, truncated or of another format. Supported: {_SUPPORTED_MODELS}; "
        "pass --kind to force one."
    )


def _load_torchscript(p: Path, *, map_location: Any, digest: str) -> LoadedModel:
    try:
        with _quiet_jit():
            module = torch.jit.load(str(p), map_location=map_location)
    except Exception as exc:
        raise _corrupt(p, "TorchScript", exc) from exc
    return LoadedModel(module=module, kind="torchscript", path=p, sha256=digest)


def _load_export(p: Path, *, map_location: Any, digest: str) -> LoadedModel:
    try:
        with open(p, "rb") as f, _quiet_logger("torch.export"):
            # a file object: torch.export.load wants a name ending in .pt2 otherwise
            program = torch.export.load(f)
        module = program.module()
    except Exception as exc:
        raise _corrupt(p, "a torch.export program", exc) from exc
    # .module() makes .train()/.eval() raise; biasscope calls them, so restore nn.Module's
    # (they set the flags only: the graph keeps the behaviour it was exported with)
    for name in ("train", "eval"):
        module.__dict__.pop(name, None)
    if str(map_location) != "cpu":
        module = module.to(map_location)
    module = ExportedModule(
        module, batch_size=_static_batch_size(program), arg_names=_positional_names(program)
    )
    return LoadedModel(
        module=module, kind="export", path=p, sha256=digest,
        example_inputs=getattr(program, "example_inputs", None),
    )


def _static_batch_size(program: Any) -> int | None:
    """The batch size an exported program was traced with, when its batch dim is static."""
    names = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        val = node.meta.get("val") if node.op == "placeholder" and node.name in names else None
        if isinstance(val, Tensor) and val.dim() > 0:
            return val.shape[0] if isinstance(val.shape[0], int) else None
    return None


def _positional_names(program: Any) -> tuple[str, ...] | None:
    """The argument names of a program exported with positional inputs only (None when it
    was exported with keyword inputs): dict batches are then passed by position."""
    example = getattr(program, "example_inputs", None)
    if not example or example[1]:
        return None
    return tuple(program.graph_signature.user_inputs)


class ExportedModule(nn.Module):
    """A ``torch.export`` program's module, callable like the original: keyword inputs are
    passed by position when it was exported with positional ones, and a program exported
    with a static batch size runs on batches of any size, in slices of that size (the last
    padded with copies of its final row, trimmed after)."""

    def __init__(
        self, module: nn.Module, *, batch_size: int | None, arg_names: tuple[str, ...] | None
    ) -> None:
        super().__init__()
        self.module = module
        self.batch_size = batch_size
        self.arg_names = arg_names

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs and self.arg_names is not None and set(kwargs) <= set(self.arg_names[len(args):]):
            args = (*args, *(kwargs.pop(name) for name in self.arg_names[len(args):] if name in kwargs))
        tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, Tensor) and v.dim() > 0]
        n = int(tensors[0].shape[0]) if tensors else self.batch_size
        if self.batch_size is None or n == self.batch_size:
            return self.module(*args, **kwargs)
        outs, size = [], self.batch_size

        def piece(v: Any, start: int) -> Any:
            if not (isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == n):
                return v
            part = v[start : start + size]
            if part.shape[0] < size:
                part = torch.cat([part, part[-1:].expand(size - part.shape[0], *part.shape[1:])])
            return part

        for start in range(0, n, size):
            out = self.module(
                *(piece(a, start) for a in args), **{k: piece(v, start) for k, v in kwargs.items()}
            )
            outs.append(_map_tensors(out, lambda t, keep=min(size, n - start): t[:keep]))
        return _concat_outputs(outs)


def _map_tensors(out: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(out, Tensor):
        return fn(out) if out.dim() > 0 else out
    if isinstance(out, (tuple, list)):
        return type(out)(_map_tensors(o, fn) for o in out)
    if isinstance(out, Mapping):
        return {k: _map_tensors(v, fn) for k, v in out.items()}
    return out


def _concat_outputs(outs: list[Any]) -> Any:
    first = outs[0]
    if isinstance(first, Tensor):
        return torch.cat(outs) if first.dim() > 0 else first
    if isinstance(first, (tuple, list)):
        return type(first)(_concat_outputs([o[i] for o in outs]) for i in range(len(first)))
    if isinstance(first, Mapping):
        return {k: _concat_outputs([o[k] for o in outs]) for k in first}
    return first


def _load_torch_file(
    p: Path, *, factory: str | None, kind: str | None, trust_pickle: bool,
    map_location: Any, digest: str,
) -> LoadedModel:
    if kind == "pickle" and not trust_pickle:
        raise _pickle_refused(p, None)
    container = "torch"
    if p.suffix == ".safetensors":
        container = "safetensors"
        obj = _read_safetensors_model(p, map_location)
    else:
        obj = _torch_load_weights(p, map_location=map_location, trust_pickle=trust_pickle)
    if isinstance(obj, nn.Module):
        if kind == "state_dict":
            raise ModelLoadError(
                f"{str(p)!r} holds a pickled module, not a state dict. Drop --kind state_dict "
                "(with --trust-pickle the module is used as is)."
            )
        return LoadedModel(module=obj.to(map_location), kind="pickle", path=p, sha256=digest)
    found = _find_state_dict(obj)
    if found is None:
        raise ModelLoadError(
            f"{str(p)!r} holds {describe_obj(obj)}, which is neither a state dict (a dict of "
            f"tensors) nor a checkpoint with one under {', '.join(map(repr, _WRAPPER_KEYS))}. "
            f"Supported: {_SUPPORTED_MODELS}."
        )
    wrapper_key, state = found
    if factory is None:
        where = f"under {wrapper_key!r} " if wrapper_key else ""
        raise ModelLoadError(
            f"{str(p)!r} is a state dict {where}({len(state)} tensors), which holds weights but "
            "not the model's code. Pass --factory 'package.module:function' or "
            "'path/to/model.py:function' (factory='...'), a function with no arguments that "
            "builds the untrained model; or save the model as TorchScript or torch.export."
        )
    module = call_factory(factory, error=ModelLoadError, what="model", option="--factory")
    if not isinstance(module, nn.Module):
        raise ModelLoadError(
            f"The model factory {factory!r} returned {describe_obj(module)}, not a "
            "torch.nn.Module. Make it return the (untrained) model instance."
        )
    prefix = _load_into(module, state, p)
    module.to(map_location)
    model_keys = {prefix + k for k in module.state_dict()}
    rest = {k: v for k, v in state.items() if k not in model_keys}
    if wrapper_key is None:
        checkpoint: Any = rest
    else:
        checkpoint = {**obj, wrapper_key: rest}
    return LoadedModel(
        module=module, kind="state_dict", path=p, sha256=digest, factory=factory,
        wrapper_key=wrapper_key, key_prefix=prefix, container=container,
        checkpoint=checkpoint, key_order=tuple(state),
    )


def _read_safetensors_model(p: Path, map_location: Any) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(p), device=str(map_location))
    except Exception as exc:
        raise _corrupt(p, "a safetensors state dict", exc) from exc


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def _torch_load_weights(p: Path, *, map_location: Any, trust_pickle: bool) -> Any:
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:
        message = str(exc)
        if "Unsupported global" not in message:
            raise _corrupt(p, "a torch.save file", exc) from exc
        match = _GLOBAL_RE.search(message)
        global_name = match.group(1) if match else None
        if not trust_pickle:
            raise _pickle_refused(p, global_name) from None
    try:
        return torch.load(p, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise ModelLoadError(
            f"Unpickling {str(p)!r} failed ({type(exc).__name__}: {first_line(exc)}). A pickled "
            "module needs its class importable under the same module name as when it was saved: "
            "run from the project that defines it (or add it to PYTHONPATH); better, save a state "
            "dict and pass --factory, or save TorchScript / torch.export."
        ) from exc


def _pickle_refused(p: Path, global_name: str | None) -> ModelLoadError:
    ref = f" (it references {global_name})" if global_name else ""
    return ModelLoadError(
        f"{str(p)!r} holds pickled Python objects{ref}, not only tensors. Unpickling runs "
        "arbitrary code stored in the file, so biasscope refuses by default. If you trust the "
        "file, pass --trust-pickle (trust_pickle=True). Better: save a state dict "
        "(torch.save(model.state_dict(), path)) and pass --factory, or save the model with "
        "torch.jit.save or torch.export.save."
    )


def _is_state_dict(obj: Any) -> bool:
    if not isinstance(obj, Mapping) or not obj:
        return False
    if not all(isinstance(k, str) for k in obj):
        return False
    return any(isinstance(v, Tensor) for v in obj.values()) and all(
        isinstance(v, Tensor) or k.endswith("_extra_state") for k, v in obj.items()
    )


def _find_state_dict(obj: Any) -> tuple[str | None, dict[str, Any]] | None:
    if _is_state_dict(obj):
        return None, dict(obj)
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
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


def _list(keys: Iterable[str], limit: int = 10) -> str:
    items = sorted(keys)
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _load_into(module: nn.Module, state: dict[str, Any], p: Path) -> str:
    reference = module.state_dict()
    target = set(reference)
    prefix, verdict = _choose_prefix(state, reference)
    stripped = _strip(state, prefix)
    strip_note = f" after stripping the prefix {prefix!r}" if prefix else ""
    if verdict == "keys":
        missing = target - set(stripped)
        unexpected = set(stripped) - target
        raise ModelLoadError(
            f"The state dict in {str(p)!r} does not match the factory's model{strip_note}. "
            f"Missing in the file ({len(missing)}): {_list(missing) or 'none'}. Unexpected in the "
            f"file ({len(unexpected)}): {_list(unexpected) or 'none'}. Check that --factory builds "
            "the same architecture (and configuration) the weights were trained with."
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
            f"{'; '.join(mismatched[:10])}. Check that --factory builds the model with the same "
            "sizes (hidden width, number of classes, vocabulary) as the trained one."
        )
    try:
        module.load_state_dict(stripped, strict=True)
    except Exception as exc:
        raise ModelLoadError(
            f"Loading the state dict from {str(p)!r} into the factory's model failed: "
            f"{first_line(exc)}. Check that --factory builds the same architecture."
        ) from exc
    return prefix


def _load_hf(p: Path, *, hf_class: str | None, map_location: Any, digest: str) -> LoadedModel:
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
    try:
        config = json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"{str(p / 'config.json')!r} is not valid JSON ({exc}). Re-save the model with "
            "save_pretrained."
        ) from exc
    archs = config.get("architectures") if isinstance(config, dict) else None
    name = hf_class or (archs[0] if isinstance(archs, list) and archs else None)
    name = name or "AutoModelForSequenceClassification"
    cls = getattr(transformers, name, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        source = "--hf-class" if hf_class else "config.json 'architectures'"
        raise ModelLoadError(
            f"transformers {transformers.__version__} has no model class {name!r} (from "
            f"{source}). Pass --hf-class with a class transformers provides, e.g. "
            "'AutoModelForSequenceClassification' or 'ViltForQuestionAnswering' (custom code "
            "models are not loaded: biasscope never sets trust_remote_code)."
        )
    try:
        with _quiet_transformers():
            module, info = cls.from_pretrained(
                str(p), local_files_only=True, output_loading_info=True
            )
    except Exception as exc:
        raise ModelLoadError(
            f"transformers could not load {str(p)!r} with {name} ({type(exc).__name__}: "
            f"{first_line(exc)}). Check that the directory holds the config and weights written "
            "by save_pretrained, or choose the class with --hf-class."
        ) from exc
    # weights the class needs but the directory lacks would be random: auditing them is moot
    missing = set(info.get("missing_keys") or ()) | {
        k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys") or ()
    }
    if missing:
        raise ModelLoadError(
            f"{str(p)!r} lacks weights that {name} needs ({_list(missing)}); transformers would "
            "initialise them at random. Choose the class the model was saved from with --hf-class "
            "(config.json 'architectures' names it), or fine-tune and save the full model first."
        )
    if not isinstance(module, nn.Module):
        raise ModelLoadError(
            f"{name}.from_pretrained returned a {type(module).__name__}, not a PyTorch module. "
            "Choose a PyTorch class with --hf-class (not a TF/Flax one)."
        )
    module.to(map_location)
    return LoadedModel(module=module, kind="hf", path=p, sha256=digest, hf_class=name)


# --------------------------------------------------------------------------- saving


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
            "output path, e.g. with --output."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    if loaded.kind == "hf":
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
            with _quiet_transformers():
                module.save_pretrained(str(tmp))

        _atomic_dir(out, write_pretrained)
        return out
    if out.is_dir():
        raise ModelLoadError(f"{str(out)!r} is a directory; give a file path for the model.")
    if loaded.kind == "torchscript":
        script = module
        if not isinstance(module, torch.jit.ScriptModule):
            try:
                with _quiet_jit():
                    script = torch.jit.script(module)
            except Exception as exc:
                raise ModelLoadError(
                    f"The input was TorchScript, but the model to save is a "
                    f"{type(module).__name__} that torch.jit.script cannot compile "
                    f"({first_line(exc)}). Pass the loaded ScriptModule (it is trainable)."
                ) from exc

        def write_script(tmp: Path) -> None:
            with _quiet_jit():
                torch.jit.save(script, str(tmp))

        _atomic_file(out, write_script)
    elif loaded.kind == "export":
        program = _export(loaded, module, example_inputs, example_kwargs, dynamic_shapes)
        _atomic_file(out, lambda tmp: torch.export.save(program, str(tmp)), suffix=".pt2")
    elif loaded.kind == "state_dict":
        payload = _checkpoint_payload(loaded, module)
        if loaded.container == "safetensors":
            from safetensors.torch import save_file

            flat = {k: v.contiguous().clone() for k, v in payload.items()}
            _atomic_file(out, lambda tmp: save_file(flat, str(tmp)))
        else:
            _atomic_file(out, lambda tmp: torch.save(payload, tmp))
    elif loaded.kind == "pickle":
        _atomic_file(out, lambda tmp: torch.save(module, tmp))
    else:  # pragma: no cover - LoadedModel.kind is always one of MODEL_KINDS
        raise ModelLoadError(f"Unknown model kind {loaded.kind!r}; use one of {MODEL_KINDS}.")
    return out


def _export(
    loaded: LoadedModel, module: nn.Module, example_inputs: tuple[Any, ...] | None,
    example_kwargs: dict[str, Any] | None, dynamic_shapes: Any,
) -> Any:
    if example_inputs is None and example_kwargs is None:
        if loaded.example_inputs is None:
            raise ModelLoadError(
                "Saving a torch.export model re-exports it, which needs example inputs, and the "
                f"input {str(loaded.path)!r} stored none. Pass example_inputs=(...) (one batch of "
                "the model's inputs) to save_model."
            )
        example_inputs, example_kwargs = loaded.example_inputs
    if isinstance(module, ExportedModule):
        if dynamic_shapes is None and module.batch_size is None:  # keep a dynamic batch dynamic
            dynamic_shapes = _dynamic_batch(example_inputs, example_kwargs)
        module = module.module
    modes = {m: m.training for m in module.modules()}
    _set_eval(module)
    try:
        return torch.export.export(
            module, tuple(example_inputs or ()), dict(example_kwargs or {}),
            dynamic_shapes=dynamic_shapes,
        )
    except Exception as exc:
        raise ModelLoadError(
            f"torch.export could not export the model ({type(exc).__name__}: {first_line(exc)}). "
            "Check that example_inputs match the model's forward, or save a state dict instead."
        ) from exc
    finally:
        for m, mode in modes.items():
            m.training = mode


def _dynamic_batch(args: Any, kwargs: Any) -> Any:
    """``dynamic_shapes`` marking dim 0 of every tensor input as dynamic."""
    spec = lambda v: {0: torch.export.Dim.DYNAMIC} if isinstance(v, Tensor) and v.dim() > 0 else None  # noqa: E731
    if kwargs and args:
        return None
    if kwargs:
        return {k: spec(v) for k, v in kwargs.items()}
    return tuple(spec(v) for v in args or ())


def _checkpoint_payload(loaded: LoadedModel, module: nn.Module) -> Any:
    module = getattr(module, "_orig_mod", module)  # torch.compile wrapper: save the model itself
    weights = {
        loaded.key_prefix + k: v.detach().cpu() if isinstance(v, Tensor) else v
        for k, v in module.state_dict().items()
    }
    previous = loaded.checkpoint if isinstance(loaded.checkpoint, Mapping) else {}
    rest = previous if loaded.wrapper_key is None else previous.get(loaded.wrapper_key, {})
    merged = {**rest, **weights}
    order = [k for k in loaded.key_order if k in merged]
    seen = set(order)
    state = {k: merged[k] for k in [*order, *(k for k in merged if k not in seen)]}
    if loaded.wrapper_key is None:
        return state
    return {**previous, loaded.wrapper_key: state}


def _atomic_file(out: Path, write: Callable[[Path], None], *, suffix: str = "") -> None:
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


def _atomic_dir(out: Path, write: Callable[[Path], None]) -> None:
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
