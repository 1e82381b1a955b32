"""Scoring biasscope's verdicts against the zoo's truth, running its CLI, and the tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: verdicts of a modality not used for the predictions; of one used. Any other verdict (a
#: "cannot tell" a later rule may add) counts as in between.
NOT_USED = ("ignored", "unused")
USED = ("weak", "ok", "dominant")


def verdict_right(truth: str, verdict: str, flip: float, max_flip: float) -> bool:
    """Whether a verdict agrees with the truth of the ablation:

    - ignored (no practical effect): ``ignored`` or ``unused``;
    - relied (a practical effect): a used verdict, and ``weak`` only when its flip rate is
      under half the largest one (a modality that moves as many predictions as the other is
      not weak);
    - partial (between the margins): anything but ``ok`` / ``dominant`` (neither "ignored" nor
      "barely used" is a clear error there, a fair share is).
    """
    if truth == "ignored":
        return verdict in NOT_USED
    if truth == "relied":
        return verdict in ("ok", "dominant") or (verdict == "weak" and flip < 0.5 * max_flip)
    return verdict not in ("ok", "dominant")


def gate_right(truths: Sequence[str], rc: int) -> bool:
    """``--fail-on ignored`` must exit 1 when a modality is truly ignored, 0 when every one is
    relied upon (either when the only doubt is a partial one)."""
    if "ignored" in truths:
        return rc == 1
    if all(t == "relied" for t in truths):
        return rc == 0
    return rc in (0, 1)


def run_cli(args: Sequence[str], *, log: Path, timeout: float = 900) -> tuple[int, float, str]:
    """Run ``biasscope ARGS`` in a child process on one thread; (exit code, seconds, stderr tail)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:  # run from the log's folder: ``-m`` puts the working directory first on sys.path, and
        # the repository root would shadow a biasscope given by PYTHONPATH (another branch's)
        proc = subprocess.run([sys.executable, "-m", "biasscope", *args], capture_output=True, text=True,
                              env=env, timeout=timeout, cwd=log.parent)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired:
        rc, out, err = -9, "", f"timed out after {timeout} s"
    log.write_text(f"$ biasscope {' '.join(args)}\nexit {rc}\n--- stdout\n{out}\n--- stderr\n{err}\n")
    return rc, time.perf_counter() - start, err.strip()[-600:]


def read_audit(folder: Path) -> dict[str, Any] | None:
    """The parts of ``audit.json`` the zoo scores (None when absent)."""
    path = folder / "audit.json"
    if not path.exists():
        return None
    d = json.loads(path.read_text())
    mods = {}
    for m in d["modalities"]:
        perm = m.get("permutation") or {}
        mods[m["name"]] = {
            "verdict": m["verdict"], "share": m["share"], "reliance_share": m.get("reliance_share"),
            "accuracy_drop": (perm.get("accuracy_drop") or {}).get("mean"),
            "loss_increase": (perm.get("loss_increase") or {}).get("mean"),
        }
    codes = sorted({x["code"] for x in d.get("diagnostics", []) if x.get("severity") != "info"})
    return {"sentence": d["sentence"], "accuracy": d.get("accuracy"), "modalities": mods, "diagnostics": codes}


def score_row(row: dict[str, Any]) -> None:
    """Add ``right`` per modality and overall (and for the gate) to a result row, in place."""
    truth = row["truth"]["modalities"]
    audit = row.get("audit")
    if audit is None:
        row["right"] = False
        return
    max_flip = max(t["flip"] for t in truth.values())
    for name, t in truth.items():
        verdict = audit["modalities"].get(name, {}).get("verdict", "?")
        audit["modalities"].setdefault(name, {})["right"] = verdict_right(t["truth"], verdict, t["flip"], max_flip)
    row["gate_right"] = gate_right([t["truth"] for t in truth.values()], row["rc"])
    row["right"] = all(m.get("right", False) for m in audit["modalities"].values()) and row["gate_right"]


def _cell(row: dict[str, Any], name: str) -> str:
    t = row["truth"]["modalities"][name]
    audit = row.get("audit")
    verdict = audit["modalities"].get(name, {}).get("verdict", "?") if audit else "-"
    mark = "" if audit is None else (" ✓" if audit["modalities"][name]["right"] else " ✗")
    return f"{name}: {t['truth']} {100 * t['flip']:.1f}% → {verdict}{mark}"


def table(rows: Sequence[dict[str, Any]], *, markdown: bool = True) -> str:
    """One table per route: model, truth (flip rates), verdicts, right/wrong; and the shares."""
    lines = []
    for route in dict.fromkeys(r["route"] for r in rows):
        part = [r for r in rows if r["route"] == route]
        right = sum(r["right"] for r in part)
        lines += [f"\n**{route}**: {right}/{len(part)} right ({100 * right / len(part):.0f}%)\n",
                  "| model | bias | seed | acc val / decor. | modality: truth (flip) → verdict | exit | right |",
                  "|---|---|---|---|---|---|---|"]
        for r in part:
            cells = "; ".join(_cell(r, m) for m in r["truth"]["modalities"])
            acc = f"{r['truth']['val_accuracy']:.2f} / {r['truth']['decorrelated_accuracy']:.2f}"
            err = f" ({r['error'][:60]})" if r.get("error") else ""
            lines.append(f"| {r['arch']} | {r['bias']} | {r['seed']} | {acc} | {cells} | {r['rc']}{err} | "
                         f"{'yes' if r['right'] else 'NO'} |")
    total = sum(r["right"] for r in rows)
    lines.append(f"\nAll routes: {total}/{len(rows)} models right ({100 * total / max(len(rows), 1):.0f}%)")
    text = "\n".join(lines)
    return text if markdown else text.replace("**", "")
