"""Modality specs, parsing, and validation errors that say how to fix them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

import biasscope as bs
from biasscope.runtime._batch import split_batch
from biasscope.measuring.modality import (
    check_distinct_sites, intervene, is_compiled, validate_modalities,
)

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


@pytest.mark.parametrize(
    "spec, expected, site",
    [
        ("text=layer:rnn#1@1", bs.Modality("text", layer="rnn", element=1, batch_dim=1), "layer:rnn#1@1"),
        ("text=layer:rnn@2", bs.Modality("text", layer="rnn", batch_dim=2), "layer:rnn@2"),
        ("text=layer:rnn#1@0", bs.Modality("text", layer="rnn", element=1), "layer:rnn#1"),
    ],
)
def test_parse_batch_dim_round_trips(spec, expected, site):
    parsed = bs.Modality.parse(spec)
    assert parsed == expected and parsed.site == site
    assert bs.Modality.parse("text=" + parsed.site) == parsed


def test_batch_dim_errors():
    with pytest.raises(bs.ModalityError, match="a number"):
        bs.Modality.parse("text=layer:rnn#1@x")
    with pytest.raises(bs.ModalityError, match="layer modalities only"):
        bs.Modality("text", input=0, batch_dim=1)
    with pytest.raises(bs.ModalityError, match=">= 0"):
        bs.Modality("text", layer="rnn", batch_dim=-1)


class FinalState(nn.Module):
    """Reads only the GRU's final hidden state h_n, shape (1, batch, hidden)."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(3, 8, batch_first=True)
        self.image = nn.Linear(5, 8)
        self.head = nn.Linear(16, 2)

    def forward(self, image, text):
        _, h = self.rnn(text)
        return self.head(torch.cat([self.image(image), h[0]], 1))


def test_intervene_sees_the_batch_first_and_puts_it_back():
    torch.manual_seed(0)
    model = FinalState()
    x, t = torch.randn(6, 5), torch.randn(6, 4, 3)
    batch = split_batch((x, t, torch.zeros(6, dtype=torch.long)))
    seen = {}

    def zero_row_2(h):
        seen["shape"] = tuple(h.shape)
        h = h.clone()
        h[2] = 0
        return h

    with intervene(model, batch, {bs.Modality.parse("text=layer:rnn#1@1"): zero_row_2}) as b:
        out = model(*b.args)
    assert seen["shape"] == (6, 1, 8)  # (batch, layers, hidden)
    # only example 2 lost its text state: its logits are those of h_n = 0
    clean = model(x, t)
    assert torch.allclose(out[[0, 1, 3, 4, 5]], clean[[0, 1, 3, 4, 5]])
    expected = model.head(torch.cat([model.image(x[2:3]), torch.zeros(1, 8)], 1))
    assert torch.allclose(out[2:3], expected)
    with pytest.raises(bs.ModalityError, match="batch dimension 3"):
        with intervene(model, batch, {bs.Modality.parse("text=layer:rnn#1@3"): lambda h: h}) as b:
            model(*b.args)


def test_audit_of_a_gru_final_hidden_state():
    """A model that reads the text only through h_n: the text measured at rnn#1@1 is used
    (FE > 0, shuffling it costs accuracy), the image ignored (multiplied by zero)."""
    torch.manual_seed(0)
    model = FinalState()
    with torch.no_grad():
        model.head.weight[:, :8] = 0  # the image never reaches the logits
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(64, 5, generator=g), torch.randn(64, 4, 3, generator=g)
    data = [(x, t, model(x, t).argmax(1).detach())]
    mods = [bs.Modality("image", input=0), bs.Modality.parse("text=layer:rnn#1@1")]
    result = bs.audit(model, data, mods, samples=8, permutation_repeats=4, seed=0)
    assert result["text"].site == "layer:rnn#1@1"
    assert result["text"].functional_entropy.mean > 0
    assert result["image"].functional_entropy.mean == 0.0
    assert result["text"].verdict != "ignored" and result["image"].verdict == "ignored"


def test_element_on_a_single_tensor_layer_is_refused():
    model = Branches((5, 3))
    batch = split_batch(tuple_data((5, 3))[0])
    with pytest.raises(bs.ModalityError, match="single tensor") as info:
        with intervene(model, batch, {bs.Modality.parse("b=layer:encoders.1#3"): lambda h: h}) as b:
            model(*b.args)
    assert "Drop the #3" in str(info.value) and "b=layer:encoders.1" in str(info.value)


@pytest.mark.parametrize(
    "first, second",
    [
        ("a=input:0", "b=input:0"),
        ("a=layer:rnn#1", "b=layer:rnn#1@1"),
        ("a=layer:rnn", "b=layer:rnn#0"),
    ],
)
def test_two_modalities_on_one_site_are_refused(first, second):
    mods = [bs.Modality.parse(first), bs.Modality.parse(second)]
    batch = split_batch(tuple_data((5, 3))[0])
    for check in (
        lambda: validate_modalities(batch, mods, perturbable=False),
        lambda: intervene(FinalState(), batch, dict.fromkeys(mods, lambda h: h)).__enter__(),
    ):
        with pytest.raises(bs.ModalityError, match="same site") as info:
            check()
        assert "'a'" in str(info.value) and "'b'" in str(info.value)


def test_distinct_elements_of_one_layer_are_two_sites():
    check_distinct_sites([bs.Modality.parse("a=layer:rnn#0"), bs.Modality.parse("b=layer:rnn#1@1")])


def test_compiled_models_are_recognised_without_importing_the_loaders():
    class ExportedModule(nn.Module):  # the adapter's name, as biasscope's loaders define it
        pass

    class Tagged(nn.Module):
        _biasscope_exported = True

    assert is_compiled(ExportedModule()) and is_compiled(Tagged())
    assert not is_compiled(nn.Linear(2, 2))
    with pytest.raises(bs.ModalityError, match="compiled graphs"):
        with intervene(Tagged(), split_batch(tuple_data((5, 3))[0]), {bs.Modality("a", layer="x"): lambda h: h}):
            pass
    tree = ast.parse((Path(bs.__file__).parent / "measuring" / "modality.py").read_text())
    imported = {
        node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    } | {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    assert imported  # the walk found the imports
    assert not {m for m in imported if "loading" in m or "_exported" in m}
