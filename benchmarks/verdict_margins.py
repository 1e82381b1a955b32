"""The effect sizes behind the verdict's margins, on planted models whose answer is known.

    OMP_NUM_THREADS=1 python benchmarks/verdict_margins.py [--repeats 10]

For every planted model of ``benchmarks/permutation_repeats.py`` (zoo cases, ``drop25``,
``faint``, ``gate``; no colored digits), one audit at R shuffles: per modality its known
answer, the accuracy drop with its interval, the margin (docs/method.md), the flip rate, the
mean change of the top-class probability and the verdict. Then, per kind of answer, the
largest and smallest effects: the margins must sit between what a modality the model does not
use costs and what the weakest used one costs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    import torch

    import biasscope as bs
    from biasscope.auditing.verdict import accuracy_margin
    from permutation_repeats import AUDIT, USED, _builders

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for name, (build, answer) in _builders(0, 0, False).items():
        model, data, mods, extra = build()
        r = bs.audit(model, data, mods, permutation_repeats=args.repeats, seed=0, **AUDIT, **extra)
        for m in r.modalities:
            q = m.permutation
            rows.append((name, m.name, answer[m.name], m.verdict, q.accuracy_drop,
                         accuracy_margin(q, bs.Thresholds(), r.n_examples),
                         q.flip_rate.mean, q.confidence_change.mean))
    print(f"{'model':<26}{'mod.':<9}{'answer':<9}{'verdict':<9}{'acc. drop [95% CI]':>26}{'margin':>8}"
          f"{'flips':>8}{'conf.':>8}")
    for name, mod, answer, verdict, drop, margin, flips, conf in rows:
        ci = f"{100 * drop.mean:6.2f} [{100 * drop.ci_low:6.2f}, {100 * drop.ci_high:6.2f}]"
        print(f"{name:<26}{mod:<9}{answer:<9}{verdict:<9}{ci:>26}{100 * margin:7.1f}%"
              f"{100 * flips:7.1f}%{conf:8.3f}")
    used = [r for r in rows if r[2] in USED]
    ignored = [r for r in rows if r[2] == "ignored"]
    unused = [r for r in rows if r[2] == "unused"]
    print(f"used ({len(used)}): smallest accuracy drop {100 * min(r[4].mean for r in used):.1f} points, "
          f"smallest lower end {100 * min(r[4].ci_low for r in used):.1f}")
    print(f"ignored ({len(ignored)}): largest flip rate {100 * max(r[6] for r in ignored):.2f}%, "
          f"largest confidence change {max(r[7] for r in ignored):.2g}")
    print(f"unused ({len(unused)}): largest upper end of the accuracy drop {100 * max(r[4].ci_high for r in unused):.1f} "
          f"points, largest margin {100 * max(r[5] for r in unused):.1f}")
    right = sum(r[2] == r[3] for r in rows)
    print(f"verdicts as known: {right}/{len(rows)}")
    return 0 if right == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
