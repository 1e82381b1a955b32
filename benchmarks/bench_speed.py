"""The audit's cost against plain inference, from Python and from the command line, side by
side in one run, with the start-up cost of each stage.

Three models: a late fusion (CNN image encoder, 2-layer transformer text encoder, MLP head)
audited at its encoders' outputs (``image=layer:image``, ``text=layer:text``), where the
perturbed passes recompute only the head; a ViLT-style joint model (tiny ViLT) audited at its
embeddings, where everything after the site depends on it (nothing to skip); and the demo's
late-fusion CNN (``TwoModalityNet``) at its inputs, where each pass skips the other encoder.

Per model: one plain inference pass over the data; the audit's entropy family (K samples,
permutation, Shapley, probe and attributions off: ``--profile``-independent), with and
without downstream-only recomputation; the default audit (every check); and the command line
on the same model, data and options (a fresh process: its time minus the start-up, i.e. the
interpreter with ``import biasscope.cli`` and the model's loading, is compared with Python's).
Stage costs come from the audit's progress clock (probe, attributions) and from timing the
report's rendering.

    OMP_NUM_THREADS=1 python benchmarks/bench_speed.py [--examples 128] [--samples 32]
        [--models late_fusion,vilt,demo] [--repeats 2] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import biasscope as bs  # noqa: E402

BATCH = 32
ENTROPY_ONLY = dict(permutation_repeats=0, shapley=False, probe=False, explain=0)


class TextEncoder(nn.Module):
    def __init__(self, vocab: int = 1000, dim: int = 64, length: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.position = nn.Parameter(0.02 * torch.randn(1, length, dim))
        layer = nn.TransformerEncoderLayer(dim, 4, 128, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, tokens):
        return self.encoder(self.embed(tokens) + self.position[:, : tokens.shape[1]]).mean(1)


class LateFusion(nn.Module):
    """CNN image encoder + 2-layer transformer text encoder + MLP head."""

    def __init__(self, dim: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.image = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, dim),
        )
        self.text = TextEncoder(dim=dim)
        self.head = nn.Sequential(nn.Linear(2 * dim, 64), nn.ReLU(), nn.Linear(64, classes))

    def forward(self, image, tokens):
        return self.head(torch.cat([self.image(image), self.text(tokens)], 1))


def late_fusion() -> nn.Module:
    torch.manual_seed(0)
    return LateFusion().eval()


def vilt() -> nn.Module:
    from benchmarks.bench_audit import VILT_SIZES
    from transformers import ViltConfig, ViltForQuestionAnswering

    kw = {k: v for k, v in VILT_SIZES["vilt-tiny"].items() if k != "tokens"}
    torch.manual_seed(0)
    config = ViltConfig(**kw, max_image_length=-1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return ViltForQuestionAnswering(config).eval()


def demo_net() -> nn.Module:
    from biasscope.datasets.models import TwoModalityNet

    return TwoModalityNet(seed=0).eval()


def _data(name: str, n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    if name == "late_fusion":
        return {"image": torch.randn(n, 3, 32, 32, generator=g), "tokens": torch.randint(0, 1000, (n, 32), generator=g)}
    if name == "vilt":
        from benchmarks.bench_audit import _vilt

        parts = _vilt("vilt-tiny", n, n)[1][0]
        return {k: v for k, v in parts.items()}
    from biasscope.datasets import colored_digits

    d = colored_digits("val", n=n, seed=0)
    return {"image": d["image"], "color": d["color"], "label": d["label"]}


SITES = {
    "late_fusion": ["image=layer:image", "text=layer:text"],
    "vilt": ["text=layer:vilt.embeddings.text_embeddings", "image=layer:vilt.embeddings.patch_embeddings"],
    "demo": ["image=input:image", "color=input:color"],
}
BUILD = {"late_fusion": late_fusion, "vilt": vilt, "demo": demo_net}


def _modalities(name: str) -> list[bs.Modality]:
    return [bs.Modality.parse(s) if hasattr(bs.Modality, "parse") else _parse(s) for s in SITES[name]]


def _parse(spec: str) -> bs.Modality:
    name, site = spec.split("=", 1)
    kind, where = site.split(":", 1)
    return bs.Modality(name, **{kind: where})


def _batches(data: dict, label: bool) -> list[dict]:
    n = next(iter(data.values())).shape[0]
    keys = [k for k in data if label or k != "label"]
    return [{k: data[k][i : i + BATCH] for k in keys} for i in range(0, n, BATCH)]


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@contextmanager
def _full_passes():
    """The audit with downstream-only recomputation turned off (every pass runs the model)."""
    from biasscope.auditing import _state as _audit_state
    from biasscope.measuring._downstream import DownstreamPlan

    _audit_state.DownstreamPlan = lambda *a, **k: DownstreamPlan(*a, **{**k, "enabled": False})
    try:
        yield
    finally:
        _audit_state.DownstreamPlan = DownstreamPlan


def _stage_clock(events: list[tuple[str, float]], start: float) -> dict[str, float]:
    """Seconds per stage from the progress events: each stage from the previous stage's
    last event to its own last event."""
    out: dict[str, float] = {}
    last = start
    for i, (stage, t) in enumerate(events):
        if i + 1 == len(events) or events[i + 1][0] != stage:
            out[stage] = out.get(stage, 0.0) + t - last
            last = t
    return out


def measure_python(name: str, n: int, samples: int, repeats: int) -> dict:
    """Plain inference, the entropy family (downstream-only and full passes) and the default
    audit with its stages, in this process (after a warm-up call)."""
    model, data, mods = BUILD[name](), _data(name, n), _modalities(name)
    if "label" not in data:  # the default audit's checks need labels: the model's predictions
        with torch.no_grad():
            data["label"] = torch.cat([model(**b).logits.argmax(1) if name == "vilt" else model(**b).argmax(1)
                                       for b in _batches(data, False)])
    plain_batches, labelled = _batches(data, False), _batches(data, True)
    entropy = dict(samples=samples, seed=0, device="cpu", label_key=None, **ENTROPY_ONLY)
    audit = lambda: bs.audit(model, plain_batches, mods, **entropy)  # noqa: E731

    def plain() -> None:
        with torch.no_grad():
            for b in plain_batches:
                model(**b)

    audit()  # warm-up: one-time imports and allocations
    r = {"plain_s": _best(plain, repeats), "entropy_s": _best(audit, repeats)}
    with _full_passes():
        r["entropy_full_passes_s"] = _best(audit, 1)
    from biasscope.report import audit_report

    options = bs.AuditOptions(samples=samples, seed=0, device="cpu", label_key=None, **ENTROPY_ONLY)
    audit_report(model, plain_batches, mods, options=options)  # warm-up: the page's one-time imports
    r["entropy_report_s"] = _best(lambda: audit_report(model, plain_batches, mods, options=options), repeats)
    events: list[tuple[str, float]] = []
    progress = lambda stage, done, total, info: events.append((stage, time.perf_counter()))  # noqa: E731
    start = time.perf_counter()
    report = audit_report(model, labelled, mods, options=bs.AuditOptions(samples=samples, seed=0, device="cpu"),
                          progress=progress)
    end = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        written = time.perf_counter()
        report.write(out)
        r["write_s"] = time.perf_counter() - written
    r["default_report_s"] = end - start
    r["stages"] = _stage_clock(events, start)
    r["stages"]["render"] = end - events[-1][1]  # after the audit's last event: the page
    return r


def _cli_files(name: str, n: int, folder: Path) -> tuple[Path, Path]:
    model_path, data_path = folder / f"{name}.pt", folder / f"{name}-data.pt"
    torch.save(BUILD[name]().state_dict(), model_path)
    torch.save({k: v for k, v in _data(name, n).items() if k != "label"}, data_path)
    return model_path, data_path


def _run(cmd: list[str]) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    return seconds


def measure_cli(name: str, n: int, samples: int, repeats: int) -> dict:
    """The same entropy-family audit from ``biasscope audit``: in this process (warm: no
    imports, the same audit function) and as a fresh process, and the Python audit as a
    fresh process; the fresh processes' extra time is the start-up (interpreter, imports)."""
    from cli.main import app

    with tempfile.TemporaryDirectory() as tmp:
        model_path, data_path = _cli_files(name, n, Path(tmp))
        factory = f"{Path(__file__).resolve()}:{BUILD[name].__name__}"
        args = ["audit", str(model_path), "--factory", factory, "--data", str(data_path), "--label-key", "none",
                "--batch-size", str(BATCH), "--device", "cpu", "--samples", str(samples), "--permutation-repeats", "0",
                "--no-shapley", "--no-probe", "--explain", "0", "--quiet", "--out", str(Path(tmp) / "out")]
        for spec in SITES[name]:
            args += ["--modality", spec]

        def in_process() -> None:
            with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
                app(args, standalone_mode=False)

        in_process()  # warm-up
        fresh = [sys.executable, __file__, "--child", name, "--examples", str(n), "--samples", str(samples)]
        return {"cli_warm_s": _best(in_process, repeats),
                "cli_fresh_s": _best(lambda: _run([sys.executable, "-m", "biasscope", *args]), repeats),
                "python_fresh_s": _best(lambda: _run(fresh), repeats),
                "load_s": _best(lambda: bs.load_model(model_path, factory=factory), repeats)}


def child(name: str, n: int, samples: int) -> None:
    """A fresh process's Python audit (the command line's counterpart): imports, build, data
    as the command line reads them, one audit."""
    model, mods = BUILD[name](), _modalities(name)
    data = {k: v for k, v in _data(name, n).items() if k != "label"}
    bs.audit(model, _batches(data, False), mods, samples=samples, seed=0, device="cpu", label_key=None, **ENTROPY_ONLY)


def regularized_step(n: int, repeats: int, samples: int = 4) -> dict:
    """fix's training step on the late fusion at its encoders: cross-entropy alone, and with
    the regularizer's term on the whole batch (FixOptions' K = 4, every step), with and
    without downstream-only recomputation."""
    from biasscope.measuring._downstream import DownstreamPlan
    from biasscope.fixing.regularizer import FunctionalEntropyRegularizer

    model, data, mods = late_fusion().train(), _data("late_fusion", n), _modalities("late_fusion")
    batch = {**{k: v[:BATCH] for k, v in data.items()}, "label": torch.randint(0, 10, (BATCH,))}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    out = {}
    for name, enabled in (("plain", None), ("term", True), ("term_full_passes", False)):
        reg = None
        if enabled is not None:
            reg = FunctionalEntropyRegularizer(model, mods, samples=samples, term_examples=None, term_every=1)
            reg._downstream = DownstreamPlan(model, mods, bs.OutputSpec(), enabled=enabled)

        def step(reg=reg) -> None:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(batch["image"], batch["tokens"]), batch["label"])
            if reg is not None:
                loss = loss + 0.1 * reg(batch)[0]
            loss.backward()
            optimizer.step()

        step()  # warm-up (and the replay check)
        out[f"{name}_s"] = _best(step, max(3, repeats))
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="late_fusion,vilt,demo")
    p.add_argument("--examples", type=int, default=128)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-cli", action="store_true", help="Python only")
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p


def _print(results: dict, args) -> None:
    load = os.getloadavg()
    print(f"{args.examples} examples, K = {args.samples}, batch {BATCH}, CPU, torch threads "
          f"{torch.get_num_threads()}, load average {load[0]:.1f} / {load[1]:.1f} (1 / 5 min)")
    print("\n| model | plain inference s | entropy family s | × plain | full passes × plain | "
          "default audit × plain |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        p = r["plain_s"]
        print(f"| {name} | {p:.3f} | {r['entropy_s']:.3f} | **{r['entropy_s'] / p:.1f}** | "
              f"{r['entropy_full_passes_s'] / p:.1f} | {r['default_report_s'] / p:.1f} |")
    if all("cli_warm_s" in r for r in results.values()):
        print("\nThe entropy family from Python and from `biasscope audit` (seconds). Warm: in this process "
              "(no imports); fresh: a new process (start-up = fresh − warm); render + write: the report "
              "page and folder, which the Python call does not make:\n")
        print("| model | Python warm | CLI warm | render + write | (CLI warm − render − write) / Python | "
              "Python fresh | CLI fresh | start-up Python / CLI | loading |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, r in results.items():
            render = r["entropy_report_s"] - r["entropy_s"] + r["write_s"]
            print(f"| {name} | {r['entropy_s']:.2f} | {r['cli_warm_s']:.2f} | {render:.2f} | "
                  f"**{(r['cli_warm_s'] - render) / r['entropy_s']:.2f}** | {r['python_fresh_s']:.2f} | "
                  f"{r['cli_fresh_s']:.2f} | {r['python_fresh_s'] - r['entropy_s']:.1f} / "
                  f"{r['cli_fresh_s'] - r['cli_warm_s']:.1f} | {r['load_s']:.2f} |")
    stages = ["scale", "entropy", "permutation", "shapley", "probe", "explain", "render"]
    print("\nThe default audit's stages (seconds, from its progress clock; render: the report page, "
          "write: writing the folder):\n")
    print("| model | " + " | ".join(stages) + " | write |")
    print("|---|" + "---|" * (len(stages) + 1))
    for name, r in results.items():
        cells = [f"{r['stages'].get(s, 0.0):.3f}" for s in stages] + [f"{r['write_s']:.3f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    torch.set_num_threads(1)
    if args.child:
        child(args.child, args.examples, args.samples)
        return {}
    results = {}
    for name in args.models.split(","):
        results[name] = measure_python(name, args.examples, args.samples, args.repeats)
        if not args.no_cli:
            results[name].update(measure_cli(name, args.examples, args.samples, args.repeats))
    step = regularized_step(args.examples, args.repeats)
    if args.json:
        print(json.dumps({"audit": results, "regularized_step": step}))
    else:
        _print(results, args)
        plain = step["plain_s"]
        print(f"\nfix's step on late_fusion at its encoders (batch {BATCH}, K = 4, the term on the whole "
              f"batch every step): plain {1e3 * plain:.1f} ms; regularized {1e3 * step['term_s']:.1f} ms = "
              f"**{step['term_s'] / plain:.2f}x**; with full passes {step['term_full_passes_s'] / plain:.2f}x")
    return results


if __name__ == "__main__":
    main()
