"""``biasscope fix`` with its defaults on the real-model zoo: does it do harm?

    python benchmarks/real_zoo_fix.py               # the development seed (0): 20 biased models
    python benchmarks/real_zoo_fix.py --held-out    # the held-out seeds
    python benchmarks/real_zoo_fix.py --arch pt2 --bias real

Per biased model of ``benchmarks/real_zoo.py`` (both directions: on the shortcut, on the real
signal): ``biasscope fix MODEL --data train.pt --val val.pt`` with the defaults (only
``--audit-samples`` lowered, which changes the before/after reports, not the training), and,
when the installed CLI has ``--shift-data``, the same with ``--shift-data shift.pt`` (a
decorrelated sample, not the one measured). The fixed model is loaded back through its route
and scored on a separate decorrelated split. Columns: decorrelated accuracy before, after, of an
unbiased reference (same architecture, shortcut random in training), the exit code, the
modality ModDrop was put on (the truth says which is the shortcut) and *harm*: after <
before - 0.05 with exit 0. Writes ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]
HARM = 0.05


def has_shift_data() -> bool:
    """Whether the installed ``biasscope fix`` takes ``--shift-data``."""
    proc = subprocess.run([sys.executable, "-m", "biasscope", "fix", "--help"], capture_output=True, text=True,
                          env=dict(os.environ, COLUMNS="200"), cwd=Path(__file__).parent)  # not the repo root
    return "--shift-data" in proc.stdout


def fix_one(arch: Any, built: Any, ref: Any, out: Path, *, shift: bool, audit_samples: int) -> dict[str, Any]:
    import torch

    from _real_zoo import accuracy
    from _real_zoo_routes import MODEL_NAME, factory_flag, load_back, logits_fn
    from _real_zoo_score import run_cli

    variant = "shift-data" if shift else "defaults"
    folder = out / f"{arch.name}-{built.bias}-s{built.seed}-{variant}"
    flags = ["fix", built.model, "--data", built.data("train"), "--val", built.data("val"), *factory_flag(arch),
             *arch.sites, "--out", str(folder / "fixed"), "--quiet", "--audit-samples", str(audit_samples),
             "--seed", "0", *(["--shift-data", built.data("shift")] if shift else [])]
    rc, seconds, err = run_cli(flags, log=folder / "fix.log")
    torch.set_num_threads(1)
    test = torch.load(built.data("decorrelated"), weights_only=True)
    before = accuracy(logits_fn(load_back(arch, built.model)), test)
    row = {"arch": arch.name, "route": arch.route, "bias": built.bias, "seed": built.seed, "variant": variant,
           "rc": rc, "seconds": round(seconds, 1), "before": before, "after": None,
           "reference": ref.truth["decorrelated_accuracy"], "truth": built.truth,
           "shortcut": arch.shortcut}
    fixed = folder / "fixed" / MODEL_NAME[arch.route]
    if fixed.exists():
        row["after"] = accuracy(logits_fn(load_back(arch, fixed)), test)
    log = folder / "fixed" / "training_log.json"
    if log.exists():
        target = json.loads(log.read_text()).get("target") or {}
        row["augmented"] = target.get("modality")
    if rc not in (0, 1):
        row["error"] = err.splitlines()[-1] if err else f"exit {rc}"
    row["stderr"] = err
    row["harm"] = rc == 0 and row["after"] is not None and row["after"] < before - HARM
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | bias | variant | relies on (truth flips) | ModDrop on | decor. before | after | reference | gap closed | exit | harm |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        flips = ", ".join(f"{m} {100 * t['flip']:.0f}%" for m, t in r["truth"]["modalities"].items())
        after = f"{r['after']:.2f}" if r["after"] is not None else "not trained" if r["rc"] == 0 else "-"
        gap = r["reference"] - r["before"]
        closed = f"{100 * (r['after'] - r['before']) / gap:.0f}%" if r["after"] is not None and gap > HARM else "-"
        err = f" ({r['error'][:50]})" if r.get("error") else ""
        aug = r.get("augmented") or "-"
        aug += " (shortcut)" if aug == r["shortcut"] else " (real)" if aug != "-" else ""
        lines.append(f"| {r['arch']} | {r['bias']} | {r['variant']} | {flips} | {aug} | {r['before']:.2f} | {after} | "
                     f"{r['reference']:.2f} | {closed} | {r['rc']}{err} | {'**HARM**' if r['harm'] else 'no'} |")
    for variant in dict.fromkeys(r["variant"] for r in rows):
        part = [r for r in rows if r["variant"] == variant]
        harmed = sum(r["harm"] for r in part)
        flagged = sum(r["rc"] == 1 and r["after"] is not None and r["after"] < r["before"] - HARM for r in part)
        helped = [r for r in part if r["after"] is not None and r["reference"] - r["before"] > HARM]
        closed = [(r["after"] - r["before"]) / (r["reference"] - r["before"]) for r in helped]
        mean = f"{100 * sum(closed) / len(closed):.0f}%" if closed else "-"
        lines.append(f"\n{variant}: {harmed}/{len(part)} models harmed with exit 0; {flagged} worse but exit 1; "
                     f"mean gap closed {mean} over the {len(closed)} with a gap")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from _real_zoo import ARCHS, BIASES, DEV_SEEDS, HELD_OUT_SEEDS, build
    from real_zoo import build_all

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", action="append", choices=sorted(ARCHS))
    p.add_argument("--bias", action="append", choices=sorted(BIASES))
    p.add_argument("--seed", type=int, action="append")
    p.add_argument("--held-out", action="store_true", help="the held-out seeds, never used by the tests")
    p.add_argument("--audit-samples", type=int, default=8)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--no-shift-data", action="store_true", help="skip the --shift-data runs")
    p.add_argument("--table", type=Path, help="only print the table of a results.json / results.jsonl")
    p.add_argument("--out", type=Path, default=ROOT / "tmp" / "real_zoo_fix")
    args = p.parse_args(argv)
    args.out = args.out.resolve()
    if args.table:
        text = args.table.read_text()
        print(table(json.loads(text) if args.table.suffix == ".json" else [json.loads(x) for x in text.splitlines()]))
        return 0
    start = time.perf_counter()
    seeds = args.seed or list(HELD_OUT_SEEDS if args.held_out else DEV_SEEDS)
    models = build_all([ARCHS[a] for a in (args.arch or ARCHS)], args.bias or list(BIASES), seeds)
    refs = [build(a, b.bias, b.seed, reference=True) for a, b in models]
    shift = has_shift_data() and not args.no_shift_data
    print(f"--shift-data {'found: runs with and without it' if shift else 'not in this biasscope: defaults only'}")
    jobs = [(a, b, r, s) for s in ([False, True] if shift else [False]) for (a, b), r in zip(models, refs)]
    args.out.mkdir(parents=True, exist_ok=True)
    partial = args.out / "results.jsonl"  # one row per finished fix, for a run cut short
    partial.write_text("")

    def run(job: tuple[Any, ...]) -> dict[str, Any]:
        row = fix_one(*job[:3], args.out, shift=job[3], audit_samples=args.audit_samples)
        with partial.open("a") as f:
            f.write(json.dumps(row) + "\n")
        return row

    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(run, jobs))
    print(table(rows))
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    print(f"\n{time.perf_counter() - start:.0f} s; results: {args.out / 'results.json'}; logs: {args.out}/*/fix.log")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
