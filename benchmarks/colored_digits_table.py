"""The README's results tables: 5 seeds, mean ± std of the decorrelated-test accuracy of the
biased baseline, `fix` with ModDrop only (fix's defaults), the regularizer only, both, and an
unbiased reference, with the share of the baseline-to-reference gap each closes.

    OMP_NUM_THREADS=1 python benchmarks/colored_digits_table.py --benchmark colored
    OMP_NUM_THREADS=1 python benchmarks/colored_digits_table.py --benchmark both
    OMP_NUM_THREADS=1 python benchmarks/colored_digits_table.py --benchmark all   # both tables

(benchmarks/study_fix.py runs the same engine over every regularizer form.)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _fixstudy import run_seed, table  # noqa: E402

ROWS: list[tuple[str, dict]] = [
    ("plain fine-tune (lambda 0, no ModDrop)", dict(lambda_=0.0, modality_dropout=0.0)),
    ("ModDrop only (lambda 0, p 0.5)", {}),
    ("regularizer only (lambda auto, no ModDrop)", dict(lambda_="auto", modality_dropout=0.0)),
    ("both (lambda auto + ModDrop)", dict(lambda_="auto")),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--benchmark", choices=("colored", "both", "all"), default="all")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--steps", type=int, default=240, help="fine-tune steps (batch 64)")
    args = p.parse_args()
    torch.set_num_threads(1)
    names = ("colored", "both") if args.benchmark == "all" else (args.benchmark,)
    for name in names:
        start = time.perf_counter()
        runs = [run_seed(name, seed, ROWS, steps=args.steps) for seed in range(args.seeds)]
        print(table(name, runs))
        print(f"{args.steps} steps per fix; {time.perf_counter() - start:.0f} s\n", flush=True)


if __name__ == "__main__":
    main()
