"""The colored-digits results table: 5 seeds, mean ± std of the decorrelated-test accuracy
and the audit of each model (the README's table).

Rows: the biased baseline; `fix` with its defaults (Fisher estimator, log_share form, auto
lambda, ModDrop 0.5 on the dominant modality); the same with the Poincaré estimator; each
ingredient alone (the regularizer without ModDrop, ModDrop without the regularizer, the
paper's inverse form); and an unbiased reference trained on random colours.

    python benchmarks/colored_digits_table.py [--seeds 5] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time

from biasscope import audit, fix
from biasscope.datasets import TwoModalityNet, accuracy, colored_digits, train_plain
from biasscope.demo import DEMO_MODALITIES, batches_of

ROWS: list[tuple[str, dict]] = [
    ("fix defaults (Fisher)", {}),
    ("fix, Poincaré estimator", dict(estimator="poincare")),
    ("regularizer only (log_share, no ModDrop)", dict(modality_dropout=0.0)),
    ("paper's form (inverse, no ModDrop)", dict(form="inverse", modality_dropout=0.0)),
    ("ModDrop only (lambda 0)", dict(lambda_=0.0)),
]


def run_seed(seed: int, quick: bool) -> dict[str, dict[str, float]]:
    n, epochs = (1500, 8) if quick else (3000, 15)
    train = colored_digits("train", n=n, seed=seed)
    val = colored_digits("val", n=500, seed=seed)
    test = colored_digits("test", n=1000, seed=seed)
    gray = colored_digits("test", n=1000, colors="gray", seed=seed)
    baseline = train_plain(TwoModalityNet(seed=seed), train, epochs=epochs, seed=seed)
    unbiased = colored_digits("train", n=n, colors="random", seed=seed)
    reference = train_plain(TwoModalityNet(seed=seed), unbiased, epochs=epochs, seed=seed)
    models = {"biased baseline": baseline}
    for name, options in ROWS:
        opts = {"seed": seed, "device": "cpu", **({"epochs": 3} if quick else {}), **options}
        models[name] = fix(baseline, batches_of(train, 64), DEMO_MODALITIES, **opts).model
    models["unbiased reference"] = reference
    out = {}
    for name, model in models.items():
        result = audit(model, batches_of(val), DEMO_MODALITIES, samples=16, seed=seed, shapley=False, device="cpu")
        out[name] = {
            "test": accuracy(model, test), "gray": accuracy(model, gray), "train": accuracy(model, train),
            "image_share": result["image"].share,
            "image_drop": result["image"].permutation.accuracy_drop.mean,
            "color_drop": result["color"].permutation.accuracy_drop.mean,
            "verdict": f"image {result['image'].verdict}, color {result['color'].verdict}",
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    start = time.perf_counter()
    runs = [run_seed(seed, args.quick) for seed in range(args.seeds)]
    names = list(runs[0])

    def ms(name: str, key: str) -> str:
        xs = [r[name][key] for r in runs]
        sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
        return f"{statistics.mean(xs):.3f} ± {sd:.3f}"

    base = statistics.mean(r["biased baseline"]["test"] for r in runs)
    ref = statistics.mean(r["unbiased reference"]["test"] for r in runs)
    print(f"colored digits, {args.seeds} seeds{' (quick)' if args.quick else ''}, "
          f"{time.perf_counter() - start:.0f} s; audits on the biased-like validation split")
    print("| model | test acc (random colour) | test acc (gray) | gap closed | image FE share | perm. drop image / colour | verdict (seed 0) |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        test = statistics.mean(r[name]["test"] for r in runs)
        gap = (test - base) / (ref - base) if ref != base else float("nan")
        print(f"| {name} | {ms(name, 'test')} | {ms(name, 'gray')} | {gap:.0%} | {ms(name, 'image_share')} | "
              f"{ms(name, 'image_drop')} / {ms(name, 'color_drop')} | {runs[0][name]['verdict']} |")


if __name__ == "__main__":
    main()
