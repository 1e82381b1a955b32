"""fix under torchrun: two CPU processes over gloo (forked, with the environment torchrun
sets), compared with one process.

The invariants (biasscope/fixing/_ddp.py): at every step the ranks' shards make up the single
process's global batch; the gradient is that of CE(global batch) + lambda * sum_r (n_r/n)
term(shard_r); the position counts global batches, so checkpoints resume at any world size;
only rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _ranks import free_port, spawn
import torch
import torch.nn.functional as F
from torch import nn

import importlib
from biasscope import Modality
from biasscope.runtime._batch import OutputSpec
from biasscope.fixing._checkpoint import CheckpointStore
from biasscope.fixing._ddp import rank_seed, rank_shard
from biasscope.fixing._fixdata import TrainingData
from biasscope.fixing._trainer import _regularizer
from biasscope.fixing.fix import FixInterrupted, fix
from biasscope.runtime.options import FixOptions

WORLD = 2
DEADLINE_S = 120
MODS = [Modality("a", input="a"), Modality("b", input="b")]
# no ModDrop and no dropout: what is left of each step is deterministic given the noise
COMMON = dict(samples=3, seed=4, lr=1e-2, device="cpu", modality_dropout=0.0, max_steps=5,
              checkpoint_every=2, eval_every=2)
EXACT = dict(COMMON, lambda_=0.0)  # cross-entropy alone: one process's run, exactly
REGULARIZED = dict(COMMON, lambda_=0.5)


class Net(nn.Module):
    """Two encoders and a linear head (no dropout)."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.enc_a = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
            self.enc_b = nn.Sequential(nn.Linear(3, 8), nn.Tanh())
            self.head = nn.Linear(16, 3)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.enc_a(a), self.enc_b(b)], dim=1))


def batches(n: int, size: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, 4, generator=g), torch.randn(n, 3, generator=g)
    label = (a[:, :3] + 1.5 * b).argmax(dim=1)
    return [{"a": a[i : i + size], "b": b[i : i + size], "label": label[i : i + size]}
            for i in range(0, n, size)]


# 60 examples in global batches of 15: shards of 8 and 7 rows (unequal), 4 steps an epoch
TRAIN, VAL = batches(60, 15, seed=0), batches(24, 12, seed=1)


def _state(result) -> dict:
    return {"weights": {k: v.tolist() for k, v in result.model.state_dict().items()},
            "history": result.history, "steps": result.steps, "lambda": result.lambda_value}


def _interrupt_after_the_step_2_checkpoint(monkeypatch_target) -> None:
    """A Ctrl-C on every rank (torchrun forwards SIGINT to all) right after step 2's checkpoint."""
    save = monkeypatch_target._save

    def save_then_stop(store, trainer, settings, every, *rest):
        save(store, trainer, settings, every, *rest)
        if trainer.step_count == 2:
            raise KeyboardInterrupt

    monkeypatch_target._save = save_then_stop


def _worker(rank: int, port: int, folder: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    out = Path(folder)
    # three fix calls in one process: the first joins the group, the others reuse it
    calls: list[int] = []
    progress = lambda stage, done, total, info: calls.append(done)  # noqa: E731
    exact = fix(Net(), TRAIN, MODS, val_data=VAL, checkpoint_dir=out / f"exact{rank}", progress=progress, **EXACT)
    regularized = fix(Net(), TRAIN, MODS, **REGULARIZED)
    _interrupt_after_the_step_2_checkpoint(importlib.import_module("biasscope.fixing.fix"))  # this child only
    try:
        fix(Net(), TRAIN, MODS, val_data=VAL, checkpoint_dir=out / f"cut{rank}", **EXACT)
        interrupted = None
    except FixInterrupted as exc:
        interrupted = exc.result.steps
    result = {"exact": _state(exact), "regularized": _state(regularized), "progress": calls,
              "interrupted": interrupted}
    (out / f"rank{rank}.json").write_text(json.dumps(result))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> tuple[list[dict], Path]:
    folder = tmp_path_factory.mktemp("fix_ranks")
    spawn(_worker, (free_port(), str(folder)), world=WORLD, deadline_s=DEADLINE_S)
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(WORLD)], folder


def _close(weights: dict, model: nn.Module, tol: float = 1e-5) -> float:
    """The largest absolute difference between ``weights`` and the model's (asserted <= tol)."""
    state = model.state_dict()
    assert weights.keys() == state.keys()
    gap = max(float((torch.tensor(weights[k]) - state[k]).abs().max()) for k in state)
    assert gap <= tol, gap
    return gap


def test_two_processes_train_the_single_process_model(ranks):
    results, _ = ranks
    one = fix(Net(), TRAIN, MODS, val_data=VAL, **EXACT)
    for r in results:  # DDP keeps the ranks' weights identical, and equal to one process's
        _close(r["exact"]["weights"], one.model)
        assert r["exact"]["steps"] == one.steps == 5
        for mine, theirs in zip(r["exact"]["history"], one.history, strict=True):
            assert mine["step"] == theirs["step"] and mine["epoch"] == theirs["epoch"]
            assert mine["ce"] == pytest.approx(theirs["ce"], rel=1e-5)  # the global batch's CE
            for key in ("val_loss", "val_accuracy", "val_proxy_accuracy"):
                assert (key in mine) == (key in theirs)
                if key in mine:
                    assert mine[key] == pytest.approx(theirs[key], rel=1e-5)
    assert not _same(Net(), one.model)  # it trained


def _same(m1: nn.Module, m2: nn.Module) -> bool:
    s1, s2 = m1.state_dict(), m2.state_dict()
    return all(torch.equal(s1[k], s2[k]) for k in s1)


def _reference_regularized() -> nn.Module:
    """One process minimising the distributed objective step by step: CE(global batch) +
    lambda * sum_r (n_r/n) term(shard_r), each shard's regularizer (its noise seeded, its
    calls counted for ``term_every``) as its rank's."""
    opts = FixOptions(**{k: v for k, v in REGULARIZED.items()})
    model = Net().train()
    regs = [_regularizer(model, MODS, opts, OutputSpec()) for _ in range(WORLD)]
    optimizer = torch.optim.Adam(model.parameters(), lr=opts.lr)
    data = TrainingData(TRAIN, label_key="label", seed=opts.seed, shuffle=True)
    step = 0
    for epoch in range(opts.epochs):
        for batch in data.epoch(epoch):
            optimizer.zero_grad()
            for rank in range(WORLD):
                shard, share = rank_shard(batch, rank, WORLD)
                regs[rank].generator("cpu").manual_seed(rank_seed(opts.seed, rank, step))
                term, _ = regs[rank](shard)
                ce = F.cross_entropy(model(*shard.args, **shard.kwargs), shard.label)
                (share * (ce + opts.lambda_ * term.float())).backward()
            optimizer.step()
            step += 1
            if step == opts.max_steps:
                return model
    return model


def test_the_regularized_gradient_is_the_stated_objective_of_the_global_batch(ranks):
    results, _ = ranks
    reference = _reference_regularized()
    for r in results:
        _close(r["regularized"]["weights"], reference)
        assert r["regularized"]["lambda"] == 0.5
        every = FixOptions().term_every  # the term is computed on every term_every-th step
        assert all(set(h["scores"]) == {"a", "b"} for h in r["regularized"]["history"])
        assert all((h["reg"] != 0.0) == ((h["step"] - 1) % every == 0) for h in r["regularized"]["history"])
    # the term is per shard, so the run differs from one process's on the whole batch
    one = fix(Net(), TRAIN, MODS, **REGULARIZED)
    state = one.model.state_dict()
    gap = max(float((torch.tensor(results[0]["regularized"]["weights"][k]) - state[k]).abs().max()) for k in state)
    assert gap > 1e-6


def test_a_checkpoint_from_two_processes_resumes_in_one(ranks):
    results, folder = ranks
    assert [r["interrupted"] for r in results] == [2, 2]
    saved = CheckpointStore(folder / "cut0").load()["trainer"]
    assert saved["step"] == 2 and list(saved["position"]) == [0, 2]  # global batches
    resumed = fix(Net(), TRAIN, MODS, val_data=VAL, checkpoint_dir=folder / "cut0", resume=True, **EXACT)
    assert resumed.steps == 5 and not resumed.interrupted
    _close(results[0]["exact"]["weights"], resumed.model)
    assert [h["step"] for h in resumed.history] == [1, 2, 3, 4, 5]


def test_only_rank_0_writes_checkpoints_and_reports_progress(ranks):
    results, folder = ranks
    assert CheckpointStore(folder / "exact0").load()["trainer"]["step"] == 4  # every 2 of 5 steps
    assert not (folder / "exact1").exists() and not (folder / "cut1").exists()
    assert results[0]["progress"] == [1, 2, 3, 4, 5] and results[1]["progress"] == []


def test_world_size_1_under_torchrun_is_the_plain_run_bit_for_bit(monkeypatch):
    plain = fix(Net(), TRAIN, MODS, val_data=VAL, **dict(COMMON, lambda_=0.5, modality_dropout=0.5))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    alone = fix(Net(), TRAIN, MODS, val_data=VAL, **dict(COMMON, lambda_=0.5, modality_dropout=0.5))
    assert _same(plain.model, alone.model) and plain.history == alone.history


def test_a_batch_smaller_than_the_world_leaves_a_rank_a_zero_share():
    from biasscope.runtime._batch import split_batch

    one = split_batch(batches(1, 1, seed=2)[0], label_key="label")
    assert [rank_shard(one, r, 2)[1] for r in range(2)] == [1.0, 0.0]
    full = split_batch(TRAIN[0], label_key="label")
    parts = [rank_shard(full, r, 2) for r in range(2)]
    assert [p[0].size for p in parts] == [8, 7] and sum(p[1] for p in parts) == pytest.approx(1.0)
    assert torch.equal(torch.cat([p[0].label for p in parts]), full.label)  # in order, complete
    assert len({rank_seed(4, r, s) for r in range(2) for s in range(50)}) == 100


MODEL_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.image = nn.Linear(5, 8)
            self.tab = nn.Linear(3, 8)
            self.head = nn.Linear(16, 3)

        def forward(self, image, meta):
            return self.head(torch.cat([torch.tanh(self.image(image)), torch.tanh(self.tab(meta))], 1))

    def build():
        return Net()
    """
)


@pytest.mark.slow
def test_torchrun_fix_end_to_end(tmp_path):
    """``torchrun --standalone --nproc-per-node 2 -m biasscope fix ...``: rank 0 writes the
    report folder; lambda (calibrated on the whole batches by every rank) is one process's."""
    (tmp_path / "fixmodels.py").write_text(MODEL_SOURCE)
    sys.path.insert(0, str(tmp_path))
    try:
        import fixmodels  # noqa: PLC0415 - written above

        torch.manual_seed(0)
        torch.save(fixmodels.Net().state_dict(), tmp_path / "state.pt")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("fixmodels", None)
    g = torch.Generator().manual_seed(1)
    image, meta = torch.randn(64, 5, generator=g), torch.randn(64, 3, generator=g)
    label = (meta[:, 0] > 0).long() + (meta[:, 1] > 0).long()
    torch.save({"image": image, "meta": meta, "label": label}, tmp_path / "train.pt")
    torch.save({"image": image[:32], "meta": meta[:32], "label": label[:32]}, tmp_path / "val.pt")
    args = ["fix", "state.pt", "--factory", "fixmodels.py:build", "--data", "train.pt", "--val", "val.pt",
            "-m", "image=input:image", "-m", "meta=input:meta", "--steps", "4", "--batch-size", "16",
            "--checkpoint-every", "2", "--audit-samples", "4", "--device", "cpu", "--quiet", "--force"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tmp_path)}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    two = subprocess.run([*torchrun, "-m", "biasscope", *args, "--out", "two"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "biasscope", *args, "--out", "one"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    logs = [json.loads((tmp_path / d / "training_log.json").read_text()) for d in ("one", "two")]
    assert [log["steps"] for log in logs] == [4, 4]
    assert logs[1]["lambda"] == pytest.approx(logs[0]["lambda"], rel=1e-6)
    out = tmp_path / "two"
    for name in ("model.pt", "before/audit.json", "after/audit.json", "compare.html"):
        assert (out / name).exists(), name
    assert CheckpointStore(out / "checkpoints").load()["trainer"]["step"] == 4
    assert not (out / "STATUS").exists()
    assert two.stdout.count("lambda =") == 1  # rank 0 alone prints the summary
