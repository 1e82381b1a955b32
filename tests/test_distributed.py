"""torchrun plumbing: two CPU processes over gloo, started the way torchrun starts them
(RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT in the environment)."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
from _ranks import free_port, spawn
import torch

from biasscope.runtime import _distributed as bd

WORLD = 2
DEADLINE_S = 90  # the whole 2-process run; a hang fails the test instead of CI


def _values(index: torch.Tensor) -> torch.Tensor:
    """A per-example tensor whose rows say which example they belong to."""
    return torch.stack([index.double(), index.double() ** 2, -index.double()], dim=1)


def _checks(rank: int) -> dict:
    out: dict = {"writer": bd.is_writer(), "distributed": bd.is_distributed()}
    out["shards"] = {n: bd.gather_rows(torch.tensor(list(bd.shard(n)), dtype=torch.int64)).tolist()
                     for n in (0, 1, 5, 8)}
    mine = torch.tensor(list(bd.shard(7)), dtype=torch.int64)
    out["gathered"] = bd.gather_rows(_values(mine)).tolist()
    out["gathered_bool"] = bd.gather_rows(mine % 2 == 0).tolist()
    out["sum"] = bd.all_reduce_sum(torch.tensor([rank + 1.0, 10.0 * rank], dtype=torch.float64)).tolist()
    try:
        with bd.sync_point("entropy"):
            if rank == 1:
                raise ValueError("boom on rank 1")
        out["error"] = None
    except Exception as exc:  # noqa: BLE001 - recorded for the test to check
        out["error"] = f"{type(exc).__name__}: {exc}"
    # the group still works after a reported failure
    out["after"] = bd.all_reduce_sum(torch.ones(1)).tolist()
    with bd.sync_point("quiet"):
        pass
    return out


def _worker(rank: int, port: int, folder: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    with bd.process_group(device="cpu", timeout=timedelta(seconds=30)) as env:
        result = _checks(env.rank)
        result["env"] = [env.rank, env.world_size, env.local_rank]
        result["device"] = str(bd.rank_device("cpu"))
    result["left_group"] = not torch.distributed.is_initialized()
    Path(folder, f"rank{rank}.json").write_text(json.dumps(result))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("ranks")
    spawn(_worker, (free_port(), str(folder)), world=WORLD, deadline_s=DEADLINE_S)
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(WORLD)]


def test_each_rank_reads_its_place_from_the_torchrun_environment(ranks):
    assert [r["env"] for r in ranks] == [[0, 2, 0], [1, 2, 1]]
    assert [r["writer"] for r in ranks] == [True, False]
    assert all(r["distributed"] and r["left_group"] and r["device"] == "cpu" for r in ranks)


def test_shards_cover_every_example_once_in_order(ranks):
    for r in ranks:
        assert r["shards"] == {str(n): list(range(n)) for n in (0, 1, 5, 8)}


def test_gather_rows_concatenates_unequal_shards_in_global_order(ranks):
    expected = _values(torch.arange(7)).tolist()  # shards of 4 and 3 rows
    for r in ranks:
        assert r["gathered"] == expected
        assert r["gathered_bool"] == [i % 2 == 0 for i in range(7)]


def test_all_reduce_sum_adds_every_ranks_tensor(ranks):
    assert [r["sum"] for r in ranks] == [[3.0, 10.0], [3.0, 10.0]]


def test_an_error_on_one_rank_surfaces_on_the_other_without_a_hang(ranks):
    assert ranks[1]["error"] == "ValueError: boom on rank 1"
    assert ranks[0]["error"].startswith("RemoteRankError: Another process failed during entropy")
    assert "rank 1: ValueError: boom on rank 1" in ranks[0]["error"]
    assert [r["after"] for r in ranks] == [[2.0], [2.0]]


@pytest.mark.parametrize("n", [0, 1, 2, 7, 64, 101])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shard_bounds_are_contiguous_balanced_and_complete(n, world):
    bounds = [bd.shard_bounds(n, r, world) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_a_single_process_is_the_whole_group(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert bd.torchrun_env() is None
    with bd.process_group() as env:
        assert env == bd.RankEnv(0, 1, 0)
        assert bd.shard(5) == range(5) and bd.is_writer() and not bd.is_distributed()
        x = torch.arange(4.0)
        assert bd.gather_rows(x) is x
        total = bd.all_reduce_sum(x)
        assert torch.equal(total, x) and total is not x
        with pytest.raises(KeyError, match="local"):
            with bd.sync_point("entropy"):
                raise KeyError("local")
    assert bd.rank_device("cpu") == torch.device("cpu")
