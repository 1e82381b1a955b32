"""The colored-digits loop in one call: train a biased model, audit it, fix it, audit again,
and compare with an unbiased reference (the paper's Colored-MNIST setting, offline)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .auditing.audit import audit
from .datasets import TwoModalityNet, accuracy, benchmark_data, train_plain
from .fixing.fix import fix
from .measuring.modality import Modality
from .results import AuditResult

__all__ = ["DEMO_MODALITIES", "DemoResult", "batches_of", "run_demo"]

#: The demo perturbs the inputs: at the encoders' outputs the image's 32 spread-out features
#: outweigh the colour's in every score, so the fix would target the wrong modality
#: (benchmarks/study_fix.py measures both sites).
DEMO_MODALITIES = (Modality("image", input="image"), Modality("color", input="color"))

Progress = Callable[[str, int, int, dict[str, Any]], None]


@dataclass
class DemoResult:
    """The audits of the biased baseline, the fixed model and the unbiased reference, and
    each model's accuracy on the training distribution and on decorrelated test data."""

    before: AuditResult
    after: AuditResult
    reference: AuditResult
    accuracy: dict[str, dict[str, float]]  # model -> split -> accuracy
    lambda_value: float
    fix_steps: int
    settings: dict[str, Any] = field(default_factory=dict)
    fix_target: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        """The numbers of ``summary.json``: accuracies, lambda, steps, shares, settings."""
        audits = (("baseline", self.before), ("fixed", self.after), ("reference", self.reference))
        return {
            "accuracy": self.accuracy, "lambda": self.lambda_value, "fix_steps": self.fix_steps,
            "fix_target": self.fix_target,
            "shares": {name: r.shares for name, r in audits},
            "settings": self.settings,
        }

    def files(self, *, plotlyjs: str = "inline") -> dict[str, str]:
        """Every file of the demo folder by name: three audits and reports, the comparison
        (with the no-modality-ignored gate), ``summary.json``."""
        from .compare import evaluate_gates
        from .render import render_compare_html, render_html

        files: dict[str, str] = {}
        for name, audited in (("before", self.before), ("after", self.after), ("reference", self.reference)):
            files[f"{name}/audit.json"] = audited.to_json()
            files[f"{name}/report.html"] = render_html(audited, title=f"colored digits: {name}", plotlyjs=plotlyjs)
        gates = evaluate_gates(self.before, self.after, fail_if_ignored=True)
        files["compare.html"] = render_compare_html(self.before, self.after, gates=gates, plotlyjs=plotlyjs)
        files["summary.json"] = json.dumps(self.summary(), indent=2, default=str)
        return files

    def write(self, out: str | Path, *, plotlyjs: str = "inline") -> dict[str, Path]:
        """Write :meth:`files` into ``out`` as one unit (with a manifest)."""
        from .runtime._files import write_outputs

        return write_outputs(Path(out), self.files(plotlyjs=plotlyjs), run={"command": "demo", **self.settings})


def batches_of(data: dict[str, Tensor], batch_size: int = 128) -> list[dict[str, Tensor]]:
    """Split a dict of equally long tensors into a list of dict batches."""
    n = next(iter(data.values())).shape[0]
    return [{k: v[i : i + batch_size] for k, v in data.items()} for i in range(0, n, batch_size)]


def run_demo(
    *,
    benchmark: str = "colored",
    fast: bool = False,
    seed: int = 0,
    progress: Progress | None = None,
    fix_options: dict[str, Any] | None = None,
) -> DemoResult:
    """Run the whole loop on a bundled benchmark (CPU, about a minute; ``fast`` for a
    few-second smoke version with fewer examples and steps).

    ``benchmark``: ``"colored"`` (the colour is a pure shortcut) or ``"both"`` (the colour
    also carries a genuine part of the label, see :func:`biasscope.datasets.both_needed`).

    The audits run on the validation split, drawn like the training data (the colour
    agrees with the label 99% of the time): that is where the bias lives.
    """
    def report(stage: str, done: int, total: int, info: dict[str, Any] | None = None) -> None:
        if progress is not None:
            progress(stage, done, total, info or {})

    n_train, n_eval, epochs = (1500, 300, 8) if fast else (3000, 1000, 15)

    def data(split: str, decorrelated: bool | None = None, n: int = n_eval) -> dict[str, Tensor]:
        return benchmark_data(benchmark, split, n=n, seed=seed, decorrelated=decorrelated)

    train, val = data("train", n=n_train), data("val")
    splits = {"train": train, "val": val, "test_random": data("test")}
    if benchmark == "colored":
        from .datasets import colored_digits

        splits["test_gray"] = colored_digits("test", n=n_eval, colors="gray", seed=seed)
    report("baseline", 0, 2)
    baseline = train_plain(TwoModalityNet(seed=seed), train, epochs=epochs, seed=seed)
    report("baseline", 1, 2)
    unbiased = data("train", decorrelated=True, n=n_train)
    reference = train_plain(TwoModalityNet(seed=seed), unbiased, epochs=epochs, seed=seed)
    report("baseline", 2, 2)

    audit_options = dict(samples=8 if fast else 32, seed=seed, device="cpu", tensorization=True, progress=report)
    val_batches = batches_of(val)
    before = audit(baseline, val_batches, DEMO_MODALITIES, **audit_options)
    options = {"seed": seed, "device": "cpu", **({"epochs": 2} if fast else {}), **(fix_options or {})}
    fixed = fix(baseline, batches_of(train, 64), DEMO_MODALITIES, progress=report, **options)
    after = audit(fixed.model, val_batches, DEMO_MODALITIES, **audit_options)
    ref = audit(reference, val_batches, DEMO_MODALITIES, **audit_options)
    models: dict[str, nn.Module] = {"baseline": baseline, "fixed": fixed.model, "reference": reference}
    acc = {name: {s: accuracy(m, d) for s, d in splits.items()} for name, m in models.items()}
    for result, name in ((before, "baseline"), (after, "fixed"), (ref, "reference")):
        result.provenance["demo"] = {"model": name, "accuracy": acc[name]}
    return DemoResult(
        before=before, after=after, reference=ref, accuracy=acc,
        lambda_value=fixed.lambda_value, fix_steps=fixed.steps, fix_target=fixed.target,
        settings={"benchmark": benchmark, "fast": fast, "seed": seed, "n_train": n_train, "n_eval": n_eval,
                  "baseline_epochs": epochs, "fix": fixed.settings},
    )
