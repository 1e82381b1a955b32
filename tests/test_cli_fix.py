"""`biasscope fix` end to end: every model format round-trips, the input is untouched,
--resume continues, the outputs are all there."""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
import textwrap

import pytest
import torch
from typer.testing import CliRunner

import biasscope as bs
from biasscope.cli.main import app

runner = CliRunner()

MODELS = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.image = nn.Linear(5, 8)
            self.tab = nn.Linear(3, 8)  # not `meta`: torch.export's GraphModule has a .meta
            self.head = nn.Linear(16, 3)

        def forward(self, image, meta):
            return self.head(torch.cat([torch.tanh(self.image(image)), torch.tanh(self.tab(meta))], 1))

    def build():
        return Net()
    """
)


@pytest.fixture()
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fixmodels.py").write_text(MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))  # the pickled model's class must be importable
    monkeypatch.delitem(sys.modules, "fixmodels", raising=False)
    mod = importlib.import_module("fixmodels")
    torch.manual_seed(0)
    net = mod.Net().eval()
    g = torch.Generator().manual_seed(1)
    image, meta = torch.randn(96, 5, generator=g), torch.randn(96, 3, generator=g)
    label = (meta[:, 0] > 0).long() + (meta[:, 1] > 0).long()  # meta is the shortcut
    torch.save({"image": image, "meta": meta, "label": label}, tmp_path / "train.pt")
    torch.save({"image": image[:48], "meta": meta[:48], "label": label[:48]}, tmp_path / "val.pt")
    torch.save(net.state_dict(), tmp_path / "state.pt")
    torch.jit.save(torch.jit.script(net), tmp_path / "scripted.pt")
    batch = {0: torch.export.Dim("batch")}
    program = torch.export.export(net, (image[:16], meta[:16]), dynamic_shapes=(batch, batch))
    torch.export.save(program, tmp_path / "exported.pt2")
    torch.save(net, tmp_path / "pickled.pt")
    return tmp_path


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


MODS = ["-m", "image=input:image", "-m", "meta=input:meta"]
SHORT = ["--steps", "4", "--batch-size", "16", "--audit-samples", "4", "--quiet", "--force"]  # a random net: --force


@pytest.mark.parametrize(
    "model, extra, kind, suffix",
    [
        ("state.pt", ["--factory", "fixmodels.py:build"], "state_dict", ".pt"),
        ("scripted.pt", [], "torchscript", ".pt"),
        ("exported.pt2", [], "export", ".pt2"),
        ("pickled.pt", ["--trust-pickle"], "pickle", ".pt"),
    ],
)
def test_each_format_round_trips_and_the_input_is_untouched(project, model, extra, kind, suffix):
    before = _sha(project / model)
    res = runner.invoke(app, ["fix", model, *extra, "--data", "train.pt", "--val", "val.pt", *MODS, *SHORT, "--out", "out"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert _sha(project / model) == before
    out = project / "out"
    written = out / f"model{suffix}"
    loaded = bs.load_model(written, factory="fixmodels.py:build" if kind == "state_dict" else None, trust_pickle=kind == "pickle")
    assert loaded.kind == kind
    original = bs.load_model(project / model, factory="fixmodels.py:build" if kind == "state_dict" else None, trust_pickle=kind == "pickle")
    x = torch.load(project / "val.pt", weights_only=True)
    changed = not torch.allclose(loaded.module(x["image"][:16], x["meta"][:16]), original.module(x["image"][:16], x["meta"][:16]))
    assert changed  # the fine-tuned weights were written, not the input's
    if kind == "export":  # a dynamic batch stays dynamic
        program = torch.export.load(written)
        assert program.module()(x["image"], x["meta"]).shape == (48, 3)
    for name in ("before/audit.json", "after/audit.json", "before/report.html", "after/report.html", "compare.html", "training_log.csv", "training_log.json"):
        assert (out / name).exists(), name
    log = json.loads((out / "training_log.json").read_text())
    assert log["steps"] == 4 and len(log["history"]) == 4 and log["lambda"] == 0.0  # the default: ModDrop alone
    assert (out / "training_log.csv").read_text().count("\n") == 5
    assert "lambda" in res.output and "before:" in res.output


def test_resume_continues_to_the_same_model(project):
    common = ["state.pt", "--factory", "fixmodels.py:build", "--data", "train.pt", *MODS, "--batch-size", "16", "--audit-samples", "4", "--quiet", "--checkpoint-every", "2", "--force"]
    full = runner.invoke(app, ["fix", *common, "--steps", "6", "--out", "full"], catch_exceptions=False)
    assert full.exit_code == 0, full.output
    part = runner.invoke(app, ["fix", *common, "--steps", "6", "--out", "part"], catch_exceptions=False)
    assert part.exit_code == 0
    # simulate an interruption after step 4: keep the step-4 checkpoint, resume from it
    from biasscope.fixing._checkpoint import CheckpointStore

    ckpt = CheckpointStore(project / "part" / "checkpoints").load()["trainer"]
    assert ckpt["step"] == 6
    first = runner.invoke(app, ["fix", *common, "--steps", "6", "--out", "resumed"], catch_exceptions=False)
    assert first.exit_code == 0
    again = runner.invoke(app, ["fix", *common, "--steps", "6", "--out", "resumed", "--resume"], catch_exceptions=False)
    assert again.exit_code == 0, again.output
    a = torch.load(project / "full" / "model.pt", weights_only=True)
    b = torch.load(project / "resumed" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_fix_inputs_exit_2(project):
    res = runner.invoke(app, ["fix", "state.pt", "--factory", "fixmodels.py:build", "--data", "train.pt", *MODS, "--lambda", "lots", "--out", "bad"])
    assert res.exit_code == 2 and "--lambda" in res.output
    res = runner.invoke(app, ["fix", "state.pt", "--factory", "fixmodels.py:build", *MODS, "--out", "bad"])
    assert res.exit_code == 2 and "--data" in res.output
    assert not (project / "bad").exists()
