"""The verdict zoo: per planted model, the expected and the given verdict and diagnostics.

    python benchmarks/verdict_zoo.py [--case NAME]

Prints one block per case and the agreement rate (exit 1 below 100%). The cases live in
``tests/zoo.py`` (the same ones ``tests/test_zoo.py`` asserts).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main(argv: list[str] | None = None) -> int:
    import torch

    from zoo import cases, run_case

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", help="run only these cases")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    chosen = [c for c in cases() if not args.case or c.name in args.case]
    agree = 0
    for case in chosen:
        start = time.perf_counter()
        outcome = run_case(case)
        problems = outcome.problems(case)
        agree += not problems
        expected = f"error {case.error.__name__}" if case.error else f"{case.verdicts or '(any verdict)'}"
        given = outcome.error.split(":")[0] if outcome.error else f"{outcome.verdicts}"
        print(f"{'OK  ' if not problems else 'FAIL'} {case.name} ({time.perf_counter() - start:.1f} s): {case.about}")
        print(f"     expected: {expected}; diagnostics {sorted(case.diagnostics)}")
        print(f"     given:    {given}; diagnostics {sorted(set(outcome.diagnostics))}")
        if outcome.sentence:
            print(f"     sentence: {outcome.sentence}")
        for p in problems:
            print(f"     ! {p}")
    print(f"\n{agree}/{len(chosen)} cases agree ({100 * agree / max(len(chosen), 1):.0f}%)")
    return 0 if agree == len(chosen) else 1


if __name__ == "__main__":
    raise SystemExit(main())
