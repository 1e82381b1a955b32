"""Data loaders: ``.pt``/``.pth`` (dict or tuple of tensors), ``.npz``, ``.safetensors``, or a
factory returning a Dataset, a DataLoader or batches. Every failure raises a
:class:`~biasscope.errors.DataLoadError` (or ConfigError) that names the problem and the fix."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._sources import call_factory, check_regular, describe_obj, first_line, split_spec
from ..errors import ConfigError, DataLoadError

__all__ = ["load_data"]

_DATA_SUFFIXES = (".pt", ".pth", ".npz", ".safetensors")
#: the label key of dict sources unless told otherwise; without labels it is not passed to the model
DEFAULT_LABEL_KEY = "label"
_NO_LABELS = "for no labels: `--label-key none` on the command line, label_key=None in Python"


def load_data(
    source: str | os.PathLike[str],
    *,
    label_key: str | None = "label",
    batch_size: int = 64,
    limit: int | None = None,
) -> list[Any]:
    """Load a dataset as a list of batches for :func:`biasscope.runtime._batch.split_batch`.

    Args:
        source: a ``.pt``/``.pth`` file (dict of tensors, or tuple/list of tensors with the label
            last), ``.npz``, ``.safetensors``, or a ``"package.module:function"`` /
            ``"file.py:function"`` factory returning a Dataset, a DataLoader, an iterable of
            batches, or a dict / tuple of whole-dataset tensors.
        label_key: the label's key in dict sources (None: no label; an entry under the
            default key ``"label"`` is then dropped, not passed to the model).
        batch_size: batch size for files, dict/tuple columns and Datasets (DataLoaders and
            iterables keep their own batches).
        limit: at most this many examples (the last batch is truncated).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer or None, got {limit!r}.")
    text = os.fspath(source)
    path = Path(text)
    if not path.exists() and isinstance(source, str) and split_spec(text) is not None:
        result = call_factory(text, error=DataLoadError, what="data")
        batches = _from_factory_result(
            result, text, label_key=label_key, batch_size=batch_size, limit=limit
        )
    else:
        columns = _read_data_file(path)
        batches = _batches_from_columns(
            columns, str(path), label_key=label_key, batch_size=batch_size, limit=limit
        )
    if not batches:
        raise DataLoadError(
            f"The data {text!r} holds no examples. Give a non-empty dataset."
        )
    return batches


def _read_data_file(path: Path) -> dict[str, Tensor] | tuple[Tensor, ...]:
    if not path.exists():
        raise DataLoadError(
            f"Data file {str(path)!r} does not exist. Check the path (relative paths start from "
            f"{os.getcwd()}), or give a factory as 'package.module:function' or "
            "'path/to/file.py:function'."
        )
    check_regular(path, what="data", error=DataLoadError)
    suffix = path.suffix.lower()
    if suffix not in _DATA_SUFFIXES:
        raise DataLoadError(
            f"Unsupported data file {str(path)!r}. Supported: {', '.join(_DATA_SUFFIXES)} (a dict "
            "of tensors, or for .pt a tuple of tensors with the label last), or a factory "
            "'package.module:function' / 'path/to/file.py:function' returning a Dataset, "
            "DataLoader or iterable of batches."
        )
    try:
        if suffix in (".pt", ".pth"):
            obj = torch.load(path, map_location="cpu", weights_only=True)
        elif suffix == ".npz":
            obj = _read_npz(path)
        else:
            from safetensors.torch import load_file

            obj = load_file(str(path))
    except DataLoadError:
        raise
    except Exception as exc:
        hint = ""
        if "Unsupported global" in str(exc):
            hint = (" It holds pickled Python objects, which biasscope does not unpickle for "
                    "data: save only tensors (a dict of tensors or a tuple of tensors).")
        raise DataLoadError(
            f"Cannot read data file {str(path)!r} ({type(exc).__name__}: {first_line(exc)}). "
            f"The file may be corrupt or not a {suffix} file.{hint} Re-save it as a dict of "
            "tensors (torch.save / numpy.savez / safetensors)."
        ) from exc
    if isinstance(obj, Mapping):
        return _tensor_dict(obj, str(path))
    if isinstance(obj, (tuple, list)):
        return _tensor_tuple(obj, str(path))
    raise DataLoadError(
        f"Data file {str(path)!r} holds {describe_obj(obj)}. Save a dict of tensors (label under "
        "'label') or a tuple of tensors (label last), all with the same first dimension."
    )


def _read_npz(path: Path) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    with np.load(path, allow_pickle=False) as npz:
        for key in npz.files:
            arr = npz[key]
            if arr.dtype.kind in "iu":
                out[key] = torch.from_numpy(arr.astype(np.int64))
            elif arr.dtype.kind == "f":
                out[key] = torch.from_numpy(arr.astype(np.float32))
            elif arr.dtype.kind == "b":
                out[key] = torch.from_numpy(arr.copy())
            else:
                raise DataLoadError(
                    f"Array {key!r} in {str(path)!r} has dtype {arr.dtype}, which is not numeric. "
                    "Store numbers only (encode text as token ids, categories as integers)."
                )
    return out


def _tensor_dict(obj: Mapping[Any, Any], where: str) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, Tensor):
            raise DataLoadError(
                f"Entry {key!r} in {where} is {describe_obj(value)}, not a tensor. A dict data "
                "source holds only tensors with the examples along the first dimension."
            )
        out[str(key)] = _plain_tensor(value, f"Entry {key!r} in {where}")
    return out


#: the dtypes a data tensor may have: the model's inputs and labels (no float8, no quantized)
_DTYPES = {torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.bool, torch.uint8,
           torch.int8, torch.int16, torch.int32, torch.int64, torch.complex64, torch.complex128}


def _plain_tensor(value: Tensor, what: str) -> Tensor:
    """A dense tensor with data in memory and a usual dtype; sparse, meta, nested, float8 or
    quantized tensors are refused naming the entry."""
    problem = ("a sparse tensor" if value.layout != torch.strided else
               "a nested tensor" if value.is_nested else
               "a meta tensor (shape only, no data)" if value.is_meta else
               f"a {value.dtype} tensor" if value.dtype not in _DTYPES else None)
    if problem is not None:
        raise DataLoadError(
            f"{what} is {problem}, which biasscope does not feed to a model. Save dense tensors "
            "with their data (tensor.to_dense() / a float or integer dtype)."
        )
    return value


def _tensor_tuple(obj: Iterable[Any], where: str) -> tuple[Tensor, ...]:
    items = tuple(obj)
    for i, value in enumerate(items):
        if not isinstance(value, Tensor):
            raise DataLoadError(
                f"Element {i} in {where} is {describe_obj(value)}, not a tensor. A tuple data "
                "source holds only tensors (label last) with the examples along the first "
                "dimension."
            )
        _plain_tensor(value, f"Element {i} in {where}")
    if not items:
        raise DataLoadError(f"{where} holds an empty tuple; it needs the inputs and the label.")
    return items


def _batches_from_columns(
    columns: dict[str, Tensor] | tuple[Tensor, ...], where: str, *,
    label_key: str | None, batch_size: int, limit: int | None,
) -> list[Any]:
    named = list(columns.items()) if isinstance(columns, dict) else list(enumerate(columns))
    if isinstance(columns, dict):
        if not columns:
            raise DataLoadError(f"{where} holds an empty dict; it needs the inputs and the label.")
        if label_key is not None and label_key not in columns:
            raise DataLoadError(
                f"{where} has no label under {label_key!r}; its keys are "
                f"{', '.join(map(repr, columns))}. Set label_key to the key that holds the labels "
                f"({_NO_LABELS})."
            )
        if label_key is None:  # audited without labels: the default label column is not an input
            columns = {k: v for k, v in columns.items() if k != DEFAULT_LABEL_KEY}
            named = list(columns.items())
    lengths: dict[str, int] = {}
    for key, t in named:
        if t.dim() == 0:
            raise DataLoadError(
                f"Entry {key!r} in {where} is a scalar; every tensor needs the examples along its "
                "first dimension."
            )
        lengths[str(key)] = int(t.shape[0])
    if len(set(lengths.values())) > 1:
        raise DataLoadError(
            f"The tensors in {where} have different lengths ("
            + ", ".join(f"{k}: {n}" for k, n in lengths.items())
            + "). Every tensor must hold one row per example; fix the file."
        )
    n = next(iter(lengths.values()))
    if limit is not None:
        n = min(n, limit)
    batches: list[Any] = []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        if isinstance(columns, dict):
            batches.append({k: v[start:stop] for k, v in columns.items()})
        else:
            batches.append(tuple(v[start:stop] for v in columns))
    return batches


def _from_factory_result(
    result: Any, spec: str, *, label_key: str | None, batch_size: int, limit: int | None
) -> list[Any]:
    from torch.utils.data import DataLoader, Dataset, IterableDataset

    where = f"the data from factory {spec!r}"
    if isinstance(result, Mapping):
        columns: Any = _tensor_dict(result, where)
        return _batches_from_columns(
            columns, where, label_key=label_key, batch_size=batch_size, limit=limit
        )
    if isinstance(result, tuple) and result and all(isinstance(t, Tensor) for t in result):
        return _batches_from_columns(
            result, where, label_key=label_key, batch_size=batch_size, limit=limit
        )
    if isinstance(result, (Dataset, IterableDataset)) and not isinstance(result, DataLoader):
        result = DataLoader(result, batch_size=batch_size, shuffle=False)
    if not isinstance(result, Iterable) or isinstance(result, (str, bytes, Tensor)):
        raise DataLoadError(
            f"The data factory {spec!r} returned {describe_obj(result)}. Return a torch Dataset, "
            "a DataLoader, or an iterable of batches (dicts of tensors, or tuples with the label "
            "last)."
        )
    batches: list[Any] = []
    seen = 0
    iterator = iter(result)
    while limit is None or seen < limit:
        try:
            raw = next(iterator)
        except StopIteration:
            break
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            raise DataLoadError(
                f"Iterating {where} raised {type(exc).__name__}: {first_line(exc)}. Fix the "
                "dataset (its __getitem__ / __iter__ or collate function)."
            ) from exc
        batch = _normalise_batch(raw, where, label_key=label_key, first=not batches)
        size = _batch_len(batch, where)
        if limit is not None and seen + size > limit:
            batch = _truncate(batch, size, limit - seen)
            size = limit - seen
        if size > 0:
            batches.append(batch)
        seen += size
    return batches


def _normalise_batch(raw: Any, where: str, *, label_key: str | None, first: bool) -> Any:
    def conv(v: Any) -> Any:
        return torch.from_numpy(v) if isinstance(v, np.ndarray) else v

    if isinstance(raw, Mapping):
        batch = {k: conv(v) for k, v in raw.items()}
        if first and label_key is not None and label_key not in batch:
            raise DataLoadError(
                f"The batches of {where} have no label under {label_key!r}; their keys are "
                f"{', '.join(map(repr, batch))}. Set label_key to the key that holds the labels "
                f"({_NO_LABELS})."
            )
        if label_key is None:  # audited without labels: the default label entry is not an input
            batch.pop(DEFAULT_LABEL_KEY, None)
        return batch
    if isinstance(raw, (tuple, list)):
        return tuple(conv(v) for v in raw)
    raise DataLoadError(
        f"A batch of {where} is {describe_obj(raw)}. Batches must be dicts of tensors "
        "(label under label_key) or tuples of tensors (label last)."
    )


def _batch_len(batch: Any, where: str) -> int:
    values = batch.values() if isinstance(batch, Mapping) else batch
    for v in values:
        if isinstance(v, Tensor) and v.dim() > 0:
            return int(v.shape[0])
    raise DataLoadError(
        f"A batch of {where} holds no tensor with a batch dimension. Each batch must hold "
        "tensors whose first dimension is the batch."
    )


def _truncate(batch: Any, size: int, keep: int) -> Any:
    def cut(v: Any) -> Any:
        if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == size:
            return v[:keep]
        if isinstance(v, list) and len(v) == size:
            return v[:keep]
        return v

    if isinstance(batch, Mapping):
        return {k: cut(v) for k, v in batch.items()}
    return tuple(cut(v) for v in batch)
