"""Modality specs, parsing, and validation errors that say how to fix them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import biasscope as bs
from biasscope._batch import split_batch
from biasscope.modality import intervene, validate_modalities

from planted import Branches, tuple_data


def test_exactly_one_site():
    with pytest.raises(bs.ModalityError, match="exactly one"):
        bs.Modality("x")
    with pytest.raises(bs.ModalityError, match="exactly one"):
        bs.Modality("x", input=0, layer="a")
    assert bs.Modality("x", layer="enc.a").site == "layer:enc.a"


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("image=input:0", bs.Modality("image", input=0)),
        ("image=input:pixel_values", bs.Modality("image", input="pixel_values")),
        ("text=layer:encoders.text", bs.Modality("text", layer="encoders.text")),
    ],
)
def test_parse(spec, expected):
    assert bs.Modality.parse(spec) == expected


@pytest.mark.parametrize("spec", ["image", "image=0", "image=pixel:0", "=input:0", "image=layer:"])
def test_parse_errors_show_the_syntax(spec):
    with pytest.raises(bs.ModalityError, match="NAME=input:KEY_OR_INDEX"):
        bs.Modality.parse(spec)


def test_unknown_layer_lists_close_matches():
    model = Branches((5, 3))
    batch = split_batch(tuple_data((5, 3))[0])
    with pytest.raises(bs.ModalityError, match=r"encoders\.1") as info:
        with intervene(model, batch, {bs.Modality("b", layer="encoder.1"): lambda h: h}):
            pass
    assert "biasscope layers" in str(info.value)


def test_integer_input_needs_a_layer():
    batch = split_batch({"ids": torch.randint(0, 9, (4, 6)), "label": torch.zeros(4, dtype=torch.long)})
    with pytest.raises(bs.ModalityError, match="layer="):
        validate_modalities(batch, [bs.Modality("text", input="ids")])


def test_missing_input_and_duplicate_names():
    batch = split_batch(tuple_data((5, 3))[0])
    with pytest.raises(bs.ModalityError, match="has no input 7"):
        validate_modalities(batch, [bs.Modality("a", input=7)])
    with pytest.raises(bs.ModalityError, match="unique"):
        validate_modalities(batch, [bs.Modality("a", input=0), bs.Modality("a", input=1)])
    with pytest.raises(bs.ModalityError, match="No modality"):
        validate_modalities(batch, [])


class Skips(nn.Module):
    def __init__(self):
        super().__init__()
        self.used = nn.Linear(5, 2)
        self.unused = nn.Linear(3, 2)

    def forward(self, a, b):
        return self.used(a)


def test_layer_never_reached():
    with pytest.raises(bs.ModalityError, match="never reached"):
        bs.audit(Skips(), tuple_data((5, 3)), [bs.Modality("b", layer="unused")], samples=4)


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(3, 3)

    def forward(self, a, b):
        return self.enc(a) + self.enc(b)


def test_layer_running_twice_is_refused():
    with pytest.raises(bs.ModalityError, match="more than once"):
        bs.audit(Shared(), tuple_data((3, 3)), [bs.Modality("a", layer="enc")], samples=4)


def test_intervene_removes_hooks_after_errors():
    model = Branches((5, 3))
    batch = split_batch(tuple_data((5, 3))[0])
    with pytest.raises(RuntimeError):
        with intervene(model, batch, {bs.Modality("b", layer="encoders.1"): lambda h: h}):
            raise RuntimeError("boom")
    assert not model.encoders[1]._forward_hooks


class Recurrent(nn.Module):
    """Reads the GRU's output sequence; the GRU returns (output, h_n)."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(3, 8, batch_first=True)
        self.image = nn.Linear(5, 8)
        self.head = nn.Linear(16, 2)

    def forward(self, image, text):
        out, _ = self.rnn(text)
        return self.head(torch.cat([self.image(image), out[:, -1]], 1))


def test_layer_with_several_outputs_needs_an_element():
    torch.manual_seed(0)
    model = Recurrent()
    x, t = torch.randn(16, 5), torch.randn(16, 4, 3)
    data = [(x, t, model(x, t).argmax(1).detach())]
    with pytest.raises(bs.ModalityError, match=r"#0 \(16, 4, 8\), #1 \(1, 16, 8\)"):
        bs.audit(model, data, [bs.Modality("image", input=0), bs.Modality.parse("text=layer:rnn")], samples=4)
    with pytest.raises(bs.ModalityError, match="not the batch"):
        bs.audit(model, data, [bs.Modality.parse("text=layer:rnn#1")], samples=4)
    result = bs.audit(model, data, [bs.Modality("image", input=0), bs.Modality.parse("text=layer:rnn#0")], samples=4, permutation_repeats=2)
    assert result["text"].site == "layer:rnn#0" and result["text"].functional_entropy.mean > 0
    assert bs.Modality.parse("v=layer:vision#pooler_output") == bs.Modality("v", layer="vision", element="pooler_output")
