"""Near-ties in the ModDrop target: symmetric ModDrop or a refusal? (issue 22)

A planted two-path model (logits = a_s * s + a_x * x[:3]) relies about equally on a one-hot
`s` (the label 98% of the time in training) and a noisy `x` (the label plus unit Gaussian
noise). Which one is the shortcut cannot be told from in-distribution data, so both cases are
measured: shifted data with `s` random, and with `x` random. Rows: a refusal (the input model
unchanged: what fix does on a near-tie), symmetric ModDrop (`--augment all`), and each side of
the coin (ModDrop on `s`, on `x`). Seeds 0-4, 240 steps, batch 32; accuracy on each shifted set, mean ± std.

    OMP_NUM_THREADS=1 python benchmarks/near_tie.py
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from biasscope import Modality, fix  # noqa: E402
from biasscope.measuring.shift import shift_accuracy, shift_batches  # noqa: E402

MODS = [Modality("s", input="s"), Modality("x", input="x")]


class TwoPath(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.s_head, self.x_head = nn.Linear(3, 3), nn.Linear(4, 3)
        with torch.no_grad():
            for layer in (self.s_head, self.x_head):
                layer.weight.zero_()
                layer.bias.zero_()
            self.s_head.weight.copy_(2.6 * torch.eye(3))
            self.x_head.weight[:, :3].copy_(1.0 * torch.eye(3))

    def forward(self, s, x):
        return self.s_head(s) + self.x_head(x)


def data(n: int, seed: int, *, s_agrees: float, x_signal: float) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 3, (n,), generator=g)
    agree = torch.rand(n, generator=g) < s_agrees
    s = nn.functional.one_hot(torch.where(agree, label, torch.randint(0, 3, (n,), generator=g)), 3).float()
    x = torch.randn(n, 4, generator=g)
    signal = torch.where(torch.rand(n, generator=g) < x_signal, label, torch.randint(0, 3, (n,), generator=g))
    x[:, :3] += 2.5 * nn.functional.one_hot(signal, 3).float()
    return [{"s": s[i : i + 32], "x": x[i : i + 32], "label": label[i : i + 32]} for i in range(0, n, 32)]


ROWS = [("refusal (fix's near-tie rule: the input unchanged)", None), ("symmetric ModDrop (--augment all)", "all"),
        ("ModDrop on s (one side of the coin)", "s"), ("ModDrop on x (the other side)", "x")]


def main() -> None:
    torch.set_num_threads(1)
    results: dict[str, dict[str, list[float]]] = {name: {"s": [], "x": []} for name, _ in ROWS}
    for seed in range(5):
        train = data(1024, seed, s_agrees=0.98, x_signal=1.0)
        broken = {"s": shift_batches(data(512, 100 + seed, s_agrees=0.0, x_signal=1.0)),
                  "x": shift_batches(data(512, 200 + seed, s_agrees=0.98, x_signal=0.0))}
        for name, augment in ROWS:
            model = TwoPath()
            if augment is not None:
                result = fix(model, train, MODS, augment=augment, max_steps=240, epochs=1000, lr=0.01,
                             device="cpu", seed=seed)
                model = result.model
                if seed == 0 and augment == "all":
                    print("reliance of the input, nats:", {k: round(v, 3) for k, v in result.target["reliance"].items()})
            for which, batches in broken.items():
                results[name][which].append(shift_accuracy(model, batches))
    print("| row | accuracy, s broken (s was the shortcut) | accuracy, x broken (x was the shortcut) |")
    print("|---|---|---|")
    for name, by in results.items():
        cells = [f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}" for v in (by["s"], by["x"])]
        print(f"| {name} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
