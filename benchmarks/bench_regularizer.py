"""Cost of the functional-entropy regularizer: one regularized training step (CE + lambda *
term, backward, optimizer step) against a plain cross-entropy step on the same model and
batch, as time and peak-memory ratios, for K in (4, 8, 16) samples and M in (2, 3, 5)
modalities -- with the term on the whole batch (``full``) and at fix's defaults
(``FixOptions``: the term on ``term_examples`` examples, every ``term_every``-th step; the
gradient through the clean prediction in both).

Timing: both kinds of step alternate in one process (the minimum of ``--repeats`` runs,
after warm-up). Peak memory of one step: on CUDA ``torch.cuda.max_memory_allocated`` over
``memory_allocated`` before it; on CPU (Linux) the growth of the kernel's resident-set
high-water mark VmHWM, reset through /proc/self/clear_refs after ``malloc_trim`` -- so each
kind of step is measured alone, in the same process. (``tracemalloc`` does not see torch's
allocations, and ``getrusage``'s ru_maxrss cannot be reset: a spike during import or set-up
hides the step.) The optimizer state exists before either step is measured.

    python benchmarks/bench_regularizer.py            # CPU, or CUDA with --device cuda
    python benchmarks/bench_regularizer.py --quick    # K=4 only, fewer repeats
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from biasscope import Modality  # noqa: E402
from biasscope.runtime.options import FixOptions  # noqa: E402
from biasscope.fixing.regularizer import FunctionalEntropyRegularizer  # noqa: E402

DEFAULTS = FixOptions()


class LateFusion(nn.Module):
    """M vector modalities, an MLP encoder each, a head on the concatenation."""

    def __init__(self, m: int, dim: int, hidden: int, classes: int = 10) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
            for _ in range(m)
        )
        self.head = nn.Sequential(
            nn.Linear(m * hidden, hidden), nn.ReLU(), nn.Linear(hidden, classes)
        )

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.head(
            torch.cat([enc(x) for enc, x in zip(self.encoders, xs, strict=True)], dim=1)
        )


def setup(m: int, k: int, args, device: torch.device, **knobs):
    torch.manual_seed(0)
    model = LateFusion(m, args.dim, args.hidden).to(device).train()
    xs = tuple(torch.randn(args.batch, args.dim, device=device) for _ in range(m))
    label = torch.randint(0, 10, (args.batch,), device=device)
    mods = (
        [Modality(f"m{i}", input=i) for i in range(m)]
        if args.site == "input"
        else [Modality(f"m{i}", layer=f"encoders.{i}") for i in range(m)]
    )
    reg = FunctionalEntropyRegularizer(model, mods, samples=k, **knobs)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    batch = (*xs, label)

    def plain() -> None:
        loss = F.cross_entropy(model(*xs), label)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def regularized() -> None:
        loss = F.cross_entropy(model(*xs), label)
        term, _ = reg(batch)
        opt.zero_grad(set_to_none=True)
        (loss + 0.1 * term).backward()
        opt.step()

    return plain, regularized


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(plain, regularized, device, repeats: int) -> tuple[float, float]:
    for fn in (plain, regularized):
        fn()
    times: dict[str, list[float]] = {"plain": [], "reg": []}
    for _ in range(repeats):  # alternate, so drifts hit both kinds alike
        for name, fn in (("plain", plain), ("reg", regularized)):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    # the minimum: the least disturbed run of each kind (other processes only add time)
    return min(times["plain"]), min(times["reg"])


def cuda_peak(fn, device) -> int:
    fn()  # warm-up: optimizer state, cuBLAS workspaces
    sync(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - base


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1])
    raise KeyError(key)


def cpu_peak(fn) -> int | None:
    """Peak resident-set growth in bytes of one ``fn()`` (Linux): free heap pages are
    returned to the OS (malloc_trim), the kernel's high-water mark VmHWM is reset
    (/proc/self/clear_refs, "5"), and VmHWM after the step is compared with VmRSS before."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        fn()  # warm-up of this kind of step
        gc.collect()
        libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        base = _status_kib("VmRSS")
        fn()
        return (_status_kib("VmHWM") - base) * 1024
    except (OSError, KeyError):
        return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--site", choices=("input", "layer"), default="input")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    ks = (4,) if args.quick else (4, 8, 16)
    repeats = 3 if args.quick else args.repeats
    what = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "VmHWM growth (Linux)"
    print(
        f"device={device}  batch={args.batch} dim={args.dim} hidden={args.hidden} "
        f"site={args.site}  threads={torch.get_num_threads()}  memory: {what}"
    )
    print(
        f"{'K':>3} {'M':>2} {'plain ms':>9} {'full ms':>9} {'full x':>7} {'dflt ms':>8} "
        f"{'dflt x':>7} {'plain MiB':>10} {'full MiB':>9} {'mem x':>6}"
    )
    print(f"defaults: term_examples={DEFAULTS.term_examples}, term_every={DEFAULTS.term_every}")
    knobs = dict(term_examples=DEFAULTS.term_examples, term_every=DEFAULTS.term_every)
    for k in ks:
        for m in (2, 3, 5):
            plain, regularized = setup(m, k, args, device)
            tp, tr = time_steps(plain, regularized, device, repeats)
            plain_d, regularized_d = setup(m, k, args, device, **knobs)
            # term_every > 1: the mean over a cycle of term_every steps
            cycle = DEFAULTS.term_every

            def cycle_step() -> None:
                for _ in range(cycle):
                    regularized_d()

            tpd, trd = time_steps(plain_d, cycle_step, device, repeats)
            trd /= cycle
            if device.type == "cuda":
                mp, mr = cuda_peak(plain, device), cuda_peak(regularized, device)
            else:
                mp, mr = cpu_peak(plain), cpu_peak(regularized)
            if mp is None or mr is None:
                mem = f"{'n/a':>10} {'n/a':>9} {'n/a':>6}"
            else:
                ratio = mr / mp if mp > 0 else float("nan")
                mem = f"{mp / 2**20:10.1f} {mr / 2**20:9.1f} {ratio:6.1f}"
            print(
                f"{k:>3} {m:>2} {tp * 1e3:9.2f} {tr * 1e3:9.2f} {tr / tp:7.1f} "
                f"{trd * 1e3:8.2f} {trd / tpd:7.1f} {mem}",
                flush=True,
            )


if __name__ == "__main__":
    main()
