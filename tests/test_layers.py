"""biasscope.io.layers: the layer table of a small two-branch model."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

import _loading_factories as fx  # noqa: E402

from biasscope import Modality, OutputSpec  # noqa: E402
from biasscope.runtime._batch import split_batch  # noqa: E402
from biasscope.errors import ModelOutputError  # noqa: E402
from biasscope.io.layers import LayerInfo, layer_table, reachable_layers  # noqa: E402


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


class Sites(nn.Module):
    """Every kind of output a site can have: a GRU whose output sequence is dropped and whose
    final hidden state (layers, batch, hidden) is read, position embeddings without a batch
    dimension, integer token ids, a head whose output never reaches the logits, and a module
    run twice."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(3, 8, batch_first=True)
        self.pos = nn.Embedding(4, 3)
        self.ids = nn.Identity()
        self.probe = nn.Linear(8, 2)  # computed, never used
        self.twice = nn.Linear(5, 5)
        self.head = nn.Linear(13, 2)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        _ = self.ids(text.argmax(-1))  # an integer output
        seq, h = self.rnn(text + self.pos(torch.arange(text.shape[1]))[None])
        self.probe(seq[:, -1])
        return self.head(torch.cat([self.twice(self.twice(image)), h[0]], 1))


def sites_batch(n: int = 8) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 5, generator=g), torch.randn(n, 4, 3, generator=g), torch.arange(n) % 2


def test_sites_batch_dims_reach_and_problems() -> None:
    torch.manual_seed(0)
    rows = {r.path: r for r in layer_table(Sites().eval(), sites_batch())}
    seq, hidden = rows["rnn"].tensors
    assert (seq.element, seq.shape, seq.batch_dim) == (0, (8, 4, 8), 0)
    assert seq.reaches_output is False and seq.problem == "does not reach the logits"
    assert (hidden.element, hidden.shape, hidden.batch_dim) == (1, (1, 8, 8), 1)
    assert hidden.reaches_output is True and hidden.perturbable and hidden.spec("rnn") == "rnn#1@1"
    assert rows["rnn"].reaches_output is True  # one of its tensors does
    pos = rows["pos"].tensors[0]
    assert pos.batch_dim is None and pos.reaches_output is True and not pos.perturbable
    assert rows["ids"].tensors[0].problem == "int64 values cannot take Gaussian noise"
    assert rows["probe"].reaches_output is False and not rows["probe"].perturbable
    assert rows["twice"].runs == 2 and rows["twice"].tensors[0].problem == "runs 2 times per forward pass"
    assert rows["head"].perturbable and rows["head"].tensors[0].spec("head") == "head"
    assert rows[""].tensors[0].problem == "the model's output"


def test_batch_dim_found_when_another_dim_has_the_batch_size() -> None:
    """A sequence-first GRU with as many steps as examples: (T=8, B=8, H); only the second
    pass, on 7 rows, tells the batch dimension apart."""

    class SeqFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(3, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seq, _ = self.rnn(x.transpose(0, 1))  # (T, B, H)
            return self.head(seq[-1])

    x = torch.randn(8, 8, 3)
    rows = {r.path: r for r in layer_table(SeqFirst(), (x, torch.zeros(8, dtype=torch.long)))}
    assert [t.batch_dim for t in rows["rnn"].tensors] == [1, 1]


def test_centred_logits_still_reach() -> None:
    """Logits with zero sum over the classes: a plain sum of the logits would have zero
    gradient everywhere; every layer of this model reaches them."""

    class Centred(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = self.fc(x)
            return z - z.mean(1, keepdim=True)

    rows = layer_table(Centred(), (torch.randn(6, 4), torch.zeros(6, dtype=torch.long)))
    assert rows[1].reaches_output is True


def test_frozen_model_reaches_without_parameter_gradients() -> None:
    model = fx.make_net().eval().requires_grad_(False)
    rows = {r.path: r for r in layer_table(model, batch())}
    assert rows["image.0"].reaches_output is True and rows["unused"].reaches_output is None
    assert all(p.grad is None for p in model.parameters())


def test_no_logits_found_leaves_reach_unknown() -> None:
    rows = layer_table(TupleOut(), (torch.randint(0, 10, (3, 5)), torch.zeros(3), torch.arange(3)),
                       output=OutputSpec(key="nope"))
    assert all(t.reaches_output is None for r in rows[1:] for t in r.tensors)


def test_reachable_layers_and_the_layers_that_carry_a_modality() -> None:
    torch.manual_seed(0)
    model, b = Sites().eval(), sites_batch()
    assert reachable_layers(model, b) == ["layer:rnn#1@1", "layer:head"]
    # the dropped probe's input is the GRU's output sequence, which reaches nothing
    assert reachable_layers(model, b, carrying=Modality("t", layer="probe")) == []
    assert reachable_layers(model, b, carrying=Modality("t", input=1)) == ["layer:rnn#1@1", "layer:head"]
    assert reachable_layers(model, b, carrying=Modality("i", input=0)) == ["layer:head"]


class PooledBert(nn.Module):
    """A text+tabular classifier that reads BERT's last hidden state: its pooler never reaches
    the logits (the case where an audit of `bert.pooler` says nothing about the model)."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        self.bert = BertModel(BertConfig(
            vocab_size=32, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=32, max_position_embeddings=16,
        ))
        self.tab = nn.Linear(3, 16)
        self.head = nn.Linear(32, 2)

    def forward(self, input_ids: torch.Tensor, tab: torch.Tensor) -> torch.Tensor:
        cls = self.bert(input_ids=input_ids).last_hidden_state[:, 0]
        return self.head(torch.cat([cls, self.tab(tab)], 1))


def test_bert_pooler_is_unreachable_and_the_encoder_carries_text() -> None:
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = PooledBert().eval()
    b = {"input_ids": torch.randint(0, 32, (4, 6)), "tab": torch.randn(4, 3), "label": torch.arange(4) % 2}
    rows = {r.path: r for r in layer_table(model, b)}
    assert rows["bert.pooler"].reaches_output is False
    assert rows["bert.encoder.layer.1"].reaches_output is True
    carriers = reachable_layers(model, b, carrying=Modality("text", layer="bert.pooler"))
    # nearest first: the encoder's hook fires after its last layer's
    assert carriers[0] == "layer:bert.encoder"
    assert carriers[1].startswith("layer:bert.encoder.layer.1")
    assert "layer:bert.embeddings" in carriers and "layer:tab" not in carriers
    assert all(not r.startswith("layer:bert.pooler") for r in carriers)


DEEP = '''
import torch
from torch import nn


class Deep(nn.Module):
    def __init__(self):
        super().__init__()
        inner = nn.Module()
        inner.a_rather_long_submodule_name_for_the_text_encoder_projection = nn.GRU(4, 3, batch_first=True)
        self.encoders_with_a_long_name = nn.ModuleDict({"text_branch_of_the_model": inner})
        self.image = nn.Linear(6, 3)
        self.unused = nn.Linear(3, 3)
        self.head = nn.Linear(6, 3)

    def forward(self, image, text):
        inner = self.encoders_with_a_long_name["text_branch_of_the_model"]
        _, h = inner.a_rather_long_submodule_name_for_the_text_encoder_projection(text)
        return self.head(torch.cat([self.image(image), h[0]], 1))


def build():
    torch.manual_seed(0)
    return Deep()
'''


def test_cli_layers_marks_sites_and_never_wraps_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from biasscope.cli.main import app

    (tmp_path / "deep.py").write_text(DEEP)
    monkeypatch.syspath_prepend(str(tmp_path))
    import deep  # noqa: PLC0415

    torch.save(deep.build().state_dict(), tmp_path / "model.pt")
    g = torch.Generator().manual_seed(0)
    torch.save({"image": torch.randn(8, 6, generator=g), "text": torch.randn(8, 5, 4, generator=g),
                "label": torch.arange(8) % 3}, tmp_path / "data.pt")
    monkeypatch.setenv("COLUMNS", "80")  # a narrow terminal
    result = CliRunner().invoke(app, [
        "layers", str(tmp_path / "model.pt"), "--factory", f"{tmp_path / 'deep.py'}:build",
        "--data", str(tmp_path / "data.pt"),
    ])
    assert result.exit_code == 0, result.output
    path = "encoders_with_a_long_name.text_branch_of_the_model.a_rather_long_submodule_name_for_the_text_encoder_projection"
    lines = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 3}
    assert "yes (batch on dim 1)" in lines[path + "#1@1"]  # the whole path on one line
    assert "(1, 8, 3)" in lines[path + "#1@1"]
    assert "does not reach the logits" in lines[path + "#0"]
    assert "no: did not run" in lines["unused"]
    assert "yes" in lines["image"] and "(8, 3)" in lines["image"]
