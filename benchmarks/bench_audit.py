"""The audit against the minimal work of its four measures, timed side by side in one run.

The minimum (whatever the implementation does): per example one clean forward pass, and per
modality K perturbed forward + backward passes (noise added at the modality's site, the
gradient taken w.r.t. the noise) through the part of the model downstream of the site (the
rest is the clean pass's), chunked to the same ``max_rows``. The audit runs with
the performance-grounded checks off (``permutation_repeats=0, shapley=False``, no labels):
its entropy family only, plus the tensorization check with ``--tensorization``. Both
alternate ``--repeats`` times after a warm-up; the minimum time of each is reported, with
the rows the audit actually ran (forward, and forward with backward) beside the minimum's.

    python benchmarks/bench_audit.py [--model net|vilt-tiny|vilt-b] [--examples 512]
        [--samples 32] [--device auto] [--precision fp32] [--tensorization] [--json]
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import biasscope as bs  # noqa: E402
from biasscope.runtime._batch import OutputSpec, call_model, split_batch  # noqa: E402
from biasscope.runtime._device import autocast_for, resolve_device  # noqa: E402
from biasscope.measuring.modality import intervene  # noqa: E402


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


VILT_SIZES = {
    # ViLT-B/32 (Kim et al. 2021) at 224 px: 7x7 patches + 40 text positions, VQA head
    "vilt-b": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                   image_size=224, patch_size=32, vocab_size=30522, max_position_embeddings=40,
                   num_labels=3129, tokens=32),
    "vilt-tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                      image_size=32, patch_size=16, vocab_size=100, max_position_embeddings=16,
                      num_labels=10, tokens=12),
}


def _vilt(size: str, n: int, batch: int):
    from transformers import ViltConfig, ViltForQuestionAnswering

    kw = dict(VILT_SIZES[size])
    tokens = kw.pop("tokens")
    config = ViltConfig(**kw, max_image_length=-1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = ViltForQuestionAnswering(config)
    g = torch.Generator().manual_seed(0)
    batches = []
    for lo in range(0, n, batch):
        b = min(batch, n - lo)
        lengths = torch.randint(4, tokens + 1, (b,), generator=g)
        mask = (torch.arange(tokens)[None, :] < lengths[:, None]).long()
        size_px = config.image_size
        batches.append({
            "input_ids": torch.randint(1, config.vocab_size, (b, tokens), generator=g) * mask,
            "attention_mask": mask, "token_type_ids": torch.zeros(b, tokens, dtype=torch.long),
            "pixel_values": torch.randn(b, 3, size_px, size_px, generator=g),
            "pixel_mask": torch.ones(b, size_px, size_px, dtype=torch.long),
        })
    mods = bs.preset_modalities("vilt", model) if hasattr(bs, "preset_modalities") else [
        bs.Modality("text", layer="vilt.embeddings.text_embeddings"),
        bs.Modality("image", layer="vilt.embeddings.patch_embeddings"),
    ]
    return model, batches, mods


def build(model: str, n: int, batch: int) -> tuple[nn.Module, list[dict], list]:
    """The model (seeded random weights), ``n`` examples in batches, and its modalities."""
    torch.manual_seed(0)
    if model in VILT_SIZES:
        m, batches, mods = _vilt(model, n, batch)
        return m.eval(), batches, mods
    g = torch.Generator().manual_seed(0)
    batches = [
        {"image": torch.randn(min(batch, n - lo), 1, 16, 16, generator=g),
         "color": torch.rand(min(batch, n - lo), 3, generator=g)}
        for lo in range(0, n, batch)
    ]
    return Net().eval(), batches, [bs.Modality("image", input="image"), bs.Modality("color", layer="color_encoder")]


def _net_downstream(model: Net, b, clean: dict, m, k: int):
    """The part of ``Net`` that depends on modality ``m``, on k * B rows: the image encoder
    and the head for the image (an input), the head alone for the colour (its encoder's
    output); the other branch's clean features repeated. Returns (logits, noise)."""
    if m.input == "image":
        x = b.get_input("image").repeat(k, 1, 1, 1)
        noise = torch.randn_like(x).requires_grad_(True)
        image, color = model.image_encoder(x + noise), clean["color"].repeat(k, 1)
    else:
        h = clean["color"].repeat(k, 1)
        noise = torch.randn_like(h).requires_grad_(True)
        image, color = clean["image"].repeat(k, 1), h + noise
    return model.head(torch.cat([image, color], 1)), noise


def minimal_passes(model, batches, modalities, *, samples: int, max_rows: int, device, precision="fp32") -> None:
    """The minimal work of the four measures: one clean pass per example, then per modality
    K forward passes with noise at its site and the gradient w.r.t. that noise, through the
    part of the model that depends on the site (``Net``: written out by hand; a ViLT perturbed
    at its embeddings: the whole model, nothing precedes the site)."""
    output = OutputSpec()
    for raw in batches:
        b = split_batch(raw, label_key=None).to(device)
        with torch.no_grad(), autocast_for(device, precision):
            if isinstance(model, Net):
                clean = {"image": model.image_encoder(b.get_input("image")), "color": model.color_encoder(b.get_input("color"))}
                model.head(torch.cat([clean["image"], clean["color"]], 1))
            else:
                call_model(model, b, output)
        per_chunk = max(1, max_rows // b.size)
        for m in modalities:
            done = 0
            while done < samples:
                k = min(per_chunk, samples - done)
                done += k
                with autocast_for(device, precision):
                    logits, noise = _net_downstream(model, b, clean, m, k) if isinstance(model, Net) else _full(model, b, m, k, output)
                torch.autograd.grad(logits.float().logsumexp(1).sum(), noise)


def _full(model, b, m, k: int, output):
    """The whole model on k * B rows with noise at ``m``'s site: (logits, noise)."""
    noise: list[torch.Tensor] = []

    def add(h):
        noise.append(torch.randn_like(h).requires_grad_(True))
        return h + noise[0]

    with intervene(model, b.repeat(k), {m: add}) as rows:
        logits = call_model(model, rows, output)
    return logits, noise[0]


def noise_seconds(model, batches, modalities, *, samples: int, device) -> dict:
    """The audit's perturbation noise for every example and modality, drawn per example
    (:func:`biasscope.measuring._noise.example_noise`) and with one ``torch.randn`` of the same size:
    the cost of noise that belongs to the example, beside the audit's time."""
    from biasscope.measuring._noise import example_noise
    from biasscope.measuring._perturbation import capture

    shapes = []
    for j, raw in enumerate(batches):
        b = split_batch(raw, label_key=None).to(device)
        with torch.no_grad():
            _, reps = capture(model, b, modalities, OutputSpec())
        shapes.append([(tuple(h.shape[1:]), b.size) for h in reps.values()])
    g = torch.Generator(device=device).manual_seed(0)
    times = {}
    for name in ("keyed", "randn", "keyed", "randn"):
        _sync(device)
        start, seen = time.perf_counter(), 0
        for per in shapes:
            for s, (feat, size) in enumerate(per):
                if name == "keyed":
                    example_noise(feat, 1.0, scale=1.0, seed=0, example_index=torch.arange(seen, seen + size),
                                  stream=s, samples=samples, device=device)
                else:
                    torch.randn((samples * size, *feat), generator=g, device=device)
            seen += per[0][1]
        _sync(device)
        times[name] = min(times.get(name, float("inf")), time.perf_counter() - start)
    return {"noise_keyed_s": times["keyed"], "noise_randn_s": times["randn"]}


def audit_kwargs(wanted: dict) -> tuple[dict, list[str]]:
    """The options the installed ``audit`` accepts (named, or through ``**overrides``)."""
    params = inspect.signature(bs.audit).parameters
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepted = {k: v for k, v in wanted.items() if open_ended or k in params}
    return accepted, sorted(set(wanted) - set(accepted))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args) -> dict:
    device = resolve_device(args.device)
    model, batches, mods = build(args.model, args.examples, args.batch)
    model.to(device)
    optional = {"precision": args.precision}
    optional["tensorization"] = args.tensorization
    kwargs, unsupported = audit_kwargs(optional)
    kwargs.update(samples=args.samples, seed=0, device=device, label_key=None, max_rows=args.max_rows,
                  permutation_repeats=0, shapley=False)
    rows = {"forward": 0, "backward": 0}

    def count(_module, inputs, kw):
        first = next(t for t in (*inputs, *kw.values()) if isinstance(t, torch.Tensor))
        rows["backward" if torch.is_grad_enabled() else "forward"] += first.shape[0]

    def run_audit() -> None:
        bs.audit(model, batches, mods, **kwargs)

    def run_minimal() -> None:
        minimal_passes(model, batches, mods, samples=args.samples, max_rows=args.max_rows,
                       device=device, precision=args.precision)

    times = {"audit": [], "minimal": []}
    for i in range(args.repeats + 1):  # the first round warms up
        for name, fn in (("audit", run_audit), ("minimal", run_minimal)):
            handle = model.register_forward_pre_hook(count, with_kwargs=True) if i == 0 and name == "audit" else None
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            if i:
                times[name].append(time.perf_counter() - start)
            if handle is not None:
                handle.remove()
    n, m, k = args.examples, len(mods), args.samples
    noise = noise_seconds(model, batches, mods, samples=k, device=device)
    return {
        **noise,
        "model": args.model, "device": str(device), "examples": n, "modalities": m, "samples": k,
        "precision": args.precision, "tensorization": args.tensorization,
        "unsupported_options": unsupported,
        "audit_s": min(times["audit"]), "minimal_s": min(times["minimal"]),
        "ratio": min(times["audit"]) / min(times["minimal"]),
        "audit_rows": rows, "minimal_rows": {"forward": n, "backward": n * m * k},
        "card": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("net", *VILT_SIZES), default="net")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--examples", type=int, default=512)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--max-rows", type=int, default=4096)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--tensorization", action="store_true", help="also run the joint (tensorization) check (off by default, as in the audit)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    return p


def run(argv: list[str]) -> dict:
    """Measure with command-line arguments ``argv``; print nothing, return the figures."""
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return measure(args)


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    r = run(sys.argv[1:] if argv is None else argv)
    if args.json:
        print(json.dumps(r))
        return r
    print(f"model {r['model']}, {r['examples']} examples, M = {r['modalities']}, K = {r['samples']}, "
          f"device {r['device']} ({r['card']}), precision {r['precision']}, "
          f"tensorization check {'on' if r['tensorization'] else 'off'}")
    if r["unsupported_options"]:
        print(f"(this audit does not accept: {', '.join(r['unsupported_options'])})")
    print(f"{'':30}{'seconds':>10}{'fwd rows':>12}{'fwd+bwd rows':>14}")
    for name, key in (("audit (entropy family)", "audit"), ("minimal passes (floor)", "minimal")):
        rows = r[f"{key}_rows"]
        print(f"{name:30}{r[f'{key}_s']:>10.3f}{rows['forward']:>12,}{rows['backward']:>14,}")
    print(f"ratio audit / minimal: {r['ratio']:.2f}x")
    extra = r["noise_keyed_s"] - r["noise_randn_s"]
    print(f"per-example noise {r['noise_keyed_s']:.3f} s vs torch.randn {r['noise_randn_s']:.3f} s: "
          f"{extra:+.3f} s, {100 * extra / r['audit_s']:+.1f}% of the audit")
    return r


if __name__ == "__main__":
    main()
