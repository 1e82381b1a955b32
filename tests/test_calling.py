"""How a model is called (biasscope/io/calling.py) and zero-flag audits: modalities taken from
the data's keys, call conventions, adapters, nested dict inputs; through the CLI and the API."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from typer.testing import CliRunner

from biasscope import Modality
from biasscope.runtime._batch import split_batch
from biasscope.io.calling import call_as, default_modalities
from biasscope.cli.main import app
from biasscope.errors import ConfigError, ModalityError

runner = CliRunner()
QUICK = ["-k", "4", "--permutation-repeats", "2", "--no-shapley", "--no-probe", "--explain", "0", "-q"]

MODELS = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Net(nn.Module):
        '''Reads `image`; `text` is multiplied by 0 (ignored by construction).'''
        def __init__(self):
            super().__init__()
            self.image = nn.Linear(5, 8)
            self.text = nn.Linear(3, 8)
            self.head = nn.Linear(8, 3)

        def forward(self, image, text):
            return self.head(torch.tanh(self.image(image)) + 0 * self.text(text))

    class Batched(Net):
        def forward(self, batch):
            return super().forward(batch["image"], batch["text"])

    class Nested(Net):
        def forward(self, inputs):
            return super().forward(inputs["pixels"], inputs["words"])

    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(20, 4)
            self.image = nn.Linear(5, 4)
            self.head = nn.Linear(4, 3)

        def forward(self, image, ids):
            return self.head(torch.tanh(self.image(image)) + self.embed(ids).mean(1))

    def net(): return Net()
    def batched(): return Batched()
    def nested(): return Nested()
    def tokens(): return Tokens()

    def keyword_text(forward, inputs):
        return forward(inputs["image"], text=inputs["text"])

    def nested_data():
        g = torch.Generator().manual_seed(1)
        image, text = torch.randn(48, 5, generator=g), torch.randn(48, 3, generator=g)
        with torch.no_grad():
            label = Net_seeded()(image, text).argmax(1)
        return [{"inputs": {"pixels": image[i:i + 16], "words": text[i:i + 16]}, "label": label[i:i + 16]}
                for i in range(0, 48, 16)]

    def Net_seeded():
        torch.manual_seed(0)
        return Net()
    """
)


@pytest.fixture()
def project(tmp_path, monkeypatch):
    """Models whose forward takes (image, text), text ignored by construction; dict and tuple
    data labelled by the model; a token model whose ids are embedded."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models.py").write_text(MODELS)
    namespace: dict = {}
    exec(compile(MODELS, "models.py", "exec"), namespace)
    torch.manual_seed(0)
    net = namespace["Net"]()
    torch.save(net.state_dict(), tmp_path / "net.pt")
    g = torch.Generator().manual_seed(1)
    image, text = torch.randn(48, 5, generator=g), torch.randn(48, 3, generator=g)
    with torch.no_grad():
        label = net(image, text).argmax(1)
    torch.save({"image": image, "text": text, "label": label}, tmp_path / "val.pt")
    torch.save((image, text, label), tmp_path / "val_tuple.pt")
    tokens = namespace["Tokens"]()
    torch.save(tokens.state_dict(), tmp_path / "tokens.pt")
    ids = torch.randint(0, 20, (48, 6), generator=g)
    with torch.no_grad():
        torch.save({"image": image, "ids": ids, "label": tokens(image, ids).argmax(1)}, tmp_path / "val_ids.pt")
    return tmp_path, namespace


def _audit(*args: str):
    result = runner.invoke(app, ["audit", *args, *QUICK])
    return result, result.stdout + (result.stderr if result.stderr_bytes else "")


def _verdicts(folder: str) -> dict:
    with open(f"{folder}/audit.json", encoding="utf-8") as f:
        data = json.load(f)
    return {m["name"]: (m["site"], m["verdict"]) for m in data["modalities"]}


@pytest.mark.parametrize("data, sites", [
    ("val.pt", ("input:image", "input:text")),
    ("val_tuple.pt", ("input:0", "input:1")),
])
def test_zero_flag_audit_takes_modalities_from_the_data(project, data, sites):
    result, out = _audit("net.pt", "--factory", "models.py:net", "--data", data, "-o", "out")
    assert result.exit_code == 0, out
    assert "modalities taken from the data's keys: image, text" in " ".join(out.split())
    verdicts = _verdicts("out")
    assert list(verdicts) == ["image", "text"]  # tuple positions named after forward's parameters
    assert (verdicts["image"][0], verdicts["text"][0]) == sites
    assert verdicts["text"][1] in ("ignored", "unused")


def test_zero_flag_integer_input_is_perturbed_where_it_is_embedded(project):
    result, out = _audit("tokens.pt", "--factory", "models.py:tokens", "--data", "val_ids.pt", "-o", "out")
    assert result.exit_code == 0, out
    assert _verdicts("out")["ids"][0] == "layer:embed"
    assert "ids (at embed, the layer that embeds it)" in " ".join(out.split())


def test_zero_flag_refuses_keys_the_forward_does_not_take(project):
    result, out = _audit("net.pt", "--factory", "models.py:batched", "--data", "val.pt", "-o", "out")
    assert result.exit_code == 2
    flat = " ".join(out.split())
    assert "forward(batch) takes no input named image, text" in flat and "--call batch" in flat
    assert "Traceback" not in out


def test_call_batch_and_adapter_reach_the_same_verdict(project):
    result, out = _audit("net.pt", "--factory", "models.py:batched", "--call", "batch", "--data", "val.pt", "-o", "a")
    assert result.exit_code == 0, out
    result, out = _audit("net.pt", "--factory", "models.py:net", "--adapter", "models.py:keyword_text",
                         "--data", "val.pt", "-m", "image=input:image", "-m", "text=input:text", "-o", "b")
    assert result.exit_code == 0, out
    assert _verdicts("a") == _verdicts("b") == _verdicts_of_plain(project)


def _verdicts_of_plain(project) -> dict:
    result, out = _audit("net.pt", "--factory", "models.py:net", "--data", "val.pt", "-o", "plain")
    assert result.exit_code == 0, out
    return _verdicts("plain")


def test_nested_dict_inputs_by_dotted_key(project):
    result, out = _audit("net.pt", "--factory", "models.py:nested", "--data", "models.py:nested_data",
                         "-m", "image=input:inputs.pixels", "-m", "text=input:inputs.words", "-o", "out")
    assert result.exit_code == 0, out
    verdicts = _verdicts("out")
    assert verdicts["image"] == ("input:inputs.pixels", "dominant")
    assert verdicts["text"][1] in ("ignored", "unused")


def test_call_as_shares_weights_and_leaves_the_model_alone(project):
    _, ns = project
    model = ns["Batched"]()
    batch = split_batch({"image": torch.randn(4, 5), "text": torch.randn(4, 3)}, label_key=None)
    wired = call_as(model, call="batch")
    expected = model({"image": batch.kwargs["image"], "text": batch.kwargs["text"]})
    assert torch.equal(wired(**batch.kwargs), expected)
    assert wired.head.weight is model.head.weight and dict(wired.named_modules()).keys() == dict(model.named_modules()).keys()
    assert "forward" not in vars(model)  # the user's model is not re-wired
    wired.eval()
    assert not wired.training and not wired.head.training
    assert call_as(model) is model
    with pytest.raises(ConfigError, match="call must be one of"):
        call_as(model, call="star")
    positional = call_as(ns["Net"](), call="positional")
    assert positional(image=torch.zeros(2, 5), text=torch.zeros(2, 3)).shape == (2, 3)


def test_default_modalities_python_api(project):
    _, ns = project
    batch = split_batch({"image": torch.randn(4, 5), "text": torch.randn(4, 3), "label": torch.zeros(4)})
    assert default_modalities(ns["Net"](), batch) == [Modality("image", input="image"), Modality("text", input="text")]
    with pytest.raises(ModalityError, match="takes 2 inputs, the tuple batch holds 3"):
        default_modalities(ns["Net"](), split_batch((torch.randn(4, 5),) * 3, label_key=None))
    from biasscope import audit

    result = audit(ns["Net"](), [{"image": torch.randn(16, 5), "text": torch.randn(16, 3),
                                  "label": torch.arange(16) % 3}],
                   samples=4, permutation_repeats=0, shapley=False, probe=False, explain=0)
    assert [m.name for m in result.modalities] == ["image", "text"]
    assert any(d.code == "modalities_from_data" for d in result.diagnostics)


def test_custom_pretrained_model_points_to_the_state_dict_route(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "custom.py").write_text(textwrap.dedent(
        """
        import torch
        from torch import nn
        from transformers import PretrainedConfig, PreTrainedModel

        class TinyConfig(PretrainedConfig):
            model_type = "tiny-custom"

        class TinyClassifier(PreTrainedModel):
            config_class = TinyConfig
            def __init__(self, config):
                super().__init__(config)
                self.image = nn.Linear(5, 3)
                self.text = nn.Linear(3, 3)
            def forward(self, image, text):
                return self.image(image) + 0 * self.text(text)

        def build():
            return TinyClassifier(TinyConfig.from_pretrained("hf_dir"))
        """
    ))
    import importlib.util

    spec = importlib.util.spec_from_file_location("custom_hf", tmp_path / "custom.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    mod.TinyClassifier(mod.TinyConfig()).save_pretrained(tmp_path / "hf_dir")
    data = {"image": torch.randn(32, 5), "text": torch.randn(32, 3), "label": torch.arange(32) % 3}
    torch.save(data, tmp_path / "val.pt")
    result, out = _audit("hf_dir", "--data", "val.pt", "-o", "out")
    flat = " ".join(out.split())
    assert result.exit_code == 2 and "custom PreTrainedModel" in flat
    assert "hf_dir/model.safetensors --factory" in flat
    result, out = _audit("hf_dir/model.safetensors", "--factory", "custom.py:build", "--data", "val.pt", "-o", "out")
    assert result.exit_code == 0, out
    assert _verdicts("out")["text"][1] in ("ignored", "unused")


def test_cli_attributions_show_words_by_the_named_method(project):
    transformers = pytest.importorskip("transformers")
    tmp, _ = project
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(15)]
    (tmp / "vocab.txt").write_text("\n".join(words) + "\n")
    transformers.BertTokenizer(str(tmp / "vocab.txt")).save_pretrained(tmp / "tok")
    args = ["tokens.pt", "--factory", "models.py:tokens", "--data", "val_ids.pt", "--tokenizer", "tok",
            "--attribution", "input_x_gradient", "-o", "out"]
    result = runner.invoke(app, ["audit", *args, "-k", "4", "--permutation-repeats", "2", "--no-probe", "--explain", "4", "-q"])
    assert result.exit_code == 0, result.stdout
    with open("out/audit.json", encoding="utf-8") as f:
        attributions = json.load(f)["attributions"]
    ids = torch.load("val_ids.pt")["ids"]
    on_words = [a for a in attributions if a["modality"] == "ids"]
    assert on_words and {a["method"] for a in attributions} == {"input_x_gradient"}
    for a in on_words:
        assert a["site"] == "layer:embed" and a["kind"] == "tokens"
        assert a["tokens"] == [words[int(i)] for i in ids[a["example"]]]
    result = runner.invoke(app, ["audit", *args[:-2], "--tokenizer", "nowhere", "-o", "out2"])
    assert result.exit_code == 2 and "No tokenizer at 'nowhere'" in " ".join(result.stdout.split() + result.stderr.split())


def test_layers_lists_a_batch_called_model_under_its_own_paths(project):
    args = ["layers", "net.pt", "--factory", "models.py:batched", "--data", "val.pt"]
    assert runner.invoke(app, args).exit_code == 2  # model(**batch) does not fit forward(batch)
    result = runner.invoke(app, [*args, "--call", "batch"])
    assert result.exit_code == 0, result.stdout
    assert all(f"\n│ {path} " in result.stdout for path in ("image", "text", "head"))
