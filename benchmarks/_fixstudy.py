"""Shared engine of study_fix.py and colored_digits_table.py: per seed, a biased baseline and
an unbiased reference (TwoModalityNet), then `biasscope.fix` with each row's overrides;
the decorrelated-test accuracy and the share of the baseline-to-reference gap closed."""

from __future__ import annotations

import functools
import inspect
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import biasscope  # noqa: E402
from biasscope import Modality  # noqa: E402
from biasscope.datasets import TwoModalityNet, accuracy, benchmark_data, train_plain  # noqa: E402
from biasscope.runtime.options import FixOptions  # noqa: E402

MODALITIES = [Modality("image", input="image"), Modality("color", input="color")]
_REGULARIZER_ONLY = ("detach_clean", "term_examples", "term_every")


def run_fix(model, data, modalities, *, val_data=None, **overrides):
    """``biasscope.fix(model, data, modalities, val_data=..., **overrides)``. While fix still
    has its old keyword signature, the regularizer-only options reach the regularizer through
    a partial (the restructured fix takes every FixOptions field)."""
    accepted = inspect.signature(biasscope.fix).parameters
    if "options" in accepted:  # the FixOptions fix: every field is an override
        return biasscope.fix(model, data, modalities, val_data=val_data, **overrides)
    defaults = FixOptions()
    extra = {
        k: overrides.pop(k, getattr(defaults, k)) for k in _REGULARIZER_ONLY if k not in accepted
    }
    if not extra:
        return biasscope.fix(model, data, modalities, val_data=val_data, **overrides)
    fix_module = sys.modules["biasscope.fixing.fix"]  # the module (biasscope.fix is the function)
    original = fix_module.FunctionalEntropyRegularizer
    fix_module.FunctionalEntropyRegularizer = functools.partial(original, **extra)
    try:
        return biasscope.fix(model, data, modalities, val_data=val_data, **overrides)
    finally:
        fix_module.FunctionalEntropyRegularizer = original


def batches(data: dict[str, torch.Tensor], size: int = 64) -> list[dict[str, torch.Tensor]]:
    n = data["label"].shape[0]
    return [{k: v[i : i + size] for k, v in data.items()} for i in range(0, n, size)]


def reset_head(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A copy of ``model`` whose ``head`` is re-initialised (from ``seed``)."""
    import copy

    model = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for layer in model.head.modules():
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
    return model


def run_seed(benchmark: str, seed: int, rows, *, steps: int, n: int = 3000, epochs: int = 10):
    """{row name: (decorrelated test acc, seconds)} plus the baseline and reference.

    A row's options are fix's, plus ``start`` ("biased": fine-tune the biased baseline, the
    default; "scratch": train a fresh TwoModalityNet; "reset_head": the baseline with its head
    re-initialised), ``steps`` (this row's step count; ``epochs_default``: none, fix's
    ``epochs`` decides) and ``shift`` (pass the decorrelated
    validation split as ``shift_data``)."""
    train = benchmark_data(benchmark, "train", n=n, seed=seed)
    val = benchmark_data(benchmark, "val", n=500, seed=seed)
    test = benchmark_data(benchmark, "test", n=1000, seed=seed)
    biased = train_plain(TwoModalityNet(seed=seed), train, epochs=epochs, seed=seed)
    unbiased = benchmark_data(benchmark, "train", n=n, seed=seed, decorrelated=True)
    reference = train_plain(TwoModalityNet(seed=seed), unbiased, epochs=epochs, seed=seed)
    out = {"biased baseline": (accuracy(biased, test), 0.0)}
    for name, row in rows:
        options = dict(row)
        start = options.pop("start", "biased")
        model = {"biased": biased, "scratch": TwoModalityNet(seed=seed + 1000)}.get(start)
        model = model if model is not None else reset_head(biased, seed)
        extra = {}
        if options.pop("shift", False):
            shifted = benchmark_data(benchmark, "val", n=500, seed=seed, decorrelated=True)
            extra["shift_data"] = batches(shifted, 250)
        t0 = time.perf_counter()
        schedule = {} if options.pop("epochs_default", False) else {"epochs": 1000, "max_steps": options.pop("steps", steps)}
        opts = {**schedule, "seed": seed, "device": "cpu", **options}
        result = run_fix(model, batches(train), MODALITIES, val_data=batches(val, 250), **extra, **opts)
        out[name] = (accuracy(result.model, test), time.perf_counter() - t0)
        print(f"  seed {seed} {name:<40} {out[name][0]:.3f} ({out[name][1]:.0f} s)", flush=True)
    out["unbiased reference"] = (accuracy(reference, test), 0.0)
    return out


def table(benchmark: str, runs: list[dict]) -> str:
    """Markdown: mean +/- std of the decorrelated accuracy over seeds, and the gap closed."""
    base = statistics.mean(r["biased baseline"][0] for r in runs)
    ref = statistics.mean(r["unbiased reference"][0] for r in runs)
    lines = [
        f"{benchmark} ({len(runs)} seeds): decorrelated-test accuracy, mean ± std",
        "| model | test accuracy | gap closed | fix s/run |",
        "|---|---|---|---|",
    ]
    for name in runs[0]:
        xs = [r[name][0] for r in runs]
        sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
        gap = (statistics.mean(xs) - base) / (ref - base) if ref != base else float("nan")
        secs = statistics.mean(r[name][1] for r in runs)
        lines.append(
            f"| {name} | {statistics.mean(xs):.3f} ± {sd:.3f} | {gap:.0%} | "
            f"{secs:.0f} |" if secs else f"| {name} | {statistics.mean(xs):.3f} ± {sd:.3f} | {gap:.0%} | |"
        )
    return "\n".join(lines)
