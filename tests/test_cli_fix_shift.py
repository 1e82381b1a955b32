"""`biasscope fix --shift-data` and `audit`/`compare` with shifted data, and a fix with
nothing to fix, end to end on the planted two-path models of test_workflow."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from biasscope import AuditResult
from biasscope.cli.main import app

from test_workflow import RUN, TWOPATH, _data, planted  # noqa: F401  (planted: a fixture)

torch.set_num_threads(1)
runner = CliRunner()


def _shifted(n: int, seed: int) -> dict[str, torch.Tensor]:
    """The signal data with the shortcut broken: s a random class."""
    data = _data(n, seed, True)
    g = torch.Generator().manual_seed(seed + 50)
    data["s"] = torch.nn.functional.one_hot(torch.randint(0, 3, (n,), generator=g), 3).float()
    return data


def test_fix_with_shift_data_reports_it_and_compare_gates_on_it(planted):  # noqa: F811
    torch.save(_shifted(256, 2), planted / "shift.pt")
    res = runner.invoke(app, ["fix", "models/state.pt", "--data", "train_signal.pt", "--val", "val_signal.pt",
                              "--shift-data", "shift.pt", *RUN, "--out", "out"])
    assert res.exit_code == 0, res.output
    out = planted / "out"
    before, after = (AuditResult.load(out / f / "audit.json") for f in ("before", "after"))
    assert before.shift_accuracy < 0.5 and after.shift_accuracy > before.shift_accuracy + 0.3
    text = " ".join(res.output.split())
    assert f"accuracy on the shifted data: {before.shift_accuracy:.3f} -> {after.shift_accuracy:.3f}" in text
    assert "checked on the shifted data" in text
    assert "on the shifted data" in (out / "compare.html").read_text()
    assert "accuracy on the shifted data" in (out / "after" / "report.html").read_text()
    a, b = str(out / "before" / "audit.json"), str(out / "after" / "audit.json")
    assert runner.invoke(app, ["compare", a, b, "--max-drop-shift-accuracy", "0"]).exit_code == 0
    back = runner.invoke(app, ["compare", b, a, "--max-drop-shift-accuracy", "0.05"])
    assert back.exit_code == 1 and "shifted-data accuracy drop <= 0.05" in back.output
    plain = runner.invoke(app, ["compare", a, a, "--max-drop-shift-accuracy", "0"]).exit_code
    assert plain == 0


def test_audit_shift_data_and_compare_without_it(planted):  # noqa: F811
    torch.save(_shifted(128, 3), planted / "shift.pt")
    common = ["audit", "models/state.pt", "--factory", "twopath.py:build", "-m", "s=input:s", "-m", "x=input:x",
              "--data", "val_signal.pt", "--samples", "4", "--no-probe", "--quiet"]
    assert runner.invoke(app, [*common, "--shift-data", "shift.pt", "--out", "with"]).exit_code == 0
    assert runner.invoke(app, [*common, "--out", "without"]).exit_code == 0
    shifted = AuditResult.load(planted / "with" / "audit.json")
    assert shifted.shift_accuracy is not None and shifted.shift_accuracy < 0.5
    assert AuditResult.load(planted / "without" / "audit.json").shift_accuracy is None
    res = runner.invoke(app, ["compare", "without/audit.json", "with/audit.json", "--max-drop-shift-accuracy", "0.1"])
    assert res.exit_code == 2 and "--shift-data" in res.output


def test_nothing_to_fix_exits_0_without_training_unless_forced(planted):  # noqa: F811
    ns: dict = {}
    exec(TWOPATH, ns)
    both = ns["build"]()
    with torch.no_grad():
        both.x_head.weight[:, :3].copy_(1.6 * torch.eye(3))  # x and s used alike
    torch.save(both.state_dict(), planted / "models" / "both.pt")
    args = ["fix", "models/both.pt", "--data", "train_signal.pt", "--val", "val_signal.pt", *RUN]
    res = runner.invoke(app, [*args, "--out", "out"])
    assert res.exit_code == 0, res.output
    assert "nothing to fix" in res.output and "--force" in res.output
    out = planted / "out"
    assert (out / "before" / "audit.json").exists() and not (out / "model.pt").exists()
    assert not (out / "training_log.json").exists() and not (out / "STATUS").exists()
    # forced: the model relies on s and x about equally, so the target is refused, not guessed
    forced = runner.invoke(app, [*args, "--force", "--out", "forced"])
    text = " ".join(forced.output.split())
    assert forced.exit_code == 2 and "about equally" in text and "--augment s" in text, text
    named = runner.invoke(app, [*args, "--force", "--augment", "s", "--steps", "2", "--out", "named"])
    assert named.exit_code in (0, 1) and (planted / "named" / "model.pt").exists()
