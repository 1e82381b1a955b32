"""fix_and_audit and `biasscope fix` on planted models: the guard's exit 1 with the report
written, provenance naming the written model, the output folder checked before any work,
options refused up front, and the STATUS file of an interrupted run."""

from __future__ import annotations

import hashlib
import json
import textwrap

import pytest
import torch
from typer.testing import CliRunner

from biasscope import AuditResult, Modality, load_model
from biasscope.cli.main import app
from biasscope.fixing.fix import FixInterrupted
from biasscope.workflow import STATUS_NAME, fix_and_audit

torch.set_num_threads(1)
runner = CliRunner()

TWOPATH = textwrap.dedent(
    """
    import torch
    from torch import nn

    class TwoPath(nn.Module):
        def __init__(self):
            super().__init__()
            self.s_head = nn.Linear(3, 3)
            self.x_head = nn.Linear(4, 3)
            with torch.no_grad():
                self.s_head.weight.copy_(4.0 * torch.eye(3))
                self.s_head.bias.zero_()
                self.x_head.weight.zero_()
                self.x_head.bias.zero_()

        def forward(self, s, x):
            return self.s_head(s) + self.x_head(x)

    def build():
        return TwoPath()
    """
)


def _data(n: int, seed: int, informative_x: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 3, (n,), generator=g)
    agree = torch.rand(n, generator=g) < 0.95  # s: a 95% shortcut
    s = torch.nn.functional.one_hot(torch.where(agree, label, torch.randint(0, 3, (n,), generator=g)), 3).float()
    x = torch.randn(n, 4, generator=g)
    if informative_x:
        x[:, :3] += 2.5 * torch.nn.functional.one_hot(label, 3).float()
    return {"s": s, "x": x, "label": label}


@pytest.fixture()
def planted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "twopath.py").write_text(TWOPATH)
    (tmp_path / "models").mkdir()
    ns: dict = {}
    exec(TWOPATH, ns)
    torch.save(ns["build"]().state_dict(), tmp_path / "models" / "state.pt")
    for informative in (False, True):
        tag = "signal" if informative else "noise"
        torch.save(_data(512, 0, informative), tmp_path / f"train_{tag}.pt")
        torch.save(_data(256, 1, informative), tmp_path / f"val_{tag}.pt")
    return tmp_path


MODS = ["-m", "s=input:s", "-m", "x=input:x"]
RUN = ["--factory", "twopath.py:build", *MODS, "--lambda", "0", "--modality-dropout", "1", "--lr", "0.05",
       "--epochs", "6", "--batch-size", "32", "--audit-samples", "4", "--quiet"]


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_guard_trips_on_noise_exit_1_with_the_report_written(planted):
    res = runner.invoke(app, ["fix", "models/state.pt", "--data", "train_noise.pt", "--val", "val_noise.pt", *RUN, "--out", "out"])
    assert res.exit_code == 1, res.output
    assert "guard:" in res.output and "off s towards x" in res.output and "decorrelated accuracy" in res.output
    assert "[bold red]" not in res.output  # markup, not a literal
    out = planted / "out"
    for name in ("before/audit.json", "after/audit.json", "compare.html", "training_log.json", "model.pt"):
        assert (out / name).exists(), name
    assert not (out / STATUS_NAME).exists()
    log = json.loads((out / "training_log.json").read_text())
    assert log["guard"]["tripped"] and log["target"]["modality"] == "s"
    assert any("val_proxy_accuracy" in h for h in log["history"])
    compare = (out / "compare.html").read_text()
    assert "fix guard" in compare and "decorrelated accuracy (s permuted)" in compare
    # x is pure noise: its probe is at chance, so fix warns before pushing the model onto it
    assert "`x` carries no label information" in res.output
    after = AuditResult.load(out / "after" / "audit.json")
    assert [d.modality for d in after.diagnostics if d.code == "push_uninformative"] == ["x"]


def test_after_audit_names_the_written_model_and_the_data(planted):
    res = runner.invoke(app, ["fix", "models/state.pt", "--data", "train_signal.pt", "--val", "val_signal.pt", *RUN, "--out", "out"])
    # without shifted data the move of reliance from s onto x is a swap: exit 1, reports written
    assert res.exit_code == 1, res.output
    text = " ".join(res.output.split())
    assert "assumes `s`, the modality the model relies on, is the shortcut" in text
    assert "not a success:" in text and "[bold red]" not in text and "--shift-data" in text
    out = planted / "out"
    compare = " ".join((out / "compare.html").read_text().split())
    assert "no swap of reliance" in compare and "1 of 2 gates failed" in compare  # the guard's passed
    before = AuditResult.load(out / "before" / "audit.json")
    after = AuditResult.load(out / "after" / "audit.json")
    assert after.provenance["model"]["sha256"] == _sha(out / "model.pt")
    assert after.provenance["model"]["path"] == str(out / "model.pt")
    assert before.provenance["model"]["sha256"] == _sha(planted / "models" / "state.pt")
    assert after.provenance["input_model"] == before.provenance["model"]
    for audit in (before, after):
        prov = audit.provenance
        assert prov["data"]["sha256"] == _sha(planted / "val_signal.pt")
        assert prov["train_data"]["sha256"] == _sha(planted / "train_signal.pt")
        assert prov["factory"] == "twopath.py:build" and prov["output_key"] == "logits"
        assert {"biasscope", "torch", "python"} <= set(prov["versions"])
    assert after.provenance["fix"]["augmented"] == "s"
    assert "carries no label information" not in res.output  # x is informative: no warning
    assert not any(d.code == "push_uninformative" for d in after.diagnostics)
    manifest = json.loads((out / "biasscope-manifest.json").read_text())
    assert manifest["files"]["after/audit.json"] == _sha(out / "after" / "audit.json")


@pytest.mark.parametrize("out", ["models", ".", "models/sub/.."])
def test_out_holding_the_input_is_refused_before_any_work(planted, out):
    before = sorted(p.name for p in (planted / "models").iterdir())
    res = runner.invoke(app, ["fix", "models/state.pt", "--data", "train_signal.pt", *RUN, "--out", out])
    assert res.exit_code == 2 and "out" in res.output and "input model" in res.output
    assert sorted(p.name for p in (planted / "models").iterdir()) == before
    assert not (planted / "checkpoints").exists()


@pytest.mark.parametrize("flag, value, name", [("--patience", "-1", "patience"), ("--lr", "nan", "lr"), ("--lr", "-1", "lr"), ("--guard-tolerance", "2", "guard_tolerance")])
def test_bad_values_are_refused_up_front(planted, flag, value, name):
    res = runner.invoke(app, ["fix", "models/state.pt", "--data", "train_signal.pt", *RUN, flag, value, "--out", "bad"])
    assert res.exit_code == 2 and name.split("_")[0] in res.output
    assert not (planted / "bad").exists()


def test_an_interrupted_run_leaves_a_status_that_says_how_to_resume(planted):
    loaded = load_model(planted / "models" / "state.pt", factory="twopath.py:build")
    raw = torch.load(planted / "train_signal.pt", weights_only=True)
    train = [{k: v[i : i + 32] for k, v in raw.items()} for i in range(0, 512, 32)]
    mods = [Modality("s", input="s"), Modality("x", input="x")]

    def stop(stage, done, total, info):
        if stage == "fix" and done == 5:
            raise KeyboardInterrupt

    opts = dict(lambda_=0.0, epochs=1, checkpoint_every=2, device="cpu", audit_options={"samples": 4})
    with pytest.raises(FixInterrupted):
        fix_and_audit(loaded, train, mods, out=planted / "out", progress=stop, **opts)
    status = (planted / "out" / STATUS_NAME).read_text()
    assert "interrupted after 5 steps" in status and "resume=True" in status and "after/" in status
    report = fix_and_audit(loaded, train, mods, out=planted / "out", resume=True, **opts)
    assert report.fix.steps == 16
    assert (planted / "out" / STATUS_NAME).exists()  # the reports are not written yet
    report.write(planted / "out")
    assert not (planted / "out" / STATUS_NAME).exists()
    assert (planted / "out" / "after" / "report.html").exists()
