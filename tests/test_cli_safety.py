"""Issue 18's reproductions through the command line: no trust from a file, no input
overwritten, nothing deleted that the tool did not write, no resume of another model's
checkpoint, no manifest beside a stale model."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

from test_cli_fix import MODS, project  # noqa: E402,F401  (the fixture)

from biasscope.cli.main import app  # noqa: E402
from biasscope.report import MANIFEST_NAME, read_manifest  # noqa: E402

runner = CliRunner()
FIX = ["fix", "state.pt", "--factory", "fixmodels.py:build", *MODS, "--batch-size", "16", "--audit-samples", "4", "--quiet",
       "--force"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): _sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_trust_pickle_in_the_config_is_refused_naming_the_flag(project):
    torch.save(torch.load(project / "train.pt"), project / "data.pt")
    for text in ("trust_pickle = true\n", "[audit]\ntrust_pickle = true\n"):
        (project / "biasscope.toml").write_text('model = "pickled.pt"\ndata = "train.pt"\n' + text)
        res = runner.invoke(app, ["audit", *MODS, "--out", "r"])
        assert res.exit_code == 2, res.output
        flat = res.output.replace("\n", "")  # the terminal wraps long tmp paths anywhere
        assert "--trust-pickle" in flat and "biasscope.toml" in flat and "did not foresee" not in flat
        assert not (project / "r").exists()


@pytest.mark.parametrize("flag", ["--data", "--val"])
@pytest.mark.parametrize("link", ["same", "symlink", "hardlink"])
def test_fix_never_writes_over_an_input(project, flag, link):
    """--data/--val pointing at a file fix would write (the model, a report), directly, by a
    symlink or by a hard link: refused before any work."""
    (project / "out").mkdir()
    target = project / "out" / "model.pt"
    if link == "same":
        os.replace(project / "train.pt", target)
        source = "out/model.pt"
    else:
        os.replace(project / "train.pt", project / "kept.pt")
        (os.symlink if link == "symlink" else os.link)(project / "kept.pt", target)
        source = "kept.pt"
    args = ["--data", source, "--val", "val.pt"] if flag == "--data" else ["--data", "val.pt", "--val", source]
    before = _sha(target)
    res = runner.invoke(app, [*FIX, *args, "--steps", "2", "--out", "out"])
    assert res.exit_code == 2 and "would overwrite the input" in res.output, res.output
    assert _sha(target) == before and sorted(p.name for p in (project / "out").iterdir()) == ["model.pt"]


def test_inputs_inside_a_folder_fix_replaces_are_refused(project):
    (project / "out" / "before").mkdir(parents=True)
    os.replace(project / "val.pt", project / "out" / "before" / "audit.json")
    res = runner.invoke(app, [*FIX, "--data", "train.pt", "--val", "out/before/audit.json", "--steps", "2", "--out", "out"])
    assert res.exit_code == 2 and "would overwrite the input" in res.output, res.output


@pytest.mark.parametrize("kind", ["hf folder", "model file"])
def test_fix_never_replaces_a_model_it_did_not_write(project, kind):
    """An existing OUT/model/ (Hugging Face) or OUT/model.pt that no manifest lists is the
    user's: refused before loading anything, left as it was."""
    out = project / "out"
    if kind == "hf folder":
        model = project / "hf"
        model.mkdir()
        (model / "config.json").write_text("{}")
        (out / "model").mkdir(parents=True)
        (out / "model" / "notes.txt").write_text("mine")
    else:
        model = project / "state.pt"
        out.mkdir()
        (out / "model.pt").write_bytes(b"mine")
    before = _tree(out)
    res = runner.invoke(app, ["fix", str(model), "--factory", "fixmodels.py:build", *MODS, "--data", "train.pt", "--out", "out"])
    assert res.exit_code == 2 and "did not write it" in res.output and "--out" in res.output, res.output
    assert _tree(out) == before


def test_a_second_fix_replaces_its_own_model_and_the_manifest_covers_it(project):
    res = runner.invoke(app, [*FIX, "--data", "train.pt", "--steps", "2", "--out", "out"])
    assert res.exit_code == 0, res.output
    manifest = read_manifest(project / "out")
    assert manifest is not None and manifest["files"]["model.pt"] == _sha(project / "out" / "model.pt")
    res = runner.invoke(app, [*FIX, "--data", "train.pt", "--steps", "3", "--out", "out"])
    assert res.exit_code == 0, res.output
    assert read_manifest(project / "out")["run"]["steps"] == 3


def test_an_interrupted_second_fix_leaves_no_manifest_beside_a_newer_model(project, monkeypatch):
    res = runner.invoke(app, [*FIX, "--data", "train.pt", "--steps", "2", "--out", "out"])
    assert res.exit_code == 0 and read_manifest(project / "out") is not None
    import biasscope.workflow as wf

    calls = {"n": 0}
    real = wf.audit

    def audit_then_stop(*a, **k):  # the second audit (of the fixed model) is interrupted
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(wf, "audit", audit_then_stop)
    res = runner.invoke(app, [*FIX, "--data", "train.pt", "--steps", "3", "--out", "out"])
    assert res.exit_code == 130, res.output
    assert not (project / "out" / MANIFEST_NAME).exists() and read_manifest(project / "out") is None
    status = (project / "out" / "STATUS").read_text()
    assert "model.pt" in status
    monkeypatch.setattr(wf, "audit", real)  # the next run may replace the model it wrote
    res = runner.invoke(app, [*FIX, "--data", "train.pt", "--steps", "3", "--out", "out"])
    assert res.exit_code == 0, res.output
    assert read_manifest(project / "out")["files"]["model.pt"] == _sha(project / "out" / "model.pt")


@pytest.mark.parametrize("change", ["model", "data", "val"])
def test_resume_refuses_a_checkpoint_of_other_inputs(project, change):
    common = [*FIX, "--checkpoint-every", "2", "--steps", "4", "--out", "out"]
    res = runner.invoke(app, [*common, "--data", "train.pt", "--val", "val.pt"])
    assert res.exit_code == 0, res.output
    data = torch.load(project / "train.pt")
    other = {k: v.flip(0) for k, v in data.items()}
    torch.save(other, project / "other.pt")
    args = ["--data", "other.pt" if change == "data" else "train.pt", "--val", "other.pt" if change == "val" else "val.pt"]
    if change == "model":
        state = torch.load(project / "state.pt")
        torch.save({k: v + 1 for k, v in state.items()}, project / "state.pt")
    res = runner.invoke(app, [*common, *args, "--resume"])
    assert res.exit_code == 2, res.output
    named = {"model": "the model", "data": "--data", "val": "--val"}[change]
    assert "other inputs" in res.output and named in res.output and "did not foresee" not in res.output


EXITS = {
    "factory": "import os\nfrom fixmodels import Net\ndef build():\n    os._exit({code})\n",
    "forward": "import os\nfrom fixmodels import Net\nclass Quits(Net):\n    def forward(self, image, meta):\n        os._exit({code})\ndef build():\n    return Quits()\n",
}


def _command(*args: str, **env: str) -> tuple[int, str]:
    import subprocess

    run = subprocess.run([sys.executable, "-m", "biasscope", *args], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1", **env})
    return run.returncode, run.stdout + run.stderr


@pytest.mark.parametrize("where", ["factory", "forward"])
@pytest.mark.parametrize("code", [0, 1])
def test_os_exit_in_user_code_is_never_success_nor_a_gate(project, where, code):
    """os._exit(0) (or 1, a failed gate's code) from a factory or a forward: the launcher sees
    the command did not complete and exits 2 with a paragraph; nothing is written."""
    (project / "quits.py").write_text(EXITS[where].format(code=code))
    rc, text = _command("audit", "state.pt", "--factory", "quits.py:build", "--data", "val.pt", *MODS,
                        "--samples", "4", "--quiet", "--out", "r")
    assert rc == 2, text
    assert "stopped before it completed" in text and "os._exit" in text
    assert not (project / "r" / MANIFEST_NAME).exists()


def test_the_launcher_passes_through_success_and_gate_failures(project):
    rc, text = _command("audit", "state.pt", "--factory", "fixmodels.py:build", "--data", "val.pt", *MODS,
                        "--samples", "4", "--permutation-repeats", "2", "--quiet", "--out", "r", "--fail-on", "weak")
    assert rc in (0, 1) and "stopped before" not in text, text
    assert read_manifest(project / "r") is not None
    assert _command("--version")[0] == 0
    assert _command("audit", "nosuch.pt", "--out", "r2")[0] == 2


MARKUP = "[/]x[bold]"
ESC = "\x1b]0;owned\x07\x1b[2J"


def test_markup_and_escape_sequences_in_names_and_paths_are_shown_not_run(project):
    """A --out with rich markup, and modality names with markup and terminal escape
    sequences: the run completes, the names are printed literally (control characters made
    visible), and Ctrl-C paths print through the same escaping."""
    data = torch.load(project / "train.pt")
    torch.save({"a": data["image"], "b": data["meta"], "label": data["label"]}, project / "ab.pt")
    (project / "ab.py").write_text("from fixmodels import Net\nclass AB(Net):\n    def forward(self, a, b):\n"
                                   "        return super().forward(a, b)\ndef build():\n    return AB()\n")
    out = f"o{MARKUP}ut"
    mods = ["-m", f"{MARKUP}=input:a", "-m", f"t{ESC}=input:b"]
    res = runner.invoke(app, ["audit", "state.pt", "--factory", "ab.py:build", "--data", "ab.pt", *mods,
                              "--samples", "4", "--permutation-repeats", "2", "--out", out])
    assert res.exit_code in (0, 1), res.output
    assert "\x1b" not in res.output and "\\x1b" in res.output and MARKUP in res.output
    assert read_manifest(project / out) is not None
    res = runner.invoke(app, [*FIX, "--data", "train.pt", "--steps", "2", "--out", out + "2"])
    assert res.exit_code == 0 and f"o{MARKUP}ut2" in res.output.replace("\n", ""), res.output


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.uint8, torch.int32])
def test_every_integer_label_dtype_is_audited(project, dtype):
    data = torch.load(project / "val.pt")
    torch.save({**data, "label": data["label"].to(dtype)}, project / "small.pt")
    res = runner.invoke(app, ["audit", "state.pt", "--factory", "fixmodels.py:build", "--data", "small.pt", *MODS,
                              "--samples", "4", "--permutation-repeats", "2", "--quiet", "--out", "r"])
    assert res.exit_code == 0, res.output
    result = json.loads((project / "r" / "audit.json").read_text())
    assert result["modalities"][0]["permutation"] is not None and result["shapley"] is not None


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file names are UTF-8 only")
def test_a_data_file_name_that_is_not_utf8_is_reported(project):
    name = os.fsdecode(b"val_\xff\xfe.pt")
    os.replace(project / "val.pt", project / name)
    res = runner.invoke(app, ["audit", "state.pt", "--factory", "fixmodels.py:build", "--data", name, *MODS,
                              "--samples", "4", "--permutation-repeats", "2", "--quiet", "--out", "r"])
    assert res.exit_code == 0, res.output
    assert read_manifest(project / "r") is not None
    assert "val_\\udcff\\udcfe.pt" in (project / "r" / "audit.json").read_text(encoding="utf-8")


@pytest.mark.parametrize("args, bound", [
    (["--permutation-repeats", "100000000"], "<= 1000"),
    (["--samples", "100000"], "50,000"),  # 2 modalities: the budget is samples x modalities
    (["--max-rows", "100000000000"], "10000000"),
])
def test_counts_have_upper_bounds_stated_in_the_message(project, args, bound):
    res = runner.invoke(app, ["audit", "state.pt", "--factory", "fixmodels.py:build", "--data", "val.pt", *MODS,
                              *args, "--quiet", "--out", "r"])
    assert res.exit_code == 2 and bound in res.output and args[0] in res.output, res.output
    assert not (project / "r").exists()


@pytest.mark.parametrize("what", ["model", "data", "fix data"])
@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "folder"])
def test_non_regular_inputs_are_refused_before_opening(project, what, kind):
    path = project / "odd.pt"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:
        path = Path("/dev/zero")
    model, data = (str(path), "val.pt") if what == "model" else ("state.pt", str(path))
    verb = ["fix", "--steps", "2"] if what == "fix data" else ["audit"]
    res = runner.invoke(app, [*verb, model, "--factory", "fixmodels.py:build", "--data", data, *MODS, "--quiet", "--out", "r"])
    assert res.exit_code == 2, res.output
    expected = {"fifo": ["named pipe"], "/dev/zero": ["a device"], "folder": ["folder", "directory"]}[kind]
    assert any(e in res.output for e in expected) and "did not foresee" not in res.output


@pytest.mark.parametrize("case, args, named", [
    ("before is a file", [], "is a file"),
    ("unknown augment", ["--augment", "nosuch"], "--augment"),
    ("one audit sample", ["--audit-samples", "1"], "--audit-samples"),
    ("zero steps", ["--steps", "0"], "--steps"),
    ("a single example", ["--data", "one.pt", "--val", "one.pt"], "at least 2"),
])
def test_fix_checks_everything_before_the_first_step(project, case, args, named):
    """Each mistake is found before any work: exit 2 naming the real flag, nothing written."""
    data = torch.load(project / "train.pt")
    torch.save({k: v[:1] for k, v in data.items()}, project / "one.pt")
    (project / "out").mkdir()
    if case == "before is a file":
        (project / "out" / "before").write_text("mine")
    base = ["--data", "train.pt", "--steps", "2"] if "--data" not in args else ["--steps", "2"]
    res = runner.invoke(app, [*FIX, *base, *args, "--out", "out"])
    assert res.exit_code == 2 and named in res.output, res.output
    assert "did not foresee" not in res.output and "--max-steps" not in res.output and "--samples" not in res.output
    left = sorted(p.name for p in (project / "out").iterdir())
    assert left == (["before"] if case == "before is a file" else []), left


def test_a_late_error_removes_what_the_run_wrote(project, monkeypatch):
    """A failure after training (here: the disk is full while the model is saved) leaves the
    folder as it was: no STATUS, checkpoints or model of this run."""
    import biasscope.workflow as wf

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(wf, "save_model", full)
    res = runner.invoke(app, [*FIX, "--data", "train.pt", "--steps", "2", "--checkpoint-every", "1", "--out", "out"])
    assert res.exit_code == 2 and "No space left" in " ".join(res.output.split()), res.output
    assert "did not foresee" not in res.output and not (project / "out").exists()
    (project / "kept").mkdir()
    (project / "kept" / "notes.txt").write_text("mine")
    res = runner.invoke(app, [*FIX, "--data", "train.pt", "--steps", "2", "--checkpoint-every", "1", "--out", "kept"])
    assert res.exit_code == 2
    assert sorted(p.name for p in (project / "kept").iterdir()) == ["notes.txt"]


def _odd_input(project: Path, case: str) -> list[str]:
    """The command line of one item-12 case (a file the command reads is odd)."""
    data = torch.load(project / "val.pt")
    tensors = {"sparse": lambda t: t.to_sparse(), "meta": lambda t: torch.empty(t.shape, device="meta"),
               "float8": lambda t: t.to(torch.float8_e4m3fn)}
    run = ["audit", "state.pt", "--factory", "fixmodels.py:build", "--data", "odd.pt", *MODS, "--quiet", "--out", "r"]
    if case in tensors:
        torch.save({**data, "image": tensors[case](data["image"])}, project / "odd.pt")
    elif case == "nested toml":
        (project / "biasscope.toml").write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
        torch.save(data, project / "odd.pt")
    elif case == "nested config.json":
        (project / "hf").mkdir()
        (project / "hf" / "config.json").write_text("[" * 100000 + "]" * 100000)
        run[1:4] = ["hf"]
        torch.save(data, project / "odd.pt")
    elif case == "another architecture":
        torch.save({"layer.weight": torch.zeros(2, 2)}, project / "other_state.pt")
        torch.save(data, project / "odd.pt")
        run[1] = "other_state.pt"
    return run


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("case", ["sparse", "meta", "float8", "nested toml", "nested config.json", "another architecture"])
def test_odd_inputs_get_a_message_naming_the_file(project, case):
    res = runner.invoke(app, _odd_input(project, case))
    assert res.exit_code == 2, res.output
    assert "did not foresee" not in res.output and "Traceback" not in res.output, res.output
    named = {"nested toml": "biasscope.toml", "nested config.json": "config.json", "another architecture": "other_state.pt"}
    assert named.get(case, "odd.pt") in res.output.replace("\n", "")
