"""The real-model zoo: biasscope's verdicts against truth measured by ablation, per route.

    python benchmarks/real_zoo.py                 # the development seed (0): 20 models
    python benchmarks/real_zoo.py --held-out      # the held-out seeds (1, 2): never in the tests
    python benchmarks/real_zoo.py --arch vilt --bias shortcut --jobs 2

Ten architectures from tiny random configs (late fusion CNN+GRU, ViLT, CLIP + head,
VisualBERT, LXMERT, BERT + tabular, Wav2Vec2 + text, a Lightning checkpoint, TorchScript,
``.pt2``), each trained here with a planted shortcut in two directions (on the shortcut, on the
real signal: ``benchmarks/_real_zoo.py``), saved in its route's format, audited with
``biasscope audit ... --fail-on ignored`` through the CLI (and through the Python API for
``--api`` architectures). The truth of each modality is its prediction-flip rate when shuffled
across the validation split (``_real_zoo.truth_label``); the scoring rule is
``_real_zoo_score.verdict_right``. Prints one table per route and the share of right verdicts;
writes ``OUT/results.json``. Trained models are cached under ``benchmarks/.cache/real_zoo``
(keyed by the seed and a hash of the zoo's code).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]


def audit_flags(arch: Any, built: Any, out: Path, samples: int) -> list[str]:
    from _real_zoo_routes import factory_flag

    return [
        "audit", built.model, "--data", built.data("val"), *factory_flag(arch), *arch.sites,
        "--out", str(out), "--quiet", "--samples", str(samples), "--explain", "0", "--no-probe",
        "--plotlyjs", "cdn", "--fail-on", "ignored", "--seed", "0",
    ]


def audit_one(arch: Any, built: Any, out: Path, samples: int) -> dict[str, Any]:
    from _real_zoo_score import read_audit, run_cli

    folder = out / f"{arch.name}-{built.bias}-s{built.seed}"
    rc, seconds, err = run_cli(audit_flags(arch, built, folder / "audit", samples), log=folder / "audit.log")
    row = {"arch": arch.name, "route": arch.route, "bias": built.bias, "seed": built.seed, "truth": built.truth,
           "rc": rc, "seconds": round(seconds, 1), "audit": read_audit(folder / "audit")}
    if rc not in (0, 1):
        row["error"] = err.splitlines()[-1] if err else f"exit {rc}"
    return row


def audit_api(arch: Any, built: Any, samples: int) -> dict[str, Any]:
    """The same audit through the Python API (``load_model`` + ``audit``)."""
    import biasscope as bs
    from _real_zoo_routes import api_modalities, factory_flag

    factory = factory_flag(arch)[1] if arch.needs_factory else None
    start = time.perf_counter()
    row = {"arch": arch.name, "route": f"python api ({arch.route})", "bias": built.bias, "seed": built.seed,
           "truth": built.truth}
    try:
        loaded = bs.load_model(built.model, factory=factory)
        modalities, output = api_modalities(arch, loaded.module)
        result = bs.audit(loaded.module, bs.load_data(built.data("val")), modalities, output=output,
                          samples=samples, explain=0, probe=False, seed=0, device="cpu")
        mods = {m.name: {"verdict": m.verdict} for m in result.modalities}
        row.update(rc=1 if result.ignored else 0, audit={"sentence": result.sentence, "modalities": mods})
    except Exception as exc:  # a benchmark reports every failure as a row
        row.update(rc=-1, audit=None, error=f"{type(exc).__name__}: {exc}")
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def build_all(archs: list[Any], biases: list[str], seeds: list[int]) -> list[tuple[Any, Any]]:
    import torch

    from _real_zoo import build

    torch.set_num_threads(1)
    out = []
    for seed in seeds:
        for arch in archs:
            for bias in biases:
                start = time.perf_counter()
                built = build(arch, bias, seed)
                print(f"  built {arch.name}-{bias}-s{seed} ({time.perf_counter() - start:.1f} s)", flush=True)
                out.append((arch, built))
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    from _real_zoo import ARCHS, BIASES, DEV_SEEDS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", action="append", choices=sorted(ARCHS), help="only these architectures")
    p.add_argument("--bias", action="append", choices=sorted(BIASES), help="only these directions")
    p.add_argument("--seed", type=int, action="append", help=f"model seeds (default {DEV_SEEDS})")
    p.add_argument("--held-out", action="store_true", help="the held-out seeds, never used by the tests")
    p.add_argument("--samples", type=int, default=16, help="audit --samples (K)")
    p.add_argument("--api", action="append", default=None,
                   help="architectures also audited through the Python API (default late_fusion, vilt, pt2)")
    p.add_argument("--jobs", type=int, default=2, help="CLI audits run at once")
    p.add_argument("--out", type=Path, default=ROOT / "tmp" / "real_zoo")
    p.add_argument("--table", type=Path, help="only print the tables of a results.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from _real_zoo import ARCHS, BIASES, DEV_SEEDS, HELD_OUT_SEEDS
    from _real_zoo_score import score_row, table

    args = parse(argv)
    args.out = args.out.resolve()
    if args.table:
        rows = json.loads(args.table.read_text())
        for row in rows:
            score_row(row)
        print(table(rows))
        return 0
    archs = [ARCHS[a] for a in (args.arch or ARCHS)]
    seeds = args.seed or list(HELD_OUT_SEEDS if args.held_out else DEV_SEEDS)
    start = time.perf_counter()
    print("building (cached when unchanged)", flush=True)
    models = build_all(archs, args.bias or list(BIASES), seeds)
    print(f"auditing {len(models)} models through the CLI ({args.jobs} at once)", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda ab: audit_one(*ab, args.out, args.samples), models))
    api = set(args.api or ["late_fusion", "vilt", "pt2"])
    rows += [audit_api(a, b, args.samples) for a, b in models if a.name in api]
    for row in rows:
        score_row(row)
    print(table(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    print(f"\n{time.perf_counter() - start:.0f} s; results: {args.out / 'results.json'}; logs: {args.out}/*/audit.log")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
