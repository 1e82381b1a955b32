"""The audit in one process against the same audit split over 2 processes (gloo, CPU), side by
side in one run: `bench_audit.py`'s network, 512 examples, K = 32, the entropy family only.

    python benchmarks/bench_audit_ranks.py

Each process gets one torch thread, so on a 2-core machine the two processes have a core each.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]

import torch  # noqa: E402

import biasscope as bs  # noqa: E402
from _ranks import run_ranks  # noqa: E402
from bench_audit import build  # noqa: E402


def work(rank: int) -> float:
    torch.set_num_threads(1)
    model, batches, mods = build("net", 512, 64)
    options = dict(samples=32, device="cpu", label_key=None, permutation_repeats=0, shapley=False)
    bs.audit(model, batches[:1], mods, **options)  # warm-up: lazy imports, first-call costs
    start = time.perf_counter()
    bs.audit(model, batches, mods, **options)
    return time.perf_counter() - start


if __name__ == "__main__":
    one = work(0)
    two = run_ranks(work, Path(tempfile.mkdtemp()))
    print(f"1 process: {one:.2f} s; 2 processes: {max(two):.2f} s (slowest rank); "
          f"speed-up {one / max(two):.2f}x")
