"""Where the logits are: a tensor, a ModelOutput, a dict (``logits`` or ``--output-key``), a
tuple (first element or ``--output-index``) all give exactly the numbers of the plain model
they wrap; a single-logit binary model audits as two classes [0, x]; an output without usable
logits is a clear error (exit code 2 through the CLI) that lists what the output holds."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from biasscope import Modality, ModelOutputError, OutputSpec, audit
from biasscope.runtime._batch import logits_from_output
from biasscope.cli.main import app

import _tiny_hf as H  # one_thread (importing it does not import transformers)

runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with H.one_thread():
        yield


# Written to a file for the CLI (a factory per output form); imported here for the library.
MODELS = textwrap.dedent(
    '''
    import torch
    from torch import nn


    class Net(nn.Module):
        """Two modalities (a: 5 features, b: 3), late fusion; returns the plain logits."""

        def __init__(self, classes=4):
            super().__init__()
            self.enc_a = nn.Linear(5, 8)
            self.enc_b = nn.Linear(3, 8)
            self.head = nn.Linear(16, classes)

        def features(self, a, b):
            return torch.cat([torch.tanh(self.enc_a(a)), torch.tanh(self.enc_b(b))], dim=1)

        def forward(self, a, b):
            return self.head(self.features(a, b))


    class HFOutput(Net):
        def forward(self, a, b):
            from transformers.modeling_outputs import SequenceClassifierOutput

            h = self.features(a, b)
            return SequenceClassifierOutput(logits=self.head(h), hidden_states=(h,))


    class DictOutput(Net):
        def forward(self, a, b):
            h = self.features(a, b)
            return {"hidden": h, "logits": self.head(h)}


    class TupleOutput(Net):
        def forward(self, a, b):
            h = self.features(a, b)
            return self.head(h), h


    class TupleLast(Net):
        def forward(self, a, b):
            h = self.features(a, b)
            return h, self.head(h)


    class Scores(Net):
        def forward(self, a, b):
            h = self.features(a, b)
            return {"features": h, "scores": self.head(h)}


    class Binary(Net):
        """One logit per example, shape (N, 1)."""

        def __init__(self):
            super().__init__(classes=1)


    class BinaryFlat(Binary):
        """One logit per example, shape (N,)."""

        def forward(self, a, b):
            return super().forward(a, b).squeeze(1)


    class TwoLogits(Binary):
        """The same model with its logit written out as two classes [0, x]."""

        def forward(self, a, b):
            x = super().forward(a, b)
            return torch.cat([torch.zeros_like(x), x], dim=1)


    def net():
        return Net()

    def hf_output():
        return HFOutput()

    def dict_output():
        return DictOutput()

    def tuple_output():
        return TupleOutput()

    def tuple_last():
        return TupleLast()

    def scores():
        return Scores()

    def binary():
        return Binary()

    def two_logits():
        return TwoLogits()
    '''
)

MODALITIES = [Modality("a", input="a"), Modality("b", layer="enc_b")]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("outputs")
    (root / "models.py").write_text(MODELS)
    import importlib.util

    spec = importlib.util.spec_from_file_location("_biasscope_test_outputs_models", root / "models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.root = root
    return module


def _data(n: int = 48, classes: int = 4, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, 5, generator=g), torch.randn(n, 3, generator=g)
    label = torch.randint(0, classes, (n,), generator=g)
    return [{"a": a[i : i + 24], "b": b[i : i + 24], "label": label[i : i + 24]} for i in (0, 24)]


def _same_weights(cls: type[nn.Module], reference: nn.Module) -> nn.Module:
    model = cls()
    model.load_state_dict(reference.state_dict())
    return model.eval()


def _numbers(result: Any) -> dict[str, Any]:
    """Everything an audit measured (not its settings or provenance)."""
    d = result.to_dict() if hasattr(result, "to_dict") else result
    return {k: d[k] for k in ("modalities", "joint", "shapley", "classes", "accuracy", "sentence")}


def _audit(model: nn.Module, data: list, output: OutputSpec | None = None) -> Any:
    return audit(model, data, MODALITIES, samples=8, permutation_repeats=3, device="cpu", output=output)


@pytest.mark.parametrize(
    "name, output",
    [
        ("HFOutput", None),
        ("DictOutput", None),
        ("TupleOutput", None),
        ("TupleLast", OutputSpec(index=1)),
        ("TupleLast", OutputSpec(index=-1)),
        ("Scores", OutputSpec(key="scores")),
    ],
)
def test_wrapped_outputs_give_exactly_the_plain_numbers(models: Any, name: str, output: OutputSpec | None) -> None:
    if name == "HFOutput":
        pytest.importorskip("transformers")
    torch.manual_seed(0)
    plain = models.Net().eval()
    data = _data()
    expected = _numbers(_audit(plain, data))
    got = _numbers(_audit(_same_weights(getattr(models, name), plain), data, output))
    assert got == expected


@pytest.mark.parametrize("name", ["Binary", "BinaryFlat"])
def test_single_logit_is_two_classes_like_an_explicit_zero_logit(models: Any, name: str) -> None:
    torch.manual_seed(1)
    two = models.TwoLogits().eval()
    data = _data(classes=2)
    single = _same_weights(getattr(models, name), two)
    result = _audit(single, data)
    assert result.classes == [0, 1]
    assert _numbers(result) == _numbers(_audit(two, data))


def test_single_logit_softmax_is_the_sigmoid() -> None:
    x = torch.linspace(-4, 4, 9)
    for shaped in (x, x[:, None]):
        logits = logits_from_output(shaped)
        assert logits.shape == (9, 2)
        torch.testing.assert_close(torch.softmax(logits, dim=1)[:, 1], torch.sigmoid(x))
        torch.testing.assert_close(torch.softmax(logits, dim=1)[:, 0], 1 - torch.sigmoid(x))


def test_errors_list_what_the_output_holds() -> None:
    h, s = torch.zeros(3, 16), torch.zeros(3, 4)
    with pytest.raises(ModelOutputError) as info:
        logits_from_output({"features": h, "scores": s})
    assert "'logits'" in str(info.value) and "features" in str(info.value) and "scores" in str(info.value)
    assert "--output-key" in str(info.value)
    with pytest.raises(ModelOutputError, match="out of range"):
        logits_from_output((h, s), OutputSpec(index=2))
    with pytest.raises(ModelOutputError) as info:
        logits_from_output((torch.zeros(3, dtype=torch.long), s))  # first element: integers
    assert "2-tuple" in str(info.value) and "(3, 4)" in str(info.value)
    assert "--output-index" in str(info.value)
    with pytest.raises(ModelOutputError, match=r"\(batch, classes\)"):
        logits_from_output(torch.zeros(3, 4, 5))


# ---------------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def files(models: Any) -> Path:
    """One state dict serves every output form (same module tree); data for 4 and 2 classes."""
    root = models.root
    torch.manual_seed(0)
    torch.save(models.Net().state_dict(), root / "net.pt")
    torch.save(models.Binary().state_dict(), root / "binary.pt")
    for name, classes in (("data", 4), ("binary_data", 2)):
        batches = _data(classes=classes)
        torch.save({k: torch.cat([b[k] for b in batches]) for k in batches[0]}, root / f"{name}.pt")
    return root


def _cli(root: Path, weights: str, factory: str, data: str, out: str, *extra: str) -> Any:
    return runner.invoke(
        app,
        ["audit", str(root / weights), "--factory", f"{root / 'models.py'}:{factory}",
         "--data", str(root / data), "-m", "a=input:a", "-m", "b=layer:enc_b",
         "--samples", "8", "--permutation-repeats", "3", "--device", "cpu", "--plotlyjs", "cdn",
         "--out", str(root / out), "--quiet", *extra],
    )


def _report(root: Path, out: str) -> dict[str, Any]:
    return _numbers(json.loads((root / out / "audit.json").read_text()))


@pytest.fixture(scope="module")
def plain_report(files: Path) -> dict[str, Any]:
    result = _cli(files, "net.pt", "net", "data.pt", "plain")
    assert result.exit_code == 0, result.output
    return _report(files, "plain")


@pytest.mark.parametrize(
    "factory, extra",
    [
        ("hf_output", ()),
        ("dict_output", ()),
        ("tuple_output", ()),
        ("tuple_last", ("--output-index", "1")),
        ("scores", ("--output-key", "scores")),
    ],
)
def test_cli_output_options_give_exactly_the_plain_numbers(
    files: Path, plain_report: dict[str, Any], factory: str, extra: tuple[str, ...]
) -> None:
    if factory == "hf_output":
        pytest.importorskip("transformers")
    result = _cli(files, "net.pt", factory, "data.pt", factory, *extra)
    assert result.exit_code == 0, result.output
    assert _report(files, factory) == plain_report


def test_cli_single_logit_is_two_classes(files: Path) -> None:
    assert _cli(files, "binary.pt", "binary", "binary_data.pt", "binary").exit_code == 0
    assert _cli(files, "binary.pt", "two_logits", "binary_data.pt", "two_logits").exit_code == 0
    single = _report(files, "binary")
    assert single["classes"] == [0, 1]
    assert single == _report(files, "two_logits")


def test_cli_missing_logits_exit_2_and_list_the_output(files: Path) -> None:
    result = _cli(files, "net.pt", "scores", "data.pt", "no-key")
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())  # undo the console's line wrapping
    assert "without 'logits'" in text and "'features'" in text and "'scores'" in text
    assert "--output-key" in text
    assert "Traceback" not in result.output
    assert not (files / "no-key").exists()

    result = _cli(files, "net.pt", "tuple_output", "data.pt", "bad-index", "--output-index", "5")
    assert result.exit_code == 2, result.output
    assert "out of range" in " ".join(result.output.split())
