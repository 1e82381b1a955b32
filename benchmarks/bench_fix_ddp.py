"""Wall time of a short ``fix`` in one process and under torchrun (the README's figures).

    python benchmarks/bench_fix_ddp.py                                       # one process
    torchrun --standalone --nproc-per-node 2 benchmarks/bench_fix_ddp.py     # two (gloo on CPU)

Prints one JSON line from rank 0: world size, device, steps, seconds of ``fix`` (the
process group's start-up excluded: it is opened before the clock starts).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from biasscope import Modality
from biasscope.runtime._distributed import is_writer, process_group, world_size
from biasscope.fixing.fix import fix


class Net(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.enc_a = nn.Sequential(nn.Linear(64, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU())
        self.enc_b = nn.Sequential(nn.Linear(16, hidden), nn.GELU())
        self.head = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.GELU(), nn.Linear(hidden, 10))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.enc_a(a), self.enc_b(b)], dim=1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(args.examples, 64, generator=g), torch.randn(args.examples, 16, generator=g)
    label = (a[:, :10] + b[:, :10]).argmax(dim=1)
    data = [{"a": a[i : i + args.batch_size], "b": b[i : i + args.batch_size], "label": label[i : i + args.batch_size]}
            for i in range(0, args.examples, args.batch_size)]
    mods = [Modality("a", input="a"), Modality("b", input="b")]
    with process_group(device=args.device):
        start = time.perf_counter()
        result = fix(Net(args.hidden), data, mods, max_steps=args.steps, lambda_=0.5, samples=4,
                     device=args.device, seed=0)
        seconds = time.perf_counter() - start
        if is_writer():
            print(json.dumps({"world_size": world_size(), "device": result.device, "steps": result.steps,
                              "batch_size": args.batch_size, "seconds": round(seconds, 2)}))


if __name__ == "__main__":
    main()
