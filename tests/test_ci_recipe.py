"""The README's CI recipe, run as written: the baseline command, then the job's commands
(parsed from README.md's "In CI" section) in a folder holding a biasscope.toml and a tiny
model; the artifact is small and its JSON follows the schemas (conftest checks them)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from biasscope.cli.main import app

from _project import write_project

README = Path(__file__).resolve().parents[1] / "README.md"
runner = CliRunner()
TOML = """\
model = "model.pt"
factory = "models.py:build"
data = "val.pt"

[modalities]
image = "input:image"
text = "input:text"

[audit]
samples = 4
permutation_repeats = 4
shapley = false
probe = false
explain = 0
"""
#: commands of the recipe that are not biasscope's (they are the CI's or git's)
OTHERS = ("pip install biasscope", "git add baseline/audit.json")


def recipe() -> tuple[list[str], list[str]]:
    """The baseline commands (the bash block) and the job's ``run:`` commands (the yaml block)
    of the README's "In CI" section."""
    section = README.read_text().split("## In CI", 1)[1].split("\n## ", 1)[0]
    bash = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    yaml = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    baseline = [line.strip() for line in bash.splitlines() if line.strip()]
    job = [m.group(1).strip() for m in re.finditer(r"^- run: (.*)$", yaml, re.M)]
    return baseline, job


def run(command: str) -> int:
    """One command of the recipe: biasscope's run in-process, the others checked and skipped."""
    if command in OTHERS:
        return 0
    words = shlex.split(command, comments=True)
    assert words[0] == "biasscope", f"the recipe runs {command!r}: teach this test what it does"
    return runner.invoke(app, words[1:]).exit_code


def test_the_recipe_makes_its_baseline_and_names_it():
    baseline, job = recipe()
    assert any("--out baseline" in c for c in baseline) and "git add baseline/audit.json" in baseline
    assert any(c.startswith("biasscope compare baseline/audit.json biasscope-report/audit.json") for c in job)


def test_the_ci_recipe_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    net, *_ = write_project(tmp_path, n=48, module_name="ci_recipe_models")
    (tmp_path / "biasscope.toml").write_text(TOML)
    baseline, job = recipe()
    assert [run(c) for c in baseline] == [0] * len(baseline)
    assert json.loads((tmp_path / "baseline" / "audit.json").read_text())["ignored"] == []

    assert [run(c) for c in job] == [0] * len(job)  # the same model: every gate passes
    report = tmp_path / "biasscope-report"
    assert json.loads((report / "compare.json").read_text())["status"] == "passed"
    assert (report / "report.html").stat().st_size < 300_000  # --plotlyjs cdn: no 4.8 MB plotly.js

    with torch.no_grad():  # a new model that ignores text: the audit step fails, outputs written
        net.text.weight.zero_()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    codes = [run(c) for c in job]
    assert codes[:2] == [0, 1]
    assert json.loads((report / "audit.json").read_text())["ignored"] == ["text"]
