"""Running under ``torchrun``: PyTorch's own distributed runtime (torch.distributed; gloo on
CPU, NCCL on CUDA), with the few collectives the audit and fix need.

Every function also works in a single process (no ``torchrun``, or world size 1): the
shard is everything, gathers and sums return their input, and this process writes.

Errors: a rank that fails between two sync points must not leave the others waiting in a
collective. Local work runs inside :func:`sync_point`, which all-reduces an error flag on
the way out (normal or not), so every rank learns of a failure on any rank at the same
point and raises; torchrun's agent stops the group when a rank exits with an error.
"""

from __future__ import annotations

import atexit
import os
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import BiasscopeError

__all__ = [
    "RankEnv",
    "RemoteRankError",
    "all_reduce_sum",
    "gather_rows",
    "is_distributed",
    "is_writer",
    "local_only",
    "join_group",
    "process_group",
    "rank",
    "rank_device",
    "shard",
    "shard_bounds",
    "sync_point",
    "torchrun_env",
    "world_size",
]

#: how long a collective waits for the other ranks before failing (a rank stuck in a model
#: pass longer than this is taken as lost)
DEFAULT_TIMEOUT = timedelta(minutes=30)


class RemoteRankError(BiasscopeError):
    """Another process of the ``torchrun`` group failed; its message is quoted."""


@dataclass(frozen=True)
class RankEnv:
    """This process's place in the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def torchrun_env() -> RankEnv | None:
    """The (RANK, WORLD_SIZE, LOCAL_RANK) torchrun sets, or None outside torchrun."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    if not all(n in os.environ for n in names):
        return None
    rank, world, local = (int(os.environ[n]) for n in names)
    return RankEnv(rank=rank, world_size=world, local_rank=local)


_LOCAL_ONLY = [0]  # > 0 inside local_only(): this process works as if alone


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process (and not inside
    :func:`local_only`)."""
    return not _LOCAL_ONLY[0] and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextmanager
def local_only() -> Iterator[None]:
    """Within the block this process works as if alone (no sharding, no collectives): for
    work that one rank does while the others wait (e.g. rank 0 auditing a model alone)."""
    _LOCAL_ONLY[0] += 1
    try:
        yield
    finally:
        _LOCAL_ONLY[0] -= 1


def rank() -> int:
    """This process's rank in the group (0 in a single process)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes in the group (1 in a single process)."""
    return dist.get_world_size() if is_distributed() else 1


def is_writer() -> bool:
    """Whether this process writes outputs: rank 0, or the only process."""
    return rank() == 0


def rank_device(device: str | torch.device = "auto") -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` under torchrun when CUDA is asked for
    (``"auto"`` with CUDA present, or ``"cuda"``), else the device as given (CPU for auto)."""
    env = torchrun_env()
    wants_cuda = str(device) == "cuda" or (str(device) == "auto" and torch.cuda.is_available())
    if wants_cuda and env is not None:
        return torch.device("cuda", env.local_rank)
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _place() -> RankEnv:
    env = torchrun_env()
    return RankEnv(rank(), world_size(), env.local_rank if env else 0)


def _init_group(device: str | torch.device, timeout: timedelta) -> RankEnv | None:
    """Initialise the torchrun group (NCCL when this rank's device is CUDA, else gloo); None
    outside torchrun, at world size 1, or when a group exists already (nothing done)."""
    env = torchrun_env()
    if env is None or env.world_size == 1 or (dist.is_available() and dist.is_initialized()):
        return None
    dev = rank_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size, timeout=timeout)
    return env


@contextmanager
def process_group(
    *, device: str | torch.device = "auto", timeout: timedelta = DEFAULT_TIMEOUT
) -> Iterator[RankEnv]:
    """Join the torchrun group for the duration of the block (NCCL when this rank's device
    is CUDA, else gloo) and leave it after; outside torchrun, or when a group already
    exists (the caller owns it), yield this process's place and do nothing."""
    env = _init_group(device, timeout)
    if env is None:
        yield _place()
        return
    try:
        yield env
    finally:
        dist.destroy_process_group()


def join_group(*, device: str | torch.device = "auto", timeout: timedelta = DEFAULT_TIMEOUT) -> RankEnv:
    """Join the torchrun group (NCCL on CUDA, gloo on CPU) for the rest of the process, as
    the library's entry points (fix, fix_and_audit) do: a no-op outside torchrun, at world
    size 1, or when a group exists already. The group is left at exit. Unlike leaving and
    re-joining per call (:func:`process_group`), repeated calls never re-run the rendezvous,
    which races with the previous group's store when one script calls fix twice."""
    env = _init_group(device, timeout)
    if env is None:
        return _place()
    atexit.register(_leave_group)
    return env


def _leave_group() -> None:
    """At exit: wait for the other processes (a bounded wait), then leave together: a gloo
    peer torn down while another still talks to it can abort the process."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=timedelta(seconds=120))
        else:
            dist.barrier()
    except Exception:  # noqa: BLE001 - a peer that failed already said why; leave anyway
        pass
    dist.destroy_process_group()


def shard_bounds(n_examples: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of ``rank``'s contiguous share of n examples; the first n % world
    ranks hold one more, so shares differ by at most one and follow the global order."""
    base, extra = divmod(n_examples, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def shard(n_examples: int) -> range:
    """The global indices of this process's examples (all of them in a single process)."""
    return range(*shard_bounds(n_examples, rank(), world_size()))


def _collective_device(tensor: Tensor) -> torch.device:
    """NCCL moves CUDA tensors only; gloo moves CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_rows(tensor: Tensor) -> Tensor:
    """Concatenate every rank's (n_r, *rest) tensor along dim 0 in rank order, on every rank
    (rows of unequal shards padded for the transfer). With :func:`shard` this is the global
    example order. Returns a tensor on ``tensor``'s device."""
    if not is_distributed():
        return tensor
    home, dev = tensor.device, _collective_device(tensor)
    is_bool = tensor.dtype == torch.bool
    local = (tensor.to(torch.uint8) if is_bool else tensor).to(dev).contiguous()
    sizes = [torch.zeros(1, dtype=torch.int64, device=dev) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([local.shape[0]], dtype=torch.int64, device=dev))
    counts = [int(s) for s in sizes]
    longest = max(counts)
    padded = local.new_zeros((longest, *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    out = torch.cat([p[:c] for p, c in zip(parts, counts)])
    return (out.bool() if is_bool else out).to(home)


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The element-wise sum of ``tensor`` over all ranks (a new tensor, on its device)."""
    if not is_distributed():
        return tensor.clone()
    total = tensor.to(_collective_device(tensor)).clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.to(tensor.device)




def _error_summary(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" ({last[0].filename}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"


@contextmanager
def sync_point(stage: str) -> Iterator[None]:
    """Run local work (no collectives inside); on the way out all ranks agree on whether
    any of them failed. The failing rank re-raises its own error; the others raise
    :class:`RemoteRankError` quoting it, instead of waiting in the next collective."""
    if not is_distributed():
        yield
        return
    failure: BaseException | None = None
    try:
        yield
    except BaseException as exc:  # noqa: BLE001 - re-raised below after telling the others
        failure = exc
    dev = _collective_device(torch.empty(0))
    flag = torch.tensor([0 if failure is None else 1], dtype=torch.int64, device=dev)
    dist.all_reduce(flag, op=dist.ReduceOp.SUM)
    if int(flag) == 0:
        return
    messages: list[str | None] = [None] * world_size()
    dist.all_gather_object(messages, None if failure is None else _error_summary(failure))
    if failure is not None:
        raise failure
    quoted = "; ".join(f"rank {r}: {m}" for r, m in enumerate(messages) if m is not None)
    raise RemoteRankError(f"Another process failed during {stage} ({quoted}); see its log above.")
