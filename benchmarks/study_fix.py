"""Which regularizer form fixes a shortcut model, alone and beside ModDrop? (issue 12)

Per seed: a biased baseline and an unbiased reference (TwoModalityNet), then `biasscope.fix`
(``--steps`` steps, batch 64, the other options at FixOptions' defaults) with each
row's overrides; prints per-seed lines and a mean ± std table of the decorrelated-test
accuracy with the share of the baseline-to-reference gap each row closes.

    OMP_NUM_THREADS=1 python benchmarks/study_fix.py --benchmark colored   # 5 seeds
    OMP_NUM_THREADS=1 python benchmarks/study_fix.py --benchmark both
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _fixstudy import run_seed, table  # noqa: E402

ALONE = dict(modality_dropout=0.0, lambda_="auto")  # the regularizer alone
ROWS: list[tuple[str, dict]] = [
    ("plain fine-tune (lambda 0, no ModDrop)", dict(lambda_=0.0, modality_dropout=0.0)),
    ("ModDrop only (lambda 0, p 0.5)", {}),
    ("regularizer only: inverse (paper)", dict(form="inverse", **ALONE)),
    ("regularizer only: log_share", dict(form="log_share", **ALONE)),
    ("regularizer only: min_log", dict(form="min_log", **ALONE)),
    ("regularizer only: min_share", dict(form="min_share", **ALONE)),
    ("regularizer only: log_share, r=10", dict(form="log_share", target_ratio=10.0, **ALONE)),
    ("ModDrop + log_share", dict(form="log_share", lambda_="auto")),
    ("ModDrop + log_share, detached p_clean", dict(form="log_share", lambda_="auto", detach_clean=True)),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--benchmark", choices=("colored", "both"), default="colored")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--steps", type=int, default=240, help="fine-tune steps (batch 64)")
    p.add_argument("--rows", default="", help="comma-separated row indices (default: all)")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = [ROWS[int(i)] for i in args.rows.split(",")] if args.rows else ROWS
    start = time.perf_counter()
    runs = [run_seed(args.benchmark, seed, rows, steps=args.steps) for seed in range(args.seeds)]
    print(table(args.benchmark, runs))
    print(f"{args.steps} steps per fix; {time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
