"""fix under ``torchrun``: DistributedDataParallel over the training objective.

The contract (tested in tests/test_fix_distributed.py):

- Data: every rank builds the same global batches (:class:`~biasscope.fixing._fixdata.TrainingData`'s
  seeded per-epoch order); at step s rank r trains on the contiguous shard
  ``shard_bounds(n_s, r, W)`` of global batch s. The union over the ranks is, at every step
  and any world size W, the batch one process would train on; the training position
  (epoch, batch index) counts global batches, so a checkpoint resumes at any world size.
- Objective: rank r's loss is ``W * (n_r / n) * (CE(shard_r) + lambda * term(shard_r))`` and
  DDP averages the gradients, so one backward gives the gradient of
  ``CE(global batch) + lambda * sum_r (n_r / n) * term(shard_r)``. The cross-entropy part is
  the single process's exactly; the regularizer's term (a function of batch-mean scores) is
  each rank's on its shard, as the regularizer computes it on any batch. The regularizer's
  extra forwards and its inner ``autograd.grad`` w.r.t. the noise run inside the DDP
  forward, so DDP sees one forward and one backward per step.
- Randomness: at W > 1 the regularizer's noise, ModDrop and the model's own draws (dropout)
  are reseeded each step from (seed, rank, step), so ranks differ and a resumed run redraws
  the same.
- Agreement: calibration runs on every rank over the whole calibration batches
  (replicated). The reliance behind the ModDrop target and validation use
  :class:`~biasscope.measuring.perception.AuditSet`: every rank makes the clean pass over the whole
  held set, the permuted passes are sharded by batch across the ranks and their
  per-example scores gathered in global order, so the numbers equal one process's. Rank 0's
  numbers are then broadcast so that the target, early stopping and the guard decide the
  same everywhere.

World size 1 never comes here: :class:`~biasscope.fixing._trainer.Trainer` runs as in one process.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..runtime._batch import Batch
from ..runtime._distributed import all_reduce_sum, shard_bounds, world_size
from ..runtime._distributed import rank as current_rank

__all__ = ["DistributedUpdate", "rank_seed", "rank_shard"]


def rank_seed(seed: int, rank: int, step: int) -> int:
    """A seed (< 2**63) for ``rank``'s draws at ``step``: a hash of the three numbers."""
    digest = hashlib.blake2b(f"{seed}:{rank}:{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def rank_shard(batch: Batch, rank: int, world: int) -> tuple[Batch, float]:
    """(this rank's rows of the global ``batch``, their share n_r / n). A rank left without
    rows (a global batch smaller than the world) gets the whole batch with share 0: it
    still runs the forward and backward every rank must run, and adds nothing."""
    start, stop = shard_bounds(batch.size, rank, world)
    if stop == start:
        return batch, 0.0
    return batch.select(torch.arange(start, stop)), (stop - start) / batch.size


class _Objective(nn.Module):
    """The step's loss as a module, so DDP wraps the whole objective: the trainer's forward
    (CE on the ModDrop-augmented batch + lambda * the regularizer's term) times ``scale``."""

    def __init__(self, trainer: Any) -> None:
        super().__init__()
        self.model = trainer.model  # a child: DDP syncs its parameters
        self._trainer = [trainer]  # a list keeps it out of the module tree
        self.last: tuple[Any, ...] = ()

    def forward(self, batch: Batch, scale: float) -> Tensor:
        ce, term, scores, target, lam_now = self._trainer[0]._forward(batch)
        self.last = (ce.detach(), term.detach(), scores, target, lam_now)
        return scale * (ce + lam_now * term.float())


def _broadcast_values(values: dict[str, float]) -> dict[str, float]:
    """Rank 0's numbers on every rank (a masked all-reduce: one collective, any backend)."""
    keys = sorted(values)
    mine = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    total = all_reduce_sum(mine if current_rank() == 0 else torch.zeros_like(mine))
    return {k: float(v) for k, v in zip(keys, total.tolist())}


class DistributedUpdate:
    """The update of one step at world size > 1, for a :class:`Trainer` (see the module
    docstring); installs the trainer's agreement hooks."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        trainer.distributed = self
        trainer.agree = _broadcast_values
        trainer.agree_scores = self._mean_scores
        self.objective: _Objective | None = None
        self.ddp: DistributedDataParallel | None = None

    def _wrap(self) -> DistributedDataParallel:
        """DDP over the objective (built at the first step: after resume and calibration;
        its construction broadcasts rank 0's parameters and buffers)."""
        if self.ddp is None:
            dev = self.trainer.device
            self.objective = _Objective(self.trainer)
            self.ddp = DistributedDataParallel(
                self.objective,
                device_ids=[dev.index] if dev.type == "cuda" else None,
                find_unused_parameters=True,  # a model part the batch does not reach is fine
            )
        return self.ddp

    def _mean_scores(self, scores: dict[str, Tensor]) -> dict[str, Tensor]:
        """The ranks' mean scores (the per-step ModDrop target must be the same everywhere)."""
        names = sorted(scores)
        local = torch.stack([scores[k].detach().double().cpu() for k in names])
        total = all_reduce_sum(local) / world_size()
        return {k: total[i] for i, k in enumerate(names)}

    def _reseed(self) -> None:
        t, rank = self.trainer, current_rank()
        seed, step = t.options.seed, t.step_count
        t.reg.generator(t.device).manual_seed(rank_seed(seed, rank, step))
        t.aug_generator.manual_seed(rank_seed(seed + 1, rank, step))
        torch.default_generator.manual_seed(rank_seed(seed + 2, rank, step))
        if t.device.type == "cuda":
            torch.cuda.manual_seed(rank_seed(seed + 2, rank, step))

    def update(self, batch: Batch) -> dict[str, Any]:
        """Forward, all-reduced backward and optimizer step on this rank's shard of the
        global ``batch``; returns the step's record with the global batch's numbers."""
        t, world = self.trainer, world_size()
        local, share = rank_shard(batch, current_rank(), world)
        b = local.to(t.device)  # labelled: Trainer.step checks the global batch
        ddp = self._wrap()
        self._reseed()
        with t.autocast():
            loss = ddp(b, world * share)
        ce, term, scores, target, lam_now = self.objective.last
        names = [m.name for m in t.modalities]
        local_numbers = [share * float(ce), share * float(term),
                         *(share * float(scores[k].detach()) if k in scores else 0.0 for k in names),
                         0.0 if torch.isfinite(loss) else 1.0, 1.0 if scores else 0.0]
        total = all_reduce_sum(torch.tensor(local_numbers, dtype=torch.float64)).tolist()
        ce_all, term_all, nonfinite, scored = total[0], total[1], total[-2], total[-1]
        t.optimizer.zero_grad(set_to_none=True)
        record: dict[str, Any] = {
            "step": t.step_count + 1, "loss": ce_all + lam_now * term_all, "ce": ce_all,
            "reg": term_all, "lambda": lam_now,
            "scores": dict(zip(names, total[2:-2])) if scored else {},
        }
        if target is not None:
            record["augmented"] = target
        if nonfinite == 0:
            t.apply_gradients(loss)  # DDP all-reduces the gradients in its backward
        else:
            record["skipped"] = True  # a non-finite loss on some rank: no update anywhere
        return record
