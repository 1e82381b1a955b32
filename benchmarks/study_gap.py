"""Which fine-tune closes the colored-digits gap, and which regularizer form works? (issue 22)

Per seed: a biased baseline and an unbiased reference (TwoModalityNet), then `biasscope.fix`
with each row's options (batch 64); prints per-seed lines and mean ± std tables of the
decorrelated-test accuracy with the share of the baseline-to-reference gap each row closes.
Every table has the plain fine-tune control (lambda 0, no ModDrop, the same steps).

    OMP_NUM_THREADS=1 python benchmarks/study_gap.py --table candidates   # fine-tune candidates
    OMP_NUM_THREADS=1 python benchmarks/study_gap.py --table forms        # forms: fine-tune, from scratch
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _fixstudy import run_seed, table  # noqa: E402

PLAIN = dict(lambda_=0.0, modality_dropout=0.0)  # the control: a plain fine-tune
SCRATCH_STEPS = 470  # the baseline's and reference's own schedule: 10 epochs of 3000 at batch 64
CANDIDATES: list[tuple[str, dict]] = [
    ("plain fine-tune (lambda 0, no ModDrop)", PLAIN),
    ("ModDrop p 0.5 (the old default)", dict(modality_dropout=0.5)),
    ("ModDrop p 0.5, 960 steps", dict(modality_dropout=0.5, steps=960)),
    ("ModDrop p 0.8", dict(modality_dropout=0.8)),
    ("ModDrop p 1 (decorrelated batches)", dict(modality_dropout=1.0)),
    ("head re-initialised + ModDrop p 1 on color", dict(modality_dropout=1.0, augment="color", start="reset_head")),
    ("symmetric ModDrop p 0.5", dict(modality_dropout=0.5, augment="all")),
    ("min_dominant (lambda auto) + ModDrop p 0.5", dict(form="min_dominant", lambda_="auto", modality_dropout=0.5)),
    ("min_dominant (lambda auto) + ModDrop p 1", dict(form="min_dominant", lambda_="auto", modality_dropout=1.0)),
    ("plain fine-tune, 960 steps", dict(PLAIN, steps=960)),
    ("ModDrop p 0.5, 10 epochs (470 steps)", dict(modality_dropout=0.5, epochs=10, epochs_default=True)),
    ("ModDrop p 0.5, 20 epochs (940 steps)", dict(modality_dropout=0.5, epochs=20, epochs_default=True)),
    ("ModDrop p 0.5, 960 steps, shifted data", dict(modality_dropout=0.5, steps=960, shift=True)),
    ("from scratch: fix --from-scratch (ModDrop p 0.5), 470 steps", dict(from_scratch=True, steps=SCRATCH_STEPS)),
]
FORMS = ("inverse", "log_share", "min_log", "min_dominant")


def form_rows() -> list[tuple[str, dict]]:
    """Each form alone (lambda auto, no ModDrop), as a fine-tune and from scratch, with the
    plain rows (lambda 0) of both as controls."""
    rows = [("fine-tune: plain (lambda 0, no ModDrop)", PLAIN)]
    rows += [(f"fine-tune: {f}", dict(form=f, lambda_="auto", modality_dropout=0.0)) for f in FORMS]
    scratch = dict(start="scratch", steps=SCRATCH_STEPS)
    rows += [("from scratch: plain (lambda 0, no ModDrop)", {**PLAIN, **scratch})]
    rows += [(f"from scratch: {f}", dict(form=f, lambda_="auto", modality_dropout=0.0, **scratch)) for f in FORMS]
    rows += [("from scratch: min_dominant, target ratio 10", dict(form="min_dominant", lambda_="auto", target_ratio=10.0, modality_dropout=0.0, **scratch))]
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", choices=("candidates", "forms"), default="candidates")
    p.add_argument("--benchmark", choices=("colored", "both"), default="colored")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--steps", type=int, default=240, help="fine-tune steps (batch 64)")
    p.add_argument("--rows", default="", help="comma-separated row indices (default: all)")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = CANDIDATES if args.table == "candidates" else form_rows()
    rows = [rows[int(i)] for i in args.rows.split(",")] if args.rows else rows
    start = time.perf_counter()
    runs = [run_seed(args.benchmark, seed, rows, steps=args.steps) for seed in range(args.seeds)]
    print(table(args.benchmark, runs))
    print(f"{args.steps} fine-tune steps unless the row says; {time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
