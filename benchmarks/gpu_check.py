"""The GPU check a maintainer runs on a CUDA machine (under 5 minutes on one recent GPU):

1. the test suite with CUDA visible (``pytest -q -x -m "not browser"``);
2. ``fix`` on the colored digits on CUDA without and with AMP (decorrelated-test accuracy);
3. an audit of a ViLT-B-sized model (ViltConfig: 12 layers, hidden 768, image 224 / patch
   32, random weights) on 256 examples, its time beside the plain passes it needs (one
   clean forward per example, K forward + backward per modality: bench_audit's minimum),
   in fp32 and bf16;
4. both benchmarks (bench_audit, bench_regularizer) with ``--device cuda``.

It prints one markdown report (paste it into the README, naming the card) and exits
non-zero when a step fails, or when CUDA is absent unless ``--allow-cpu`` (then everything
runs at tiny sizes on the CPU, to check the script itself; ``--quick`` shrinks further).

    python benchmarks/gpu_check.py                  # on the GPU machine
    python benchmarks/gpu_check.py --allow-cpu --quick
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

#: step sizes: (full run on CUDA, --allow-cpu, --allow-cpu --quick)
SIZES = {
    "gpu": dict(tests=None, train=3000, epochs=15, fix_epochs=3, fix_steps=None, vilt="vilt-b",
                vilt_n=256, vilt_batch=32, vilt_k=16, bench=["--examples", "512", "--samples", "32"],
                reg=["--quick"]),
    "cpu": dict(tests=["tests/test_noise.py", "tests/test_device.py", "tests/test_distributed.py",
                       "tests/test_estimators.py"], train=600, epochs=3, fix_epochs=1, fix_steps=8,
                vilt="vilt-tiny", vilt_n=32, vilt_batch=16, vilt_k=8,
                bench=["--examples", "128", "--samples", "8", "--repeats", "1"],
                reg=["--quick", "--batch", "64", "--dim", "32", "--hidden", "64"]),
}
SIZES["quick"] = {**SIZES["cpu"], "tests": ["tests/test_noise.py", "tests/test_device.py"], "train": 300,
                  "epochs": 2, "fix_steps": 4, "vilt_n": 16, "vilt_k": 4,
                  "bench": ["--examples", "64", "--samples", "4", "--repeats", "1"]}


def _run(cmd: list[str], timeout: float) -> tuple[bool, str]:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


def step_tests(size: dict, device: str) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-m", "not browser", "-p", "no:cacheprovider",
           *(size["tests"] or [])]
    ok, out = _run(cmd, timeout=400)
    summary = out.splitlines()[-1] if out else "(no output)"
    if not ok:
        raise RuntimeError(f"pytest failed: {summary}\n{out[-3000:]}")
    return [f"| test suite (CUDA visible: {torch.cuda.is_available()}) | {summary} |"]


def step_fix(size: dict, device: str) -> list[str]:
    import biasscope as bs
    from biasscope.datasets import TwoModalityNet, accuracy, colored_digits, train_plain

    train = colored_digits("train", n=size["train"], seed=0)
    test = colored_digits("test", n=1000, seed=0)
    batches = [{k: v[i : i + 64] for k, v in train.items()} for i in range(0, size["train"], 64)]
    mods = [bs.Modality("image", input="image"), bs.Modality("color", input="color")]
    baseline = train_plain(TwoModalityNet(seed=0), train, epochs=size["epochs"], seed=0)
    rows = ["| fix on the colored digits | test accuracy (random colours) | seconds |", "|---|---|---|",
            f"| biased baseline | {accuracy(baseline, test):.3f} | |"]
    for amp in (False, True):
        start = time.perf_counter()
        try:
            result = bs.fix(baseline, batches, mods, device=device, amp=amp, seed=0,
                            epochs=size["fix_epochs"], max_steps=size["fix_steps"])
        except bs.BiasscopeError as exc:
            if device == "cuda":
                raise
            rows.append(f"| fix, amp={amp} on {device} | refused: {exc} | |")
            continue
        seconds = time.perf_counter() - start
        rows.append(f"| fix, amp={amp} on {result.device} | {accuracy(result.model.cpu(), test):.3f} | {seconds:.1f} |")
    return rows


def step_vilt(size: dict, device: str) -> list[str]:
    import bench_audit

    rows = ["| audit of a random ViLT | precision | audit s | plain passes s | ratio |", "|---|---|---|---|---|"]
    for precision in ("fp32", "bf16") if device == "cuda" else ("fp32",):
        r = bench_audit.run(["--model", size["vilt"], "--examples", str(size["vilt_n"]), "--batch",
                              str(size["vilt_batch"]), "--samples", str(size["vilt_k"]), "--device", device,
                              "--precision", precision, "--repeats", "1"])
        note = f" (audit ignores: {', '.join(r['unsupported_options'])})" if r["unsupported_options"] else ""
        rows.append(f"| {r['model']}, {r['examples']} examples, K = {r['samples']}{note} | {precision} | "
                    f"{r['audit_s']:.2f} | {r['minimal_s']:.2f} | {r['ratio']:.2f}x |")
    return rows


def step_benchmarks(size: dict, device: str) -> list[str]:
    rows = []
    for script, extra in (("bench_audit.py", size["bench"]), ("bench_regularizer.py", size["reg"])):
        ok, out = _run([sys.executable, f"benchmarks/{script}", "--device", device, *extra], timeout=240)
        if not ok:
            raise RuntimeError(f"{script} failed:\n{out[-3000:]}")
        rows += [f"{script} --device {device} {' '.join(extra)}", "```", out, "```", ""]
    return rows


STEPS: list[tuple[str, Callable[[dict, str], list[str]]]] = [
    ("tests", step_tests), ("fix", step_fix), ("vilt", step_vilt), ("benchmarks", step_benchmarks),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--allow-cpu", action="store_true", help="run tiny sizes on the CPU when CUDA is absent")
    p.add_argument("--quick", action="store_true", help="with --allow-cpu: the smallest sizes")
    p.add_argument("--only", nargs="*", choices=[name for name, _ in STEPS], help="run these steps only")
    args = p.parse_args(argv)
    if torch.cuda.is_available():
        device, size = "cuda", SIZES["gpu"]
        card = f"{torch.cuda.get_device_name(0)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    elif args.allow_cpu:
        device, size = "cpu", SIZES["quick" if args.quick else "cpu"]
        card = f"no GPU: CPU with {torch.get_num_threads()} threads (torch {torch.__version__}), tiny sizes"
    else:
        print("CUDA is not available here; run on a GPU machine, or pass --allow-cpu to check the script.",
              file=sys.stderr)
        return 2
    report, failed = [f"## GPU check: {card}", ""], []
    total = time.perf_counter()
    for name, step in STEPS:
        if args.only and name not in args.only:
            continue
        start = time.perf_counter()
        try:
            lines = step(size, device)
        except Exception:  # noqa: BLE001 - every step runs; the failure is reported
            failed.append(name)
            lines = [f"**{name} failed**", "```", traceback.format_exc()[-3000:], "```"]
        report += [f"### {name} ({time.perf_counter() - start:.0f} s)", "", *lines, ""]
    report.append(f"total {time.perf_counter() - total:.0f} s; " + (f"FAILED: {', '.join(failed)}" if failed else "all steps passed"))
    print("\n".join(report))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
