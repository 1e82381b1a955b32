"""Attributions inside a modality on planted models whose answer is known by construction."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
from torch import nn

from biasscope.runtime._batch import split_batch
from biasscope.errors import ConfigError, DataLoadError
from biasscope.measuring.explain import (
    choose_examples, explain_examples, input_site, load_tokenizer,
)
from biasscope.measuring.modality import Modality

torch.set_num_threads(1)


class QuadrantNet(nn.Module):
    """Reads only the top-left 4 x 4 quadrant of an (N, 3, 8, 8) image; ``meta`` is read too."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 16 + 2, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, image, meta):
        quadrant = torch.tanh(self.conv(image))[:, :, :4, :4]
        return self.head(torch.cat([quadrant.flatten(1), meta], dim=1))


class QuadrantInput(nn.Module):
    """An input-site image model: a linear read of the bottom-right quadrant only."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.head = nn.Linear(3 * 16, 4)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(4, 48, generator=g))

    def forward(self, image):
        return self.head(image[:, :, 4:, 4:].flatten(1))


class OneToken(nn.Module):
    """Embeds token ids and reads only position ``pos`` of the sequence."""

    def __init__(self, pos: int = 3, vocab: int = 20) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.pos = pos
        self.emb = nn.Embedding(vocab, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, input_ids):
        return self.head(self.emb(input_ids)[:, self.pos])


def _image_batches(n=8):
    g = torch.Generator().manual_seed(2)
    return [split_batch({"image": torch.randn(n, 3, 8, 8, generator=g), "meta": torch.randn(n, 2, generator=g)})]


def _quadrant_mass(values, rows, cols):
    heat = np.asarray(values)
    assert heat.shape == (8, 8) and (heat >= 0).all()
    return heat[rows, cols].sum() / heat.sum()


def test_layer_site_heatmap_puts_its_mass_in_the_read_quadrant():
    model = QuadrantNet().eval()
    batches = _image_batches()
    # the conv's output is the site: the model reads only its top-left quadrant
    mod = Modality("image", layer="conv")
    attrs = explain_examples(model, batches, mod, [0, 5], steps=16, selected=["highest", "lowest"], on_input=False)
    assert [a.selected for a in attrs] == ["highest", "lowest"] and [a.example for a in attrs] == [0, 5]
    for a in attrs:
        assert a.kind == "image" and a.method == "integrated_gradients" and a.shape == [4, 8, 8]
        assert _quadrant_mass(a.values, slice(0, 4), slice(0, 4)) >= 0.8
        assert a.convergence_delta < 1e-2


def test_layer_site_is_shown_on_the_image_that_feeds_it():
    model = QuadrantNet().eval()
    batches = _image_batches()
    assert input_site(model, batches[0], Modality("image", layer="conv")) == Modality("image", input="image")
    a = explain_examples(model, batches, Modality("image", layer="conv"), [1], steps=16)[0]
    assert a.site == "input:image" and a.kind == "image" and a.shape == [3, 8, 8]
    assert np.asarray(a.image).shape == (8, 8, 3)  # drawn over the picture
    # a 3 x 3 conv read on its top-left 4 x 4 outputs sees the image's top-left 5 x 5 only
    assert _quadrant_mass(a.values, slice(0, 5), slice(0, 5)) == pytest.approx(1.0)


class ReadsOneWord(nn.Module):
    """Embeds token ids, encodes only position 3 into a vector (the audit's site), then a head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(20, 6)
        self.encoder = nn.Linear(6, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, input_ids):
        return self.head(torch.tanh(self.encoder(self.emb(input_ids)[:, 3])))


def test_vector_site_of_a_text_encoder_is_shown_on_the_words():
    model = ReadsOneWord().eval()
    ids = torch.randint(1, 20, (4, 7), generator=torch.Generator().manual_seed(6))
    batches = [split_batch({"input_ids": ids}, label_key=None)]
    a = explain_examples(model, batches, Modality("text", layer="encoder"), [2])[0]
    assert a.site == "layer:emb" and a.kind == "tokens" and len(a.values) == 7  # summed over the embedding
    assert a.tokens == [str(int(v)) for v in ids[2]]
    scores = np.abs(a.values)
    assert int(scores.argmax()) == 3 and np.delete(scores, 3).max() == 0.0


def test_methods_by_name_on_a_linear_model():
    model = nn.Linear(4, 2).eval()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0, 0, 0], [1.0, -2.0, 0, 3.0]]))
        model.bias.zero_()
    x = torch.tensor([[2.0, 1.0, 5.0, 1.0]])
    batches, mod = [split_batch((x,), label_key=None)], Modality("v", input=0)
    saliency = explain_examples(model, batches, mod, [0], method="saliency")[0]
    assert saliency.method == "saliency" and np.allclose(saliency.values, [1, 2, 0, 3])  # |d logit_1 / dx|
    ixg = explain_examples(model, batches, mod, [0], method="input_x_gradient")[0]
    assert np.allclose(ixg.values, [2, -2, 0, 3])  # x * w_1


def test_tokenizer_from_a_local_folder_decodes_words(tmp_path):
    transformers = pytest.importorskip("transformers")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "red", "seven", "digit"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    transformers.BertTokenizer(str(tmp_path / "vocab.txt")).save_pretrained(tmp_path / "tok")
    tokenizer = load_tokenizer(tmp_path / "tok")
    model = OneToken(pos=1, vocab=8).eval()
    ids = torch.tensor([[5, 6, 7], [7, 5, 6]])
    a = explain_examples(model, [split_batch({"input_ids": ids}, label_key=None)], Modality("text", layer="emb"), [0],
                         tokenizer=tokenizer)[0]
    assert a.tokens == ["red", "seven", "digit"]
    with pytest.raises(ConfigError, match="No tokenizer at"):
        load_tokenizer(tmp_path / "missing")


def test_input_site_heatmap_and_ablation_agree_on_the_quadrant():
    model = QuadrantInput().eval()
    batches = [split_batch((torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(3)),), label_key=None)]
    mod = Modality("image", input=0)
    ig = explain_examples(model, batches, mod, [2])[0]
    assert ig.kind == "image" and ig.target == int(model(batches[0].args[0][2:3]).argmax())
    assert _quadrant_mass(ig.values, slice(4, 8), slice(4, 8)) >= 0.8
    ab = explain_examples(model, batches, mod, [2], method="feature_ablation")[0]
    assert ab.method == "feature_ablation" and ab.convergence_delta is None
    assert _quadrant_mass(ab.values, slice(4, 8), slice(4, 8)) >= 0.8


def test_embedding_site_top_token_is_the_read_position():
    model = OneToken(pos=3).eval()
    ids = torch.randint(1, 20, (5, 7), generator=torch.Generator().manual_seed(4))
    batches = [split_batch({"input_ids": ids[:2]}, label_key=None), split_batch({"input_ids": ids[2:]}, label_key=None)]
    mod = Modality("text", layer="emb")

    class Tok:
        def convert_ids_to_tokens(self, values):
            return [f"w{v}" for v in values]

    attrs = explain_examples(model, batches, mod, [1, 4], tokenizer=Tok())
    for a, row in zip(attrs, (ids[1], ids[4])):
        assert a.kind == "tokens" and len(a.values) == 7
        assert int(np.argmax(np.abs(a.values))) == 3
        assert np.abs(np.delete(np.asarray(a.values), 3)).max() == 0.0
        assert a.tokens == [f"w{int(v)}" for v in row]
    json.dumps(asdict(attrs[0]))  # JSON-ready


def test_integer_input_site_uses_ablation_and_ids():
    class IdsModel(OneToken):
        pass

    model = IdsModel(pos=5).eval()
    ids = torch.randint(1, 20, (3, 7), generator=torch.Generator().manual_seed(5))
    batches = [split_batch({"input_ids": ids}, label_key=None)]
    mod = Modality("text", input="input_ids")
    a = explain_examples(model, batches, mod, [0])[0]
    assert a.method == "feature_ablation" and a.kind == "tokens"
    assert a.tokens == [str(int(v)) for v in ids[0]]
    scores = np.abs(a.values)
    assert int(scores.argmax()) == 5 and np.delete(scores, 5).max() == 0.0
    with pytest.raises(ConfigError, match="feature_ablation"):
        explain_examples(model, batches, mod, [0], method="integrated_gradients")


def test_vector_site_bars_follow_the_weights():
    model = nn.Linear(5, 2).eval()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0, 0, 0, 0], [0, 0, 4.0, 0, 0]]))
        model.bias.zero_()
    x = torch.ones(1, 5)
    a = explain_examples(model, [split_batch((x,), label_key=None)], Modality("v", input=0), [0])[0]
    assert a.kind == "vector" and a.target == 1
    # IG with a zero baseline on a linear model: x_i * w_ti exactly
    assert np.allclose(a.values, [0, 0, 4.0, 0, 0], atol=1e-5)


def test_out_of_range_example_and_unknown_method_are_refused():
    model = QuadrantInput().eval()
    batches = [split_batch((torch.randn(2, 3, 8, 8),), label_key=None)]
    with pytest.raises(DataLoadError, match="out of range"):
        explain_examples(model, batches, Modality("image", input=0), [2])
    with pytest.raises(ConfigError, match="method"):
        explain_examples(model, batches, Modality("image", input=0), [0], method="shap")


def test_choose_examples_alternates_highest_and_lowest_with_the_main_modality():
    per_example = {"a": [0.1, 5.0, 0.0, 1.0], "b": [0.3, 1.0, 0.01, 3.0]}
    # totals: 0.4, 6.0, 0.01, 4.0 -> highest 1, lowest 2, next highest 3
    assert choose_examples(per_example, 3) == [(1, "a", "highest"), (2, "b", "lowest"), (3, "b", "highest")]
    assert [p[:2] for p in choose_examples(per_example, 10)] == [(1, "a"), (2, "b"), (3, "b"), (0, "b")]
    assert choose_examples(per_example, 0) == []


@pytest.mark.parametrize("bad", [-1, 51, 2.0, True, None])
def test_explain_option_validates(bad):
    from biasscope.runtime.options import AuditOptions

    assert AuditOptions().explain == 3 and AuditOptions(explain=0).explain == 0
    with pytest.raises(ConfigError, match=r"explain must be an integer in \[0, 50\]"):
        AuditOptions(explain=bad)


def test_gru_final_hidden_state_is_shown_on_the_words():
    class Gru(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.embed, self.rnn = nn.Embedding(30, 8), nn.GRU(8, 6, num_layers=2, batch_first=True)
            self.head = nn.Linear(6, 3)

        def forward(self, ids):
            return self.head(self.rnn(self.embed(ids))[1][-1])

    ids = torch.randint(0, 30, (4, 7), generator=torch.Generator().manual_seed(7))
    batches = [split_batch({"ids": ids}, label_key=None)]
    a = explain_examples(Gru().eval(), batches, Modality("text", layer="rnn", element=1, batch_dim=1), [1])[0]
    assert a.site == "layer:embed" and a.kind == "tokens" and a.shape == [7, 8]  # not 2 x 6 GRU units
    assert a.tokens == [str(int(v)) for v in ids[1]] and a.convergence_delta < 1e-2
