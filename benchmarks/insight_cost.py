"""Cost of the probe, the attributions and the data checks against the audit they extend,
measured side by side on the same model and data, and what the probe finds.

Trains the three-modality colored-digits model (image, a colour shortcut, a pure-noise
vector), audits its validation split (K samples), then times on the same data:
- the probe standalone (its own clean pass and permutation repeats),
- the probe as integrated (sharing the audit's AuditSet and permutation scores: only the
  cross-validated classifiers are extra),
- ``explain`` attributions of N examples (integrated gradients, 32 steps),
- the data checks;
and prints each as a fraction of the audit's time, then the probe's findings on the
validation split and on decorrelated test data (random colours).

    python benchmarks/insight_cost.py [--samples 32] [--examples 1000] [--explain 3]
    python benchmarks/insight_cost.py --whole [--repeats 2]

``--whole`` times the whole ``audit()`` at its default options with the probe and the
attributions on (the default), off, and each alone, interleaved ``--repeats`` times, and
prints each configuration's fastest run and its extra time as a fraction of the plain audit.
"""

from __future__ import annotations

import argparse
import time

import torch

from biasscope.auditing.audit import audit, collect_batches
from biasscope.auditing.data_checks import data_checks
from biasscope.datasets import ThreeModalityNet, train_plain
from biasscope.datasets.colored_digits import three_modality_digits
from biasscope.demo import batches_of
from biasscope.measuring.explain import choose_examples, explain_examples
from biasscope.measuring.modality import Modality
from biasscope.measuring.perception import AuditSet, permutation_scores
from biasscope.measuring.probe import probe_diagnostics, probe_modalities

MODS = [Modality("image", input="image"), Modality("color", input="color"), Modality("noise", input="noise")]


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _stages(model, val, args) -> None:
    """Within single default audits (same load on the machine): the probe's and the
    attributions' share of the audit's wall time, from the progress callback's clock."""
    for run in range(args.repeats):
        marks: list[tuple[str, int, float]] = []
        start = time.perf_counter()
        audit(model, val, MODS, seed=args.seed, device="cpu", explain=args.explain,
              progress=lambda stage, done, total, info: marks.append((stage, done, time.perf_counter())))
        total = time.perf_counter() - start
        probe = [t for s, _, t in marks if s == "probe"]
        explain_end = max(t for s, _, t in marks if s == "explain")
        t_probe, t_explain = probe[-1] - probe[0], explain_end - probe[-1]
        print(f"  in-audit run {run + 1}: audit {total:.2f} s; probe {t_probe:.2f} s ({100 * t_probe / total:.1f}%),"
              f" explain {args.explain}: {t_explain:.2f} s ({100 * t_explain / total:.1f}%)")


def whole(model, val, args) -> None:
    """The whole audit, default options, with and without the probe / attributions."""
    configs = {"plain (probe off, explain 0)": dict(probe=False, explain=0),
               "probe only": dict(probe=True, explain=0),
               f"explain {args.explain} only": dict(probe=False, explain=args.explain),
               f"default (probe + explain {args.explain})": dict(probe=True, explain=args.explain)}
    times: dict[str, list[float]] = {k: [] for k in configs}
    for _ in range(args.repeats):
        for label, extra in configs.items():
            times[label].append(_timed(lambda: audit(model, val, MODS, seed=args.seed, device="cpu", **extra))[1])
    _stages(model, val, args)
    base = min(times["plain (probe off, explain 0)"])  # the fastest run: least disturbed by load
    print(f"whole audit, default options, {args.examples} examples, 3 modalities ({args.repeats} runs each):")
    for label, ts in times.items():
        print(f"  {label:<34} fastest {min(ts):6.2f} s (runs {', '.join(f'{t:.2f}' for t in ts)})"
              f"  extra {100 * (min(ts) - base) / base:+5.1f}% of the plain audit")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--explain", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--whole", action="store_true", help="time the whole audit with and without")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    train = three_modality_digits("train", n=3000, seed=args.seed)
    model = train_plain(ThreeModalityNet(seed=args.seed), train, epochs=10, seed=args.seed).eval()
    val = batches_of(three_modality_digits("val", n=args.examples, seed=args.seed))
    if args.whole:
        return whole(model, val, args)
    result, t_audit = _timed(lambda: audit(model, val, MODS, samples=args.samples, seed=args.seed, device="cpu"))
    batches = collect_batches(val)
    dev = torch.device("cpu")
    _, t_alone = _timed(lambda: probe_modalities(model, batches, MODS, seed=args.seed))

    def integrated():
        data = AuditSet(model, batches, MODS, dev, result_output)
        perms = permutation_scores(model, batches, MODS, repeats=10, seed=args.seed, data=data)
        start = time.perf_counter()
        probes = probe_modalities(model, batches, MODS, seed=args.seed, data=data, permutation=perms)
        return probes, time.perf_counter() - start

    from biasscope.runtime._batch import OutputSpec

    result_output = OutputSpec()
    probes, t_shared = integrated()
    per_example = {m.name: m.per_example["functional_entropy"] for m in result.modalities}
    picks = choose_examples(per_example, args.explain)
    _, t_explain = _timed(lambda: [
        explain_examples(model, batches, next(m for m in MODS if m.name == name), [i])
        for i, name, _ in picks
    ])
    _, t_checks = _timed(lambda: data_checks(batches, MODS, n_classes=10))
    print(f"audit K={args.samples}, {args.examples} examples, 3 modalities: {t_audit:.2f} s")
    for label, t in (("probe, standalone", t_alone), ("probe, sharing the audit's passes", t_shared),
                     (f"explain {args.explain} examples", t_explain), ("data checks", t_checks)):
        print(f"  {label:<36} {t:7.2f} s  = {100 * t / t_audit:5.1f}% of the audit")
    verdicts = {m.name: m.verdict for m in result.modalities}
    print(f"\nverdicts (val): {verdicts}; accuracy {result.accuracy:.3f}")
    test = collect_batches(batches_of(three_modality_digits("test", n=args.examples, seed=args.seed)))
    for split, data in (("val", batches), ("test (random colours)", test)):
        print(f"\nprobe on {split}:")
        for p in probe_modalities(model, data, MODS, seed=args.seed):
            print(f"  {p.modality:<6} probe {p.accuracy.mean:.3f} [{p.accuracy.ci_low:.3f}, "
                  f"{p.accuracy.ci_high:.3f}] chance {p.chance:.3f} | model {p.model_accuracy:.3f}, "
                  f"permuted {p.model_accuracy_permuted.mean:.3f} | available {p.available:.2f} used {p.used:.2f}")
    for d in probe_diagnostics(probes, verdicts):
        print(f"  [{d.code}] {d.message}")


if __name__ == "__main__":
    main()
