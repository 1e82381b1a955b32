"""Batch splitting, repetition and logits extraction."""

from __future__ import annotations

import pytest
import torch

from biasscope import DataLoadError, ModelOutputError, OutputSpec
from biasscope.runtime._batch import logits_from_output, split_batch


def test_dict_batch_label_key():
    b = split_batch({"x": torch.zeros(3, 2), "y": torch.ones(3), "target": torch.arange(3)}, label_key="target")
    assert set(b.kwargs) == {"x", "y"} and b.label.tolist() == [0, 1, 2] and b.size == 3


def test_tuple_batch_label_last_and_float_labels_become_long():
    b = split_batch((torch.zeros(4, 2), torch.tensor([0.0, 1.0, 2.0, 1.0])))
    assert len(b.args) == 1 and b.label.dtype == torch.long


def test_repeat_is_sample_major_and_keeps_non_batch_entries():
    x = torch.arange(6.0).view(3, 2)
    b = split_batch({"x": x, "scale": torch.tensor(2.0), "label": torch.arange(3)}).repeat(2)
    assert b.size == 6
    assert torch.equal(b.kwargs["x"], torch.cat([x, x]))
    assert b.kwargs["scale"].item() == 2.0


def test_bad_batches():
    with pytest.raises(DataLoadError, match="dict of tensors"):
        split_batch("hello")
    with pytest.raises(DataLoadError, match="only the label"):
        split_batch({"label": torch.arange(3)})


def test_logits_from_rich_outputs():
    t = torch.randn(4, 3)
    assert logits_from_output(t) is t
    assert logits_from_output({"logits": t, "loss": torch.tensor(1.0)}) is t
    assert logits_from_output({"scores": t}, OutputSpec(key="scores")) is t
    assert logits_from_output((t, torch.zeros(4, 7))) is t
    assert logits_from_output((torch.zeros(4, 7), t), OutputSpec(index=1)) is t
    with pytest.raises(ModelOutputError, match="--output-key") as info:
        logits_from_output({"hidden": t})
    assert "hidden" in str(info.value)


def test_single_logit_becomes_two_classes():
    x = torch.tensor([[0.3], [-1.2]])
    two = logits_from_output(x)
    assert torch.allclose(two.softmax(-1)[:, 1], torch.sigmoid(x[:, 0]))
    assert logits_from_output(x[:, 0]).shape == (2, 2)
