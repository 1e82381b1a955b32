"""Cost of the training-time monitor at its defaults: the colour-shortcut digits model
(biasscope.datasets.TwoModalityNet, a small CNN + MLP) trained with Adam on batches of 64,
with a :class:`biasscope.Monitor` auditing a fixed held-out batch of 64 examples (one training batch) every
``DEFAULT_EVERY`` steps (``MONITOR_OPTIONS``: K = 8 samples, 4 shuffles, no Shapley, probe
or attributions). Prints the monitor's seconds over the training's seconds, both measured in
the same run (the monitor times each audit; the rest of the loop is training), and the
smallest ``every`` that keeps the cost under 5%.

    python benchmarks/bench_monitor.py                # 3000 steps, CPU, one thread
    python benchmarks/bench_monitor.py --steps 300    # quicker
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from biasscope import Modality, Monitor  # noqa: E402
from biasscope.datasets import TwoModalityNet, colored_digits  # noqa: E402
from biasscope.monitoring.monitor import DEFAULT_EVERY, MONITOR_OPTIONS  # noqa: E402

MODALITIES = [Modality("image", input="image"), Modality("color", input="color")]


def run(steps: int, every: int, held_out: int, batch: int, device: str) -> tuple[float, Monitor]:
    """Train for ``steps`` steps with the monitor; the loop's wall-clock seconds and the monitor."""
    train = {k: v.to(device) for k, v in colored_digits("train").items()}
    val = {k: v[:held_out].to(device) for k, v in colored_digits("val").items()}
    model = TwoModalityNet(seed=0).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    monitor = Monitor(model, val, MODALITIES, every=every)
    g = torch.Generator().manual_seed(0)
    n = len(train["label"])
    start = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, n, (batch,), generator=g).to(device)
        loss = F.cross_entropy(model(train["image"][idx], train["color"][idx]), train["label"][idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        monitor.step(step + 1)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, monitor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--every", type=int, default=DEFAULT_EVERY)
    parser.add_argument("--held-out", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    run(20, args.every, args.held_out, args.batch, args.device)  # warm-up
    total, monitor = run(args.steps, args.every, args.held_out, args.batch, args.device)
    training = total - monitor.seconds
    audits = len(monitor.history)
    per_audit, per_step = monitor.seconds / audits, training / args.steps
    print(f"monitor options: {MONITOR_OPTIONS}; held-out batch {args.held_out}; training batch {args.batch}")
    print(f"{args.steps} steps, every={args.every}: {audits} audits, {per_audit * 1000:.0f} ms each; "
          f"training {per_step * 1000:.1f} ms/step")
    print(f"monitor / training time: {monitor.seconds / training:.3f}")
    print(f"smallest every under 5%: {math.ceil(per_audit / (0.05 * per_step))}")
    print(f"last record: {monitor.history[-1].shares} {monitor.history[-1].verdicts}")


if __name__ == "__main__":
    main()
