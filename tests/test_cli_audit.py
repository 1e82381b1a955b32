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


BASE = ["ignores_text.pt", "--factory", "models.py:build", "--data", "val.pt", *MODS]

UP_FRONT = [
    (["--seed", "-1"], "--seed must be an integer in [0,"),
    (["--seed", "1e23"], "Invalid value for '--seed'"),
    (["--device", "meta"], "--device must be 'auto'"),
    (["--scale", "inf"], "--scale must be a finite number > 0 (got inf)"),
    (["--scale", "nan"], "--scale must be a finite number"),
    (["--samples", "1000000000"], "--samples must be an integer in [2, 100000]"),
    (["--permutation-repeats", "1"], "--permutation-repeats must be 0 (skip) or an integer >= 2"),
    (["--max-rows", "lots"], "--max-rows must be a positive integer or auto"),
    (["--precision", "fp8"], "--precision must be one of fp32, bf16, fp16"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
    (["--out", "val.pt"], "--out 'val.pt' is an input path"),
    (["--out", "models.py"], "is an input path"),
    (["--out", "val.pt/sub"], "is a file, not a folder"),
    (["--out", "/proc/biasscope-report"], "is under /proc, a system pseudo file system"),
    (["--out", "/sys/x/y"], "is under /sys"),
]


@pytest.mark.parametrize("args, needle", UP_FRONT)
def test_options_and_outputs_checked_before_any_work(project, monkeypatch, args, needle):
    """Each bad value: exit 2, a specific message naming the flag, no traceback, no
    "unexpected" fallback, and the model is never loaded (nothing ran)."""
    import biasscope.io.loading

    def never(*a, **k):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(biasscope.io.loading, "load_model", never)
    snapshot = {p.name: p.read_bytes() for p in project.iterdir() if p.is_file()}
    res = runner.invoke(app, ["audit", *BASE, *FAST, *args])
    text = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert needle in text
    assert "Traceback" not in text and "unexpected" not in text
    assert {p.name: p.read_bytes() for p in project.iterdir() if p.is_file()} == snapshot
    assert not (project / "biasscope-report").exists()


def test_out_is_an_existing_file(project):
    (project / "notes.txt").write_text("mine")
    res = _audit(*BASE, *FAST, "--out", "notes.txt")
    assert res.exit_code == 2 and "'notes.txt' is a file" in " ".join(res.output.split())
    assert (project / "notes.txt").read_text() == "mine"


@pytest.mark.skipif(hasattr(__import__("os"), "geteuid") and __import__("os").geteuid() == 0, reason="root writes anywhere")
def test_out_read_only(project):
    ro = project / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        res = _audit(*BASE, *FAST, "--out", "ro/report")
        assert res.exit_code == 2 and "read-only" in res.output
    finally:
        ro.chmod(0o700)


def test_report_html_a_folder_is_refused_before_writing_anything(project):
    (project / "r" / "report.html").mkdir(parents=True)
    res = _audit(*BASE, *FAST, "--out", "r")
    assert res.exit_code == 2 and "is a folder" in res.output
    assert sorted(p.name for p in (project / "r").iterdir()) == ["report.html"]


def test_outputs_written_as_one_unit_with_a_manifest(project):
    from biasscope.report import MANIFEST_NAME, read_manifest

    (project / "r").mkdir()
    (project / "r" / ".audit.json.biasscope-tmp-999999999-x.tmp").write_text("stale")
    res = _audit(*BASE, *FAST, "--out", "r")
    assert res.exit_code == 0, res.output
    manifest = read_manifest(project / "r")
    assert manifest is not None and sorted(manifest["files"]) == ["audit.json", "report.html"]
    assert sorted(p.name for p in (project / "r").iterdir()) == ["audit.json", MANIFEST_NAME, "report.html"]


@pytest.mark.parametrize("where", ["--factory", "--data"])
def test_user_code_that_exits_is_an_error_not_a_success(project, where):
    args = list(BASE)
    args[args.index(where) + 1] = "sys:exit"
    res = _audit(*args, *FAST, "--out", "r")
    text = " ".join(res.output.split())
    # a builtin is refused before it is called (it could end the process)
    assert res.exit_code == 2 and "'sys:exit'" in text and "not a Python function or class" in text
    assert not (project / "r").exists()


def test_user_code_interrupt_is_an_error_naming_the_factory(project):
    (project / "boom.py").write_text("def build():\n    raise KeyboardInterrupt\n")
    res = _audit("ignores_text.pt", "--factory", "boom.py:build", *BASE[3:], *FAST, "--out", "r")
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "boom.py:build" in text and "Traceback" not in res.output
    assert not (project / "r").exists()


def test_new_flags_reach_the_options(project, monkeypatch):
    import biasscope.report

    seen = {}
    real = biasscope.report._run_audit

    def spy(model, data, modalities, options, **kw):
        seen["options"] = options
        return real(model, data, modalities, options, **kw)

    monkeypatch.setattr(biasscope.report, "_run_audit", spy)
    res = _audit(*BASE, *FAST, "--out", "r", "--no-output-check", "--no-tensorization", "--precision", "bf16", "--no-shapley", "--max-rows", "512", "--no-probe", "--explain", "0")
    assert res.exit_code == 0, res.output
    o = seen["options"]
    assert (o.check_output, o.tensorization, o.precision, o.shapley, o.max_rows) == (False, False, "bf16", False, 512)
    assert (o.samples, o.permutation_repeats, o.probe, o.explain) == (8, 3, False, 0)


def test_fail_on_uses_the_top_level_ignored_list():
    """`unused` (read but not relied upon) counts as ignored for --fail-on ignored."""
    from biasscope.compare import fail_on_gate

    class R:
        ignored = ["text"]
        modalities = [type("M", (), {"name": "text", "verdict": "unused"})(),
                      type("M", (), {"name": "image", "verdict": "weak"})()]

        def __getitem__(self, name):
            return next(m for m in self.modalities if m.name == name)

    gate = fail_on_gate(R(), "ignored")
    assert not gate.passed and gate.detail == "text is unused"
    assert fail_on_gate(R(), "weak").detail == "text is unused, image is weak"


def test_torchscript_trace_cut_unless_debug(project):
    import importlib.util

    spec = importlib.util.spec_from_file_location("cli_models3", project / "models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.jit.save(torch.jit.script(mod.Net(False)), project / "scripted.pt")
    torch.save({"image": torch.randn(8, 4), "text": torch.randn(8, 3), "label": torch.zeros(8, dtype=torch.long)}, project / "narrow.pt")
    res = _audit("scripted.pt", "--data", "narrow.pt", "-m", "image=input:image", "-m", "text=input:text", *FAST, "--out", "bad")
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "shapes cannot be multiplied" in text
    assert "Traceback of TorchScript" not in text and "<--- HERE" not in text
    from biasscope.cli._common import error_text
    from biasscope.errors import ModelOutputError

    raw = ModelOutputError("The model rejected its inputs (RuntimeError: The following operation failed in the "
                           "TorchScript interpreter.\nTraceback of TorchScript (most recent call last):\n  File x\n"
                           "    ~~~ <--- HERE\nRuntimeError: bad shape\n). Check the data.")
    assert "<--- HERE" not in error_text(raw) and "bad shape" in error_text(raw)
    assert "<--- HERE" in error_text(raw, debug=True)
