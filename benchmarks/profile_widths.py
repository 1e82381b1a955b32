"""What each audit profile (quick, standard, thorough) gives on the demo model: the 95%
interval widths of the share-carrying measures and the permutation score, the verdicts and
the time, side by side in one run.

The demo's biased baseline (``TwoModalityNet`` trained on colored digits, colour = label 99%
of the time; ``biasscope demo``'s first model) audited on its 1000 validation examples.

    OMP_NUM_THREADS=1 python benchmarks/profile_widths.py [--examples 1000] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import biasscope as bs  # noqa: E402
from biasscope.datasets import TwoModalityNet, benchmark_data, train_plain  # noqa: E402
from biasscope.demo import DEMO_MODALITIES, batches_of  # noqa: E402
from biasscope.runtime.options import AUDIT_PROFILES  # noqa: E402


def _relative(e) -> float:
    """The interval's width over its mean (nan for a zero mean)."""
    return (e.ci_high - e.ci_low) / abs(e.mean) if e.mean else float("nan")


def measure(examples: int) -> dict:
    model = train_plain(TwoModalityNet(seed=0), benchmark_data("colored", "train", n=3000, seed=0), epochs=15, seed=0)
    val = batches_of(benchmark_data("colored", "val", n=examples, seed=0))
    bs.audit(model, val[:1], DEMO_MODALITIES, profile="quick", device="cpu")  # warm-up: one-time imports
    out = {}
    for profile in AUDIT_PROFILES:
        start = time.perf_counter()
        result = bs.audit(model, val, DEMO_MODALITIES, profile=profile, device="cpu")
        seconds = time.perf_counter() - start
        out[profile] = {"seconds": seconds, "modalities": {
            m.name: {"verdict": m.verdict, "fe_mean": m.functional_entropy.mean,
                     "fe_width": _relative(m.functional_entropy), "fisher_width": _relative(m.fisher_bound),
                     "loss_increase": m.permutation.loss_increase.mean if m.permutation else None,
                     "loss_width": _relative(m.permutation.loss_increase) if m.permutation else None}
            for m in result.modalities}}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=1000)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    r = measure(args.examples)
    if args.json:
        print(json.dumps(r))
        return r
    print("| profile | options | seconds | modality | verdict | FE interval width / mean | "
          "Fisher bound width / mean | permutation loss increase (width / mean) |")
    print("|---|---|---|---|---|---|---|---|")
    for profile, row in r.items():
        options = ", ".join(f"{k}={v}" for k, v in AUDIT_PROFILES[profile].items()) or "the defaults"
        for i, (name, m) in enumerate(row["modalities"].items()):
            head = f"{profile} | {options} | {row['seconds']:.1f}" if i == 0 else " | | "
            loss = "-" if m["loss_increase"] is None else f"{m['loss_increase']:.3f} ({m['loss_width']:.2f})"
            print(f"| {head} | {name} | {m['verdict']} | {m['fe_width']:.2f} | {m['fisher_width']:.2f} | {loss} |")
    return r


if __name__ == "__main__":
    main()
