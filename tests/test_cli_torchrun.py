"""`torchrun --standalone --nproc-per-node 2 -m biasscope audit ...` (two CPU processes over
gloo) writes the same audit.json as `python -m biasscope audit ...`, once, from rank 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from _audit_compare import differences
from test_cli_audit import MODS, project  # noqa: F401 - the fixture

ARGS = ["full.pt", "--factory", "models.py:build_full", "--data", "val.pt", *MODS, "--samples", "8",
        "--permutation-repeats", "3", "--device", "cpu", "--batch-size", "20", "--no-probe", "--explain", "0"]


def _run(cmd: list[str], cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_torchrun_audit_equals_the_single_process_audit(project):  # noqa: F811
    single = _run([sys.executable, "-m", "biasscope", "audit", *ARGS, "--out", "one"], project)
    assert single.returncode == 0, single.stdout + single.stderr
    two = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "-m", "biasscope", "audit", *ARGS, "--out", "two"], project)
    assert two.returncode == 0, two.stdout + two.stderr
    a = json.loads((project / "one" / "audit.json").read_text())
    b = json.loads((project / "two" / "audit.json").read_text())
    assert differences(a, b) == []
    assert a["n_examples"] == 96
    assert (a["settings"]["processes"], b["settings"]["processes"]) == (1, 2)
    assert two.stdout.count("report:") == 1  # rank 0 alone prints
