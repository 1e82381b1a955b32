"""The audit over two processes (gloo, CPU, started as torchrun starts them) equals the
single-process audit to 1e-5: every measure, interval, permutation score, Shapley value and
verdict; an error on one process surfaces on both without a hang."""

from __future__ import annotations

import pytest
import torch

import biasscope as bs
from _audit_compare import differences
from _ranks import run_ranks
from planted import Branches
from test_audit_invariance import OPTIONS, _data

MODS = [bs.Modality("m0", input=0), bs.Modality("m1", layer="encoders.1"), bs.Modality("m2", input=2)]


def _audit(progress=None) -> dict:
    return bs.audit(Branches((5, 3, 2), ignore=(2,)), _data(16), MODS, progress=progress, **OPTIONS).to_dict()


class FailsOnRank1(Branches):
    def forward(self, *inputs):  # type: ignore[override]
        if torch.distributed.get_rank() == 1:
            raise RuntimeError("broken on rank 1")
        return super().forward(*inputs)


def _work(rank: int) -> dict:
    calls: list[str] = []
    result = _audit(progress=lambda stage, done, total, info: calls.append(stage))
    try:
        bs.audit(FailsOnRank1((5, 3, 2)), _data(16), MODS, **OPTIONS)
        error = None
    except Exception as exc:  # noqa: BLE001 - recorded for the test
        error = f"{type(exc).__name__}: {exc}"
    return {"result": result, "progress_calls": len(calls), "error": error}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    return run_ranks(_work, tmp_path_factory.mktemp("audit_ranks"))


def test_two_processes_give_the_single_process_result(ranks):
    single = _audit()
    for r in ranks:
        assert differences(single, r["result"]) == []
    assert ranks[0]["result"]["n_examples"] == 70


def test_only_rank_0_reports_progress(ranks):
    assert ranks[0]["progress_calls"] > 0 and ranks[1]["progress_calls"] == 0


def test_an_error_on_one_process_surfaces_on_both(ranks):
    assert ranks[1]["error"].startswith("ModelOutputError") and "broken on rank 1" in ranks[1]["error"]
    assert ranks[0]["error"].startswith("RemoteRankError") and "rank 1" in ranks[0]["error"]
