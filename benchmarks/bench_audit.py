"""Audit cost versus plain passes, measured side by side in one run.

Counts every forward pass the audit makes (rows, and whether it back-propagates), replays
the same passes as plain ``model(x)`` (+ ``backward``) calls on the same model, and prints
the time ratio and each one's peak memory (peak RSS of a fresh child process on CPU,
``torch.cuda.max_memory_allocated`` on CUDA).

    python benchmarks/bench_audit.py [--samples 32] [--examples 512] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from torch import nn

import biasscope as bs


class Net(nn.Module):
    """Image (1x16x16) + vector (3) late-fusion classifier, ~60k parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.image_encoder = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(32 * 16, 64), nn.ReLU(),
        )
        self.color_encoder = nn.Sequential(nn.Linear(3, 32), nn.ReLU())
        self.head = nn.Linear(96, 10)

    def forward(self, image, color):
        return self.head(torch.cat([self.image_encoder(image), self.color_encoder(color)], 1))


def _data(n: int, batch: int):
    g = torch.Generator().manual_seed(0)
    return [
        {"image": torch.randn(batch, 1, 16, 16, generator=g), "color": torch.rand(batch, 3, generator=g)}
        for _ in range(n // batch)
    ]


MODS = [bs.Modality("image", input="image"), bs.Modality("color", layer="color_encoder")]


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(what: str, args) -> dict:
    torch.manual_seed(0)
    device = bs._device.resolve_device(args.device)
    model, data = Net().to(device).eval(), _data(args.examples, args.batch)
    passes: list[tuple[int, bool]] = []
    model.register_forward_pre_hook(
        lambda m, inp, kw: passes.append((next(iter([*inp, *kw.values()])).shape[0], torch.is_grad_enabled())),
        with_kwargs=True,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = _peak_mb(device)
    if what == "audit":
        start = time.perf_counter()
        bs.audit(model, data, MODS, samples=args.samples, label_key=None, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "peak_mb": _peak_mb(device) - base, "passes": passes}
    plan = json.loads(args.plan)
    start = time.perf_counter()
    for rows, grad in plan:
        image = torch.randn(rows, 1, 16, 16, device=device, requires_grad=grad)
        color = torch.rand(rows, 3, device=device)
        with torch.set_grad_enabled(grad):
            out = model(image, color)
            if grad:
                torch.autograd.grad(out.logsumexp(1).sum(), image)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - start, "peak_mb": _peak_mb(device) - base}


def _run(what: str, args, plan=None) -> dict:
    cmd = [sys.executable, __file__, "--child", what, "--samples", str(args.samples),
           "--examples", str(args.examples), "--batch", str(args.batch), "--device", args.device]
    if plan is not None:
        cmd += ["--plan", json.dumps(plan)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--examples", type=int, default=512)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--child")
    p.add_argument("--plan")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    audit = _run("audit", args)
    plan = [[rows, grad] for rows, grad in audit["passes"]]
    plain = _run("plain", args, plan)
    n_grad = sum(g for _, g in plan)
    rows = sum(r for r, _ in plan)
    print(f"model: 2 modalities, {args.examples} examples, K = {args.samples}, device {args.device}")
    print(f"passes: {len(plan)} ({n_grad} with backward), {rows:,} rows in all")
    print(f"{'':24}{'seconds':>10}{'peak MB':>10}")
    print(f"{'audit (entropy family)':24}{audit['seconds']:>10.2f}{audit['peak_mb']:>10.1f}")
    print(f"{'same plain passes':24}{plain['seconds']:>10.2f}{plain['peak_mb']:>10.1f}")
    print(f"ratio audit / plain: time {audit['seconds'] / plain['seconds']:.2f}x, "
          f"peak memory {audit['peak_mb'] / max(plain['peak_mb'], 1e-9):.2f}x")


if __name__ == "__main__":
    main()
