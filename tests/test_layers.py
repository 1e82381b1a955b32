"""biasscope.layers: the layer table of a small two-branch model."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

import _loading_factories as fx  # noqa: E402

from biasscope._batch import split_batch  # noqa: E402
from biasscope.errors import ModelOutputError  # noqa: E402
from biasscope.layers import LayerInfo, layer_table  # noqa: E402


def batch(n: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"image": torch.randn(n, 6, generator=g), "text": torch.randn(n, 4, generator=g),
            "label": torch.arange(n) % 3}


def test_two_branch_paths_shapes_params() -> None:
    model = fx.make_net().eval()
    table = layer_table(model, batch())
    assert all(isinstance(row, LayerInfo) for row in table)
    got = {row.path: (row.type, row.output_shape, row.dtype, row.n_params) for row in table}
    assert got == {
        "": ("TwoBranch", (5, 3), "float32", 6 * 8 + 8 + 4 * 8 + 8 + 16 * 3 + 3 + 3 * 3 + 3),
        "image": ("Sequential", (5, 8), "float32", 6 * 8 + 8),
        "image.0": ("Linear", (5, 8), "float32", 6 * 8 + 8),
        "image.1": ("ReLU", (5, 8), "float32", 0),
        "text": ("Sequential", (5, 8), "float32", 4 * 8 + 8),
        "text.0": ("Linear", (5, 8), "float32", 4 * 8 + 8),
        "text.1": ("Tanh", (5, 8), "float32", 0),
        "head": ("Linear", (5, 3), "float32", 16 * 3 + 3),
        "unused": ("Linear", None, None, 3 * 3 + 3),  # never called: no shape
    }
    # paths are those of get_submodule, in named_modules order
    assert [row.path for row in table] == [name for name, _ in model.named_modules()]
    for row in table:
        assert model.get_submodule(row.path) is dict(model.named_modules())[row.path]
    # every hook is removed afterwards
    assert all(not m._forward_hooks for m in model.modules())
    assert not model.training


class TupleOut(nn.Module):
    """Returns a dict (ModelOutput-like) of a tuple: the first tensor is reported."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.pair = nn.LSTM(4, 3, batch_first=True)  # returns (output, (h, c))
        self.fc = nn.Linear(3, 2)

    def forward(self, ids: torch.Tensor, y_unused: torch.Tensor) -> dict:
        seq, _ = self.pair(self.emb(ids))
        return {"logits": self.fc(seq[:, -1]), "hidden": seq}


def test_tuple_batch_and_structured_outputs() -> None:
    ids = torch.randint(0, 10, (2, 7))
    rows = {r.path: r for r in layer_table(TupleOut(), (ids, torch.zeros(2), torch.tensor([0, 1])))}
    assert rows["emb"].output_shape == (2, 7, 4)
    assert rows["pair"].output_shape == (2, 7, 3)
    assert rows[""].output_shape == (2, 2)
    assert rows["emb"].dtype == "float32"
    # a Batch works too, and label_key=None keeps every dict entry as an input
    rows2 = layer_table(fx.make_net(), split_batch(batch(3)))
    assert rows2[0].output_shape == (3, 3)
    with pytest.raises(ModelOutputError, match="label"):
        layer_table(fx.make_net(), batch(3), label_key=None)


def test_hooks_removed_when_forward_fails() -> None:
    model = fx.make_net()
    bad = {"image": torch.zeros(2, 5), "text": torch.zeros(2, 4), "label": torch.zeros(2)}
    with pytest.raises(ModelOutputError, match="image: \\(2, 5\\)"):
        layer_table(model, bad)
    assert all(not m._forward_hooks for m in model.modules())


def test_torchscript_model_reports_its_output() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(fx.make_net().eval())
    rows = {r.path: r for r in layer_table(scripted, batch(4))}
    assert rows[""].output_shape == (4, 3)
    assert rows[""].type == "TwoBranch"
    assert rows["head"].type == "Linear"
    assert rows["head"].n_params == 16 * 3 + 3
