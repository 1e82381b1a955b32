"""What the launcher (biasscope.cli.launcher) adds to a command's start-up: `biasscope
--version` through the launcher (two Python processes) against the same command run in
process (BIASSCOPE_IN_PROCESS=1), interleaved, median of N runs each, and a bare
`python -c pass` for scale.

    python benchmarks/launcher_overhead.py [N]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time


def _ms(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, capture_output=True, check=True)
    return (time.perf_counter() - start) * 1000


def main(n: int = 15) -> None:
    base = {**os.environ}
    base.pop("BIASSCOPE_IN_PROCESS", None)
    command = [sys.executable, "-m", "biasscope", "--version"]
    runs: dict[str, list[float]] = {"launcher": [], "in process": [], "python -c pass": []}
    for _ in range(n):  # interleaved: a busy machine slows all three alike
        runs["launcher"].append(_ms(command, base))
        runs["in process"].append(_ms(command, {**base, "BIASSCOPE_IN_PROCESS": "1"}))
        runs["python -c pass"].append(_ms([sys.executable, "-c", "pass"], base))
    med = {k: statistics.median(v) for k, v in runs.items()}
    for name, value in med.items():
        print(f"{name:>15}: {value:7.1f} ms (median of {n})")
    print(f"launcher overhead: {med['launcher'] - med['in process']:.1f} ms "
          f"(one more interpreter start: {med['python -c pass']:.1f} ms)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
