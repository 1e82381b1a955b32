"""A truncated, bit-flipped or wrong-format file of every kind biasscope reads gives a clear
error (a BiasscopeError with a one-paragraph message), never another exception.

Bit flips may land in tensor bytes and still load: then the file loads, which is fine; any
failure must be the library's own error."""

from __future__ import annotations

import random
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import _loading_factories as fx  # noqa: E402

from biasscope.io.data import load_data  # noqa: E402
from biasscope.errors import DataLoadError, ModelLoadError  # noqa: E402
from biasscope.io.loading import load_model  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

FACTORY = "_loading_factories:make_net"
FLIPS = 8  # seeded bit flips per file


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 6, generator=g), torch.randn(4, 4, generator=g)


def write_model(kind: str, folder: Path) -> tuple[Path, dict]:
    """A small valid model file of ``kind`` and the load_model arguments it needs."""
    net = fx.make_net().eval()
    if kind == "torchscript":
        path = folder / "m.pt"
        torch.jit.save(torch.jit.script(net), str(path))
        return path, {}
    if kind == "export":
        path = folder / "m.pt2"
        torch.export.save(torch.export.export(net, inputs()), str(path))
        return path, {}
    if kind == "state_dict":
        path = folder / "m.pt"
        torch.save(net.state_dict(), path)
        return path, {"factory": FACTORY}
    if kind == "checkpoint":
        path = folder / "m.ckpt"
        torch.save({"epoch": 1, "state_dict": {"model." + k: v for k, v in net.state_dict().items()}}, path)
        return path, {"factory": FACTORY}
    if kind == "safetensors":
        from safetensors.torch import save_file

        path = folder / "m.safetensors"
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
        return path, {"factory": FACTORY}
    path = folder / "full.pt"
    torch.save(net, path)
    return path, {"trust_pickle": True}


KINDS = ["torchscript", "export", "state_dict", "checkpoint", "safetensors", "pickle"]


def check(load: Callable[[], object], error: type[Exception]) -> str:
    """``"ok"`` or ``"error"``; any exception other than ``error`` fails the test."""
    try:
        load()
    except error as exc:
        message = str(exc)
        assert message and "\n" not in message and "Traceback" not in message, message
        return "error"
    return "ok"


def variants(data: bytes, seed: int) -> list[tuple[str, bytes]]:
    """Truncations at fixed fractions and seeded single-bit flips of ``data``."""
    cuts = sorted({0, 1, len(data) // 10, len(data) // 2, len(data) * 9 // 10, len(data) - 1})
    out = [(f"truncated at {c}", data[:c]) for c in cuts]
    rng = random.Random(seed)
    for _ in range(FLIPS):
        i, bit = rng.randrange(len(data)), rng.randrange(8)
        flipped = bytearray(data)
        flipped[i] ^= 1 << bit
        out.append((f"bit {bit} of byte {i} flipped", bytes(flipped)))
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_damaged_model_files(tmp_path: Path, kind: str) -> None:
    path, kwargs = write_model(kind, tmp_path)
    data = path.read_bytes()
    outcomes = {}
    for name, damaged in variants(data, seed=KINDS.index(kind)):
        path.write_bytes(damaged)
        outcomes[name] = check(lambda: load_model(path, **kwargs), ModelLoadError)
        if name.startswith("truncated"):
            assert outcomes[name] == "error", name
    path.write_bytes(data)
    assert check(lambda: load_model(path, **kwargs), ModelLoadError) == "ok"


WRONG = {
    "json text": b'{"not": "a model"}',
    "png header": b"\x89PNG\r\n\x1a\n" + bytes(64),
    "empty zip": b"PK\x05\x06" + bytes(18),
}


@pytest.mark.parametrize("suffix", [".pt", ".pt2", ".ckpt", ".safetensors", ".pth"])
def test_wrong_format_model_files(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"model{suffix}"
    for data in WRONG.values():
        path.write_bytes(data)
        assert check(lambda: load_model(path, factory=FACTORY), ModelLoadError) == "error"
    # a valid file of another kind under this suffix: loads (detected by content) or errors
    for kind in KINDS:
        (tmp_path / kind).mkdir()
        other, kwargs = write_model(kind, tmp_path / kind)
        shutil.copy(other, path)
        check(lambda: load_model(path, **kwargs), ModelLoadError)


@pytest.mark.filterwarnings("ignore:.*TorchScript archive:UserWarning")
@pytest.mark.parametrize("forced", ["torchscript", "export", "state_dict", "pickle", "hf"])
def test_forced_wrong_kind(tmp_path: Path, forced: str) -> None:
    """Forcing any kind on any file: it loads or it is a clear error."""
    for kind in KINDS:
        path, kwargs = write_model(kind, tmp_path)
        outcome = check(lambda: load_model(path, kind=forced, **kwargs), ModelLoadError)
        if forced in ("export", "hf") and kind != forced:
            assert outcome == "error", kind


def test_damaged_hf_directory(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        vocab_size=50, num_labels=3,
    )
    folder = tmp_path / "bert"
    transformers.BertForSequenceClassification(config).save_pretrained(str(folder))
    weights = next(folder.glob("*.safetensors"))
    for target in (weights, folder / "config.json"):
        data = target.read_bytes()
        for name, damaged in variants(data, seed=7)[:8]:
            target.write_bytes(damaged)
            outcome = check(lambda: load_model(folder), ModelLoadError)
            if name.startswith("truncated") and len(damaged) < len(data) - 1:
                assert outcome == "error", (target.name, name)
        target.write_bytes(data)
    assert check(lambda: load_model(folder), ModelLoadError) == "ok"


def write_data(suffix: str, folder: Path) -> Path:
    x, y = torch.randn(8, 3, generator=torch.Generator().manual_seed(0)), torch.arange(8) % 2
    path = folder / f"data{suffix}"
    if suffix == ".pt":
        torch.save({"x": x, "label": y}, path)
    elif suffix == ".npz":
        np.savez(path, x=x.numpy(), label=y.numpy())
    else:
        from safetensors.torch import save_file

        save_file({"x": x, "label": y}, str(path))
    return path


@pytest.mark.parametrize("suffix", [".pt", ".npz", ".safetensors"])
def test_damaged_and_wrong_data_files(tmp_path: Path, suffix: str) -> None:
    path = write_data(suffix, tmp_path)
    data = path.read_bytes()
    for name, damaged in variants(data, seed=11):
        path.write_bytes(damaged)
        outcome = check(lambda: load_data(path), DataLoadError)
        if name.startswith("truncated"):
            assert outcome == "error", name
    for wrong in WRONG.values():
        path.write_bytes(wrong)
        assert check(lambda: load_data(path), DataLoadError) == "error"
    path.write_bytes(data)
    assert check(lambda: load_data(path), DataLoadError) == "ok"
