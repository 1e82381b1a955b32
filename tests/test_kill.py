"""Interrupted audits: SIGINT and SIGKILL at seeded random moments of `biasscope audit`
leave the report folder complete or absent (a manifest whose hashes match, or none), never
a traceback on Ctrl-C, and the next run cleans what the killed one left."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _project import write_project
import torch

from biasscope.report import MANIFEST_NAME, read_manifest


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    write_project(root, n=64, module_name="kill_models")
    return root


def _command(project: Path, out: Path, seed: int) -> list[str]:
    return [
        sys.executable, "-m", "biasscope", "audit", str(project / "model.pt"),
        "--factory", f"{project / 'models.py'}:build", "--data", str(project / "val.pt"),
        "-m", "image=input:image", "-m", "text=input:text", "--samples", "4",
        "--permutation-repeats", "2", "--seed", str(seed), "--quiet", "--out", str(out),
    ]


def _run(cmd: list[str], kill: tuple[int, float] | None = None) -> tuple[int, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    if kill is not None:
        sig, delay = kill
        time.sleep(delay)
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err.decode(errors="replace")


def _complete_or_absent(out: Path) -> None:
    if (out / MANIFEST_NAME).exists():
        assert read_manifest(out) is not None, "a manifest whose files do not match it"


@pytest.mark.slow
def test_kills_leave_complete_or_absent_outputs(project):
    out = project / "report"
    start = time.monotonic()
    code, err = _run(_command(project, out, seed=0))
    full = time.monotonic() - start
    assert code == 0, err
    first = read_manifest(out)
    assert first is not None
    rng = random.Random(0)
    for i, sig in enumerate([signal.SIGINT, signal.SIGKILL] * 2):
        delay = rng.uniform(0.3, full * 1.1)
        code, err = _run(_command(project, out, seed=i + 1), kill=(sig, delay))
        _complete_or_absent(out)
        if sig == signal.SIGINT:
            # 130 from the CLI; -SIGINT only if the interpreter had not started the program yet
            assert code in (0, 130, -signal.SIGINT), (delay, code, err)
            if code == 130:
                assert "Traceback" not in err, err
        else:
            assert code in (0, -signal.SIGKILL)
    code, err = _run(_command(project, out, seed=99))
    assert code == 0, err
    assert read_manifest(out) is not None
    # what killed runs left (staging folders, temp files) is gone after the next run
    assert sorted(p.name for p in out.iterdir()) == ["audit.json", MANIFEST_NAME, "report.html"]


def test_a_write_cut_between_two_files_leaves_no_manifest(tmp_path, monkeypatch):
    """The moment SIGKILL can hit (one file renamed, the next not yet): no manifest is left
    to vouch for the mix, and the next write removes the staging folder."""
    from biasscope.report import write_outputs

    write_outputs(tmp_path, {"audit.json": "old", "report.html": "old"})
    assert read_manifest(tmp_path) is not None
    real = os.replace
    calls = {"n": 0}

    def cut(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(os, "replace", cut)
    with pytest.raises(KeyboardInterrupt):
        write_outputs(tmp_path, {"audit.json": "new", "report.html": "new"})
    monkeypatch.setattr(os, "replace", real)
    assert not (tmp_path / MANIFEST_NAME).exists() and read_manifest(tmp_path) is None
    assert (tmp_path / "audit.json").read_text() == "new" and (tmp_path / "report.html").read_text() == "old"
    write_outputs(tmp_path, {"audit.json": "next", "report.html": "next"})
    assert read_manifest(tmp_path) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.json", MANIFEST_NAME, "report.html"]
