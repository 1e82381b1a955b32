"""Starting N CPU processes the way torchrun does (RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT in the environment), each running ``work(rank)`` inside the
process group and leaving its JSON-able result in a file."""

from __future__ import annotations

import json
import os
import socket
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, folder: str, work: Callable[[int], Any]) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from biasscope.runtime._distributed import process_group

    with process_group(device="cpu", timeout=timedelta(seconds=60)):
        result = work(rank)
    Path(folder, f"rank{rank}.json").write_text(json.dumps(result))


def spawn(fn: Callable[..., None], args: tuple, *, world: int = 2, deadline_s: float = 120) -> None:
    """``fn(rank, *args)`` in ``world`` processes (fork where safe: torch already imported;
    spawn where CUDA is initialised); a hang past ``deadline_s`` fails the test."""
    method = "fork" if "fork" in mp.get_all_start_methods() and not torch.cuda.is_initialized() else "spawn"
    ctx = mp.start_processes(fn, args=args, nprocs=world, join=False, start_method=method)
    deadline = time.monotonic() + deadline_s
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the {world}-process run did not finish in {deadline_s} s (a hang)")


def run_ranks(work: Callable[[int], Any], folder: Path, *, world: int = 2, deadline_s: float = 120) -> list[Any]:
    """``work(rank)`` in ``world`` processes inside the process group; their results."""
    spawn(_worker, (world, free_port(), str(folder), work), world=world, deadline_s=deadline_s)
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(world)]
