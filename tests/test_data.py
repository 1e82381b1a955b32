"""biasscope.io.data: every data route gives the exact batches; every bad input names its fix."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import _loading_factories as fx  # noqa: E402

from biasscope.runtime._batch import split_batch  # noqa: E402
from biasscope.errors import ConfigError, DataLoadError  # noqa: E402
from biasscope.io.data import load_data  # noqa: E402

FACTORY = "_loading_factories:make_net"
FACTORY_FILE = str(Path(fx.__file__).resolve()) + ":make_net"

N = 10


def columns() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return {
        "image": torch.randn(N, 6, generator=g),
        "text": torch.randn(N, 4, generator=g),
        "label": torch.arange(N) % 3,
    }


def sizes(batches: list) -> list[int]:
    return [split_batch(b).size for b in batches]


def test_pt_dict(tmp_path: Path) -> None:
    data = columns()
    path = tmp_path / "d.pt"
    torch.save(data, path)
    batches = load_data(path, batch_size=4)
    assert sizes(batches) == [4, 4, 2]
    assert set(batches[0]) == {"image", "text", "label"}
    torch.testing.assert_close(torch.cat([b["image"] for b in batches]), data["image"])
    torch.testing.assert_close(torch.cat([b["label"] for b in batches]), data["label"])
    assert sizes(load_data(str(path), batch_size=4, limit=5)) == [4, 1]
    assert sizes(load_data(path, batch_size=64, limit=100)) == [10]
    b = split_batch(batches[1])
    torch.testing.assert_close(b.label, data["label"][4:8])


def test_pt_tuple(tmp_path: Path) -> None:
    data = columns()
    path = tmp_path / "d.pth"
    torch.save((data["image"], data["text"], data["label"]), path)
    batches = load_data(path, batch_size=3, limit=7)
    assert sizes(batches) == [3, 3, 1]
    assert all(isinstance(b, tuple) and len(b) == 3 for b in batches)
    torch.testing.assert_close(torch.cat([b[1] for b in batches]), data["text"][:7])
    torch.save([data["image"], data["label"]], path)
    assert sizes(load_data(path, batch_size=6)) == [6, 4]


def test_npz_dtypes(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    image = rng.normal(size=(N, 6))  # float64 -> float32
    np.savez(path, image=image, ids=np.arange(N * 2, dtype=np.int32).reshape(N, 2),
             label=np.arange(N, dtype=np.uint8) % 3)
    batches = load_data(path, batch_size=4)
    assert sizes(batches) == [4, 4, 2]
    assert batches[0]["image"].dtype == torch.float32
    assert batches[0]["ids"].dtype == torch.int64
    assert batches[0]["label"].dtype == torch.int64
    torch.testing.assert_close(
        torch.cat([b["image"] for b in batches]), torch.from_numpy(image).float()
    )


def test_safetensors_data(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    data = columns()
    path = tmp_path / "d.safetensors"
    save_file(data, str(path))
    batches = load_data(path, batch_size=5)
    assert sizes(batches) == [5, 5]
    torch.testing.assert_close(torch.cat([b["text"] for b in batches]), data["text"])


def test_factory_dataset_loader_and_list(tmp_path: Path) -> None:
    ds = fx.PairDataset()
    batches = load_data("_loading_factories:make_dataset", batch_size=4)
    assert sizes(batches) == [4, 4, 2]
    torch.testing.assert_close(torch.cat([b["image"] for b in batches]), ds.image)
    torch.testing.assert_close(torch.cat([b["label"] for b in batches]), ds.label)

    tup = load_data("_loading_factories:make_tuple_dataset", batch_size=6, limit=8)
    assert sizes(tup) == [6, 2]
    assert all(isinstance(b, tuple) for b in tup)
    torch.testing.assert_close(torch.cat([b[1] for b in tup]), ds.text[:8])

    # a DataLoader keeps its own batch size (3); the limit truncates the last batch
    loader = load_data("_loading_factories:make_loader", batch_size=64, limit=7)
    assert sizes(loader) == [3, 3, 1]
    torch.testing.assert_close(torch.cat([b["label"] for b in loader]), ds.label[:7])

    listed = load_data(FACTORY_FILE.replace("make_net", "make_list"), limit=9)
    assert sizes(listed) == [4, 4, 1]
    torch.testing.assert_close(torch.cat([b["text"] for b in listed]), ds.text[:9])


def test_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataLoadError, match="does not exist"):
        load_data(tmp_path / "nope.pt")
    csv = tmp_path / "d.csv"
    csv.write_text("a,b\n1,2\n")
    with pytest.raises(DataLoadError, match=r"\.pt, \.pth, \.npz, \.safetensors"):
        load_data(csv)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    with pytest.raises(DataLoadError, match="corrupt"):
        load_data(bad)
    ragged = tmp_path / "ragged.pt"
    torch.save({"image": torch.zeros(5, 2), "label": torch.zeros(4)}, ragged)
    with pytest.raises(DataLoadError, match="different lengths") as info:
        load_data(ragged)
    assert "image: 5, label: 4" in str(info.value)
    nolabel = tmp_path / "nolabel.pt"
    torch.save({"image": torch.zeros(5, 2), "y": torch.zeros(5)}, nolabel)
    with pytest.raises(DataLoadError, match="Set label_key") as info:
        load_data(nolabel)
    assert "'image', 'y'" in str(info.value)
    assert sizes(load_data(nolabel, label_key="y")) == [5]
    empty = tmp_path / "empty.pt"
    torch.save({"image": torch.zeros(0, 2), "label": torch.zeros(0)}, empty)
    with pytest.raises(DataLoadError, match="no examples"):
        load_data(empty)
    strings = tmp_path / "s.npz"
    np.savez(strings, text=np.array(["a", "b"]), label=np.array([0, 1]))
    with pytest.raises(DataLoadError, match="not numeric"):
        load_data(strings)
    with pytest.raises(ConfigError, match="batch_size"):
        load_data(ragged, batch_size=0)
    with pytest.raises(ConfigError, match="limit"):
        load_data(ragged, limit=0)


def test_data_factory_errors() -> None:
    with pytest.raises(DataLoadError, match="no examples"):
        load_data("_loading_factories:make_empty")
    with pytest.raises(DataLoadError, match="/data/train missing"):
        load_data("_loading_factories:make_data_raises")
    with pytest.raises(DataLoadError, match="Iterating"):
        load_data("_loading_factories:make_bad_dataset")
    with pytest.raises(DataLoadError, match="Callables it defines"):
        load_data("_loading_factories:no_such_fn")
    with pytest.raises(DataLoadError, match="not a torch Dataset|Return a torch Dataset"):
        load_data("_loading_factories:make_net")
    with pytest.raises(DataLoadError, match="Set label_key"):
        load_data("_loading_factories:make_loader", label_key="target")
