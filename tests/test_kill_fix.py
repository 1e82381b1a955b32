"""Interrupted fixes: SIGKILL and SIGINT at seeded random moments of `biasscope fix` after
its first checkpoint exists leave the input byte-identical, the output folder either
complete (a manifest whose hashes match) or marked incomplete by a `STATUS` file that says
what is missing and how to resume; `--resume` then finishes to the weights of an
uninterrupted run, exactly. Ctrl-C exits 130 without a traceback."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from biasscope.report import MANIFEST_NAME, read_manifest
from biasscope.workflow import STATUS_NAME

# Each training forward sleeps 25 ms (the audits run in eval mode and do not), so the 40
# steps take about a second: a window in which a random kill lands inside training, beside
# the later windows (saving the model, the second audit, writing the reports).
MODELS = textwrap.dedent(
    """
    import time
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.image, self.tab, self.head = nn.Linear(5, 8), nn.Linear(3, 8), nn.Linear(16, 3)

        def forward(self, image, meta):
            if self.training:
                time.sleep(0.025)
            return self.head(torch.cat([torch.tanh(self.image(image)), torch.tanh(self.tab(meta))], 1))

    def build():
        return Net()
    """
)
STEPS = 40
REPORT_FILES = ["after/audit.json", "after/report.html", "before/audit.json", "before/report.html",
                "compare.html", "model.pt", "training_log.csv", "training_log.json"]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("killfix")
    (root / "fixmodels.py").write_text(MODELS)
    torch.manual_seed(0)
    net = torch.nn.Module()
    net.image, net.tab, net.head = torch.nn.Linear(5, 8), torch.nn.Linear(3, 8), torch.nn.Linear(16, 3)
    g = torch.Generator().manual_seed(1)
    image, meta = torch.randn(96, 5, generator=g), torch.randn(96, 3, generator=g)
    label = (meta[:, 0] > 0).long() + (meta[:, 1] > 0).long()  # meta is the shortcut
    torch.save({"image": image, "meta": meta, "label": label}, root / "train.pt")
    torch.save({"image": image[:48], "meta": meta[:48], "label": label[:48]}, root / "val.pt")
    torch.save(net.state_dict(), root / "state.pt")
    return root


def _command(project: Path, out: Path, *, resume: bool = False) -> list[str]:
    return [
        sys.executable, "-m", "biasscope", "fix", str(project / "state.pt"),
        "--factory", f"{project / 'fixmodels.py'}:build", "--data", str(project / "train.pt"),
        "--val", str(project / "val.pt"), "-m", "image=input:image", "-m", "meta=input:meta",
        "--steps", str(STEPS), "--batch-size", "16", "--audit-samples", "4", "--checkpoint-every", "2",
        "--seed", "0", "--quiet", "--force", "--out", str(out), *(["--resume"] if resume else []),
    ]


def _start(cmd: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err.decode(errors="replace")


def _kill_after_first_checkpoint(cmd: list[str], out: Path, sig: int, delay: float) -> tuple[int, str]:
    """Start ``cmd``, wait for its first checkpoint, then send ``sig`` ``delay`` s later."""
    proc = _start(cmd)
    deadline = time.monotonic() + 60
    while not any((out / "checkpoints").glob("fix_checkpoint*")) and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 60 s"
        time.sleep(0.01)
    time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(sig)
    return _finish(proc)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _complete_or_marked(out: Path) -> bool:
    """Assert the folder is complete (valid manifest, every report file) or says, in STATUS,
    what is missing and how to resume. Returns whether it is complete."""
    if (out / MANIFEST_NAME).exists():
        manifest = read_manifest(out)
        assert manifest is not None, "a manifest whose files do not match it"
        assert all((out / name).is_file() for name in REPORT_FILES)
        return True
    status = (out / STATUS_NAME).read_text()  # no manifest: STATUS must say why
    assert "missing:" in status and "--resume" in status, status
    return False


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def _kill_and_resume(project: Path, name: str, sig: int, delay: float, input_sha: str) -> None:
    """One interrupted run into ``project/name``, its checks, and the ``--resume`` run."""
    out = project / name
    code, err = _kill_after_first_checkpoint(_command(project, out), out, sig, delay)
    if sig == signal.SIGKILL:
        assert code in (0, -signal.SIGKILL), (delay, code, err)
    else:  # 130, no traceback, and where to resume, on screen and in STATUS
        assert code == 130 and "Traceback" not in err and "--resume" in err, (delay, code, err)
        assert "interrupted after" in (out / STATUS_NAME).read_text()
    assert _sha(project / "state.pt") == input_sha
    complete = _complete_or_marked(out)
    assert complete == (code == 0), (delay, code)
    code, err = _finish(_start(_command(project, out, resume=True)))
    assert code == 0, err
    assert _complete_or_marked(out) and not (out / STATUS_NAME).exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no staging or temp left
    assert _sha(project / "state.pt") == input_sha


@pytest.mark.slow
def test_killed_fixes_resume_to_the_uninterrupted_weights(project):
    input_sha = _sha(project / "state.pt")
    reference = _start(_command(project, project / "reference"))
    rng = random.Random(0)
    # Ctrl-C drawn inside the training window (so it must exit 130), SIGKILL anywhere after;
    # the two chains and the reference run side by side (each waits on its own checkpoint)
    rounds = [("interrupted", signal.SIGINT, rng.uniform(0.0, 0.8)), ("killed", signal.SIGKILL, rng.uniform(0.0, 3.0))]
    with ThreadPoolExecutor(len(rounds)) as pool:
        for done in [pool.submit(_kill_and_resume, project, *r, input_sha) for r in rounds]:
            done.result()
    code, err = _finish(reference)
    assert code == 0, err
    expected = _weights(project / "reference" / "model.pt")
    before = _weights(project / "state.pt")
    assert any(not torch.equal(expected[k], before[k]) for k in expected)  # training changed them
    for name, _, _ in rounds:
        got = _weights(project / name / "model.pt")
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], expected[k]) for k in expected), name
