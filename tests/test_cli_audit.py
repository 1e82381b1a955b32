"""`biasscope audit` end to end: files in, verdict-first report out, exit codes for CI."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from typer.testing import CliRunner

from biasscope.cli.main import app

runner = CliRunner()

FACTORY = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, use_text=True):
            super().__init__()
            self.encoders = nn.ModuleDict({"image": nn.Linear(5, 8), "text": nn.Linear(3, 8)})
            self.head = nn.Linear(16, 4)
            self.use_text = use_text

        def forward(self, image, text):
            t = torch.tanh(self.encoders["text"](text))
            h = torch.cat([torch.tanh(self.encoders["image"](image)), t if self.use_text else 0 * t], 1)
            return self.head(h)

    def build():
        return Net(use_text=False)

    def build_full():
        return Net(use_text=True)
    """
)


@pytest.fixture()
def project(tmp_path, monkeypatch):
    """A model that ignores `text` by construction, saved as a state dict + factory file,
    and validation data labelled by the model itself."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models.py").write_text(FACTORY)
    import importlib.util

    spec = importlib.util.spec_from_file_location("cli_models", tmp_path / "models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    full = mod.Net(True)  # the same weights serve both: use_text is not a parameter
    for name in ("ignores_text.pt", "full.pt"):
        torch.save(full.state_dict(), tmp_path / name)
    data = {"image": torch.randn(96, 5), "text": torch.randn(96, 3)}
    with torch.no_grad():
        data["label"] = full(data["image"], data["text"]).argmax(1)
    torch.save(data, tmp_path / "val.pt")
    return tmp_path


MODS = ["-m", "image=input:image", "-m", "text=layer:encoders.text"]
FAST = ["--samples", "8", "--permutation-repeats", "3", "--quiet"]


def _audit(*args):
    return runner.invoke(app, ["audit", *args], catch_exceptions=False)


def test_planted_ignored_modality_and_fail_on(project):
    res = _audit("ignores_text.pt", "--factory", "models.py:build", "--data", "val.pt", *MODS, *FAST, "--out", "r1", "--fail-on", "ignored")
    assert res.exit_code == 1, res.output
    data = json.loads((project / "r1" / "audit.json").read_text())
    assert data["ignored"] == ["text"]
    by_name = {m["name"]: m for m in data["modalities"]}
    assert by_name["text"]["verdict"] == "ignored" and by_name["text"]["share"] == 0.0
    assert data["provenance"]["model"]["sha256"] and data["provenance"]["data"]["sha256"]
    html = (project / "r1" / "report.html").read_text()
    assert "ignores" in html and "<script src=\"http" not in html
    assert "ignores" in res.output and "text" in res.output

    ok = _audit("full.pt", "--factory", "models.py:build_full", "--data", "val.pt", *MODS, *FAST, "--out", "r2", "--fail-on", "ignored")
    assert ok.exit_code == 0, ok.output
    assert json.loads((project / "r2" / "audit.json").read_text())["ignored"] == []


def test_config_file_runs_with_no_flags(project):
    (project / "biasscope.toml").write_text(
        textwrap.dedent(
            """
            model = "ignores_text.pt"
            factory = "models.py:build"
            data = "val.pt"

            [modalities]
            image = "input:image"
            text = "layer:encoders.text"

            [audit]
            samples = 8
            permutation_repeats = 3
            out = "from-config"
            fail_on = "ignored"

            [thresholds]
            ignored = 0.05
            """
        )
    )
    res = _audit("--quiet")
    assert res.exit_code == 1, res.output
    data = json.loads((project / "from-config" / "audit.json").read_text())
    assert data["ignored"] == ["text"] and data["settings"]["samples"] == 8
    assert data["settings"]["thresholds"]["ignored"] == 0.05


BAD = [
    (["missing.pt", "--data", "val.pt", *MODS], "does not exist"),
    (["ignores_text.pt", "--data", "val.pt", *MODS], "--factory"),
    (["ignores_text.pt", "--factory", "models.py:nope", "--data", "val.pt", *MODS], "nope"),
    (["ignores_text.pt", "--factory", "models.py:build", "--data", "nothing.pt", *MODS], "nothing.pt"),
    (["ignores_text.pt", "--factory", "models.py:build", "--data", "val.pt", "-m", "text=layer:encoders.txt"], "encoders.text"),
    (["ignores_text.pt", "--factory", "models.py:build", "--data", "val.pt", "-m", "text=input:caption"], "has no input"),
    (["ignores_text.pt", "--factory", "models.py:build", "--data", "val.pt", "-m", "text"], "NAME=input"),
    (["ignores_text.pt", "--factory", "models.py:build", "--data", "val.pt"], "No modalities given"),
    (["ignores_text.pt", "--factory", "models.py:build", "--data", "val.pt", *MODS, "--fail-on", "often"], "--fail-on"),
    (["ignores_text.pt", "--factory", "models.py:build", "--data", "val.pt", *MODS, "--label-key", "target"], "--label-key"),
]


@pytest.mark.parametrize("args, needle", BAD)
def test_bad_input_exit_2_clear_message_no_output(project, args, needle):
    res = _audit(*args, *FAST, "--out", "bad")
    assert res.exit_code == 2, res.output
    assert needle in res.output
    assert "Traceback" not in res.output
    assert not (project / "bad").exists()


def test_corrupt_files_and_wrong_shapes(project):
    (project / "corrupt.pt").write_bytes(b"not a model at all")
    res = _audit("corrupt.pt", "--factory", "models.py:build", "--data", "val.pt", *MODS, *FAST, "--out", "bad")
    assert res.exit_code == 2 and "Traceback" not in res.output
    torch.save({"image": torch.randn(8, 7), "text": torch.randn(8, 3), "label": torch.zeros(8, dtype=torch.long)}, project / "wide.pt")
    res = _audit("ignores_text.pt", "--factory", "models.py:build", "--data", "wide.pt", *MODS, *FAST, "--out", "bad")
    assert res.exit_code == 2 and "rejected its inputs" in res.output
    torch.save({"image": torch.randn(0, 5), "text": torch.randn(0, 3), "label": torch.zeros(0, dtype=torch.long)}, project / "empty.pt")
    res = _audit("ignores_text.pt", "--factory", "models.py:build", "--data", "empty.pt", *MODS, *FAST, "--out", "bad")
    assert res.exit_code == 2 and "no examples" in res.output
    assert not (project / "bad").exists()


def test_non_finite_outputs(project):
    data = torch.load(project / "val.pt")
    data["image"][0, 0] = float("nan")
    torch.save(data, project / "nan.pt")
    res = _audit("ignores_text.pt", "--factory", "models.py:build", "--data", "nan.pt", *MODS, *FAST, "--out", "bad")
    assert res.exit_code == 2 and "non-finite" in res.output
    assert not (project / "bad").exists()


def test_debug_shows_the_traceback(project):
    res = runner.invoke(app, ["audit", "missing.pt", "--data", "val.pt", *MODS, "--debug"])
    assert res.exit_code != 0 and res.exception is not None


def test_input_model_is_not_modified(project):
    before = (project / "ignores_text.pt").read_bytes()
    _audit("ignores_text.pt", "--factory", "models.py:build", "--data", "val.pt", *MODS, *FAST, "--out", "r")
    assert (project / "ignores_text.pt").read_bytes() == before


def test_torchscript_route_and_cdn(project):
    import importlib.util

    spec = importlib.util.spec_from_file_location("cli_models2", project / "models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = mod.Net(False)
    net.load_state_dict(torch.load(project / "ignores_text.pt"))
    torch.jit.save(torch.jit.script(net), project / "scripted.pt")
    res = _audit("scripted.pt", "--data", "val.pt", "-m", "image=input:image", "-m", "text=input:text", *FAST, "--out", "ts", "--plotlyjs", "cdn")
    assert res.exit_code == 0, res.output
    assert json.loads((project / "ts" / "audit.json").read_text())["ignored"] == ["text"]
    html = (project / "ts" / "report.html").read_text()
    assert "cdn.plot.ly" in html and len(html) < 1_000_000
