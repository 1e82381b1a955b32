"""Lightning route end to end, without the `lightning` package: a ``.ckpt`` written as
Lightning writes it (weights under ``state_dict`` with the LightningModule's ``model.``
prefix, beside epoch, global_step, hyper_parameters, optimizer states) is audited, listed and
fixed through the CLI with ``--factory``; the fixed checkpoint keeps Lightning's structure."""

from __future__ import annotations

import importlib.util
import json
import textwrap
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from biasscope.cli.main import app

import _tiny_hf as H  # one_thread (importing it does not import transformers)

runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with H.one_thread():
        yield

MODELS = textwrap.dedent(
    '''
    import torch
    from torch import nn


    class Fusion(nn.Module):
        """Image + text late fusion that multiplies the text branch by zero (ignores it)."""

        def __init__(self, hidden=8, classes=4):
            super().__init__()
            self.encoders = nn.ModuleDict({"image": nn.Linear(6, hidden), "text": nn.Linear(4, hidden)})
            self.head = nn.Linear(2 * hidden, classes)

        def forward(self, image, text):
            i = torch.tanh(self.encoders["image"](image))
            t = torch.tanh(self.encoders["text"](text))
            return self.head(torch.cat([i, 0.0 * t], dim=1))


    class LitFusion(nn.Module):
        """What a LightningModule holds: the model under `model`, a weighted loss beside it."""

        def __init__(self, hidden=8, classes=4):
            super().__init__()
            self.model = Fusion(hidden, classes)
            self.loss_fn = nn.CrossEntropyLoss(weight=torch.ones(classes))

        def forward(self, image, text):
            return self.model(image, text)


    def build():
        """The bare model: biasscope strips the checkpoint's `model.` prefix."""
        return Fusion(hidden=8, classes=4)


    def build_lit():
        """The whole LightningModule: the checkpoint's keys match as they are."""
        return LitFusion(hidden=8, classes=4)
    '''
)


def _lightning_checkpoint(lit: torch.nn.Module) -> dict[str, Any]:
    """A checkpoint dict with the layout of Lightning 2.x's ModelCheckpoint."""
    opt = torch.optim.Adam(lit.parameters(), lr=1e-3)
    loss = lit.loss_fn(lit(torch.randn(4, 6), torch.randn(4, 4)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    opt.step()
    return {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": lit.state_dict(),
        "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 3}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": torch.tensor(0.25)}},
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": {"hidden": 8, "classes": 4, "lr": 1e-3},
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("lightning")
    (root / "models.py").write_text(MODELS)
    spec = importlib.util.spec_from_file_location("_biasscope_test_lightning_models", root / "models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    lit = module.LitFusion()
    ckpt = _lightning_checkpoint(lit)
    assert all(k.startswith(("model.", "loss_fn.")) for k in ckpt["state_dict"])
    torch.save(ckpt, root / "epoch=3-step=120.ckpt")
    g = torch.Generator().manual_seed(1)
    data = {"image": torch.randn(96, 6, generator=g), "text": torch.randn(96, 4, generator=g)}
    with torch.no_grad():
        data["label"] = lit(data["image"], data["text"]).argmax(1)  # labelled by the model
    torch.save(data, root / "val.pt")
    return {"root": root, "ckpt": root / "epoch=3-step=120.ckpt", "lit": lit, "data": root / "val.pt"}


def _factory(project: dict[str, Any], name: str) -> str:
    return f"{project['root'] / 'models.py'}:{name}"


@pytest.mark.parametrize(
    "factory, image",
    [("build", "encoders.image"), ("build_lit", "model.encoders.image")],
    ids=["bare-model", "lightning-module"],
)
def test_cli_audit_of_a_lightning_checkpoint(project: dict[str, Any], factory: str, image: str) -> None:
    out = project["root"] / f"report-{factory}"
    result = runner.invoke(
        app,
        ["audit", str(project["ckpt"]), "--factory", _factory(project, factory),
         "--data", str(project["data"]), "-m", f"image=layer:{image}", "-m", "text=input:text",
         "--samples", "8", "--permutation-repeats", "5", "--device", "cpu", "--plotlyjs", "cdn",
         "--out", str(out), "--quiet"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "audit.json").read_text())
    mods = {m["name"]: m for m in report["modalities"]}
    assert mods["text"]["verdict"] == "ignored"
    assert mods["text"]["functional_entropy"]["mean"] == 0.0  # multiplied by zero: f == 0
    assert mods["image"]["verdict"] in ("ok", "dominant")
    assert report["accuracy"] == 1.0  # the weights were loaded, not left at random
    assert report["provenance"]["model"]["kind"] == "state_dict"


def test_cli_layers_of_a_lightning_checkpoint(project: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    result = runner.invoke(
        app,
        ["layers", str(project["ckpt"]), "--factory", _factory(project, "build"),
         "--data", str(project["data"])],
    )
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if "encoders.image" in line]
    assert rows and "(8, 8)" in rows[0]


def test_cli_without_factory_says_how(project: dict[str, Any]) -> None:
    result = runner.invoke(
        app,
        ["audit", str(project["ckpt"]), "--data", str(project["data"]), "-m", "text=input:text",
         "--out", str(project["root"] / "no-factory"), "--quiet"],
    )
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "--factory" in text and "'state_dict'" in text
    assert "Traceback" not in result.output


def test_cli_fix_keeps_the_lightning_checkpoint_layout(project: dict[str, Any]) -> None:
    out = project["root"] / "fixed"
    before = project["ckpt"].read_bytes()
    result = runner.invoke(
        app,
        ["fix", str(project["ckpt"]), "--factory", _factory(project, "build"),
         "--data", str(project["data"]), "-m", "image=layer:encoders.image",
         "-m", "text=layer:encoders.text", "--steps", "3", "--batch-size", "32",
         "--samples", "4", "--audit-samples", "4", "--device", "cpu", "--out", str(out), "--quiet"],
    )
    assert result.exit_code == 0, result.output
    assert project["ckpt"].read_bytes() == before  # the input is never modified

    original = torch.load(project["ckpt"], weights_only=True)
    fixed = torch.load(out / "model.ckpt", weights_only=True)
    assert set(fixed) == set(original)
    for key in ("epoch", "global_step", "pytorch-lightning_version", "hyper_parameters", "hparams_name"):
        assert fixed[key] == original[key], key
    assert list(fixed["state_dict"]) == list(original["state_dict"])  # prefix and order kept
    assert torch.equal(fixed["state_dict"]["loss_fn.weight"], original["state_dict"]["loss_fn.weight"])
    assert any(
        not torch.equal(fixed["state_dict"][k], original["state_dict"][k])
        for k in original["state_dict"] if k.startswith("model.")
    )
    # and the fixed checkpoint is a Lightning checkpoint biasscope audits again
    again = runner.invoke(
        app,
        ["audit", str(out / "model.ckpt"), "--factory", _factory(project, "build"),
         "--data", str(project["data"]), "-m", "image=layer:encoders.image", "-m", "text=input:text",
         "--samples", "4", "--no-shapley", "--device", "cpu", "--plotlyjs", "cdn",
         "--out", str(out / "audit-again"), "--quiet"],
    )
    assert again.exit_code == 0, again.output
