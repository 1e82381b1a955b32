"""The fix workflow as one library call: audit the input model, fix it, save the fixed
model in its input format, audit it again, and return a report (audits, training log,
comparison) whose ``write(out)`` writes the folder as one unit.

    report = fix_and_audit(load_model("model.pt"), train, modalities, out="fixed", val_data=val)
    report.write("fixed")       # before/, after/, compare.html, training_log.{csv,json}
    report.guard_tripped        # True when the guard stopped a fix that made things worse
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import platform
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .runtime._batch import OutputSpec
from .runtime._distributed import (
    all_reduce_sum, is_distributed, is_writer, join_group, local_only, sync_point,
)
from .runtime._files import MANIFEST_NAME, write_outputs
from .io._sources import fingerprint
from .auditing.audit import audit
from .compare import Gate
from .fixing.fix_folder import (
    STATUS_NAME, check_fix_output, check_not_model_folder, fix_output_names, model_dest_name,
    undo_on_error, write_status,
)
from .errors import ConfigError
from .fixing.fix import FixInterrupted, FixResult, check_fix_setup, fix, resolve_fix_options
from .io.loading import LoadedModel, save_model
from .measuring.modality import Modality
from .runtime.options import FixOptions
from .results._audit import AuditResult, _finite

__all__ = ["STATUS_NAME", "FixReport", "check_fix_output", "check_not_model_folder", "fix_and_audit",
           "fix_output_names"]

#: version of training_log.json (biasscope/results/schemas/fix.schema.json)
FIX_LOG_SCHEMA_VERSION = 1

Progress = Callable[[str, int, int, dict[str, Any]], None]


def _audit_on_writer(stage: str, model: Any, data: Any, modalities: Sequence[Modality], kw: dict) -> AuditResult | None:
    """The audit, run by rank 0 alone under torchrun (None on the other ranks, which wait at
    the sync point; an error on rank 0 surfaces on all of them).

    Hook: once :func:`audit` shards its examples across the ranks itself (issue #13, item 2),
    call it on every rank here and for the fixed model in :func:`_fix_and_audit` (and keep
    the writes on rank 0)."""
    writer = is_writer()
    with sync_point(stage), local_only():  # the audit would otherwise shard across the waiting ranks
        return audit(model, data, modalities, **kw) if writer else None


def _versions() -> dict[str, str]:
    import torch

    from . import __version__

    found = {"biasscope": __version__, "torch": torch.__version__, "python": platform.python_version()}
    for name in ("safetensors", "transformers", "numpy"):
        try:
            found[name] = __import__(name).__version__
        except Exception:  # not installed: nothing to record
            continue
    return found


def _model_info(path: Path, kind: str) -> dict[str, Any]:
    return {"path": str(path), "sha256": fingerprint(path), "kind": kind}


def _fix_summary(result: FixResult) -> dict[str, Any]:
    target = result.target or {}
    summary: dict[str, Any] = {
        "steps": result.steps, "lambda": result.lambda_value, "assumption": result.assumption,
        "swap": result.swap, "augmented": target.get("modality"), "target_rule": target.get("rule"),
        "reliance_before": target.get("reliance"), "reliance_after": result.reliance_after,
    }
    if result.guard is not None:
        g = result.guard
        summary["guard"] = {"tripped": g["tripped"], "start": g["start"], "trip": g["trip"]}
    return summary


def _fix_gates(result: FixResult, before: AuditResult | None, after: AuditResult | None) -> list[Gate] | None:
    """The fix's checks as gates of the compare page: the guard's, the shifted accuracy
    (with shifted data), and the swap of reliance (without)."""
    gates = _guard_gates(result) or []
    if before is not None and after is not None and before.shift_accuracy is not None:
        a, b = before.shift_accuracy, after.shift_accuracy
        gates.append(Gate("accuracy on the shifted data does not fall", b >= a - 1e-12, f"{a:.4f} -> {b:.4f}"))
    elif result.target is not None:
        swap = result.swap
        detail = result.assumption + (
            f"; reliance on {swap['modality']} {swap['before']:.3g} -> {swap['after']:.3g} nats, "
            f"now on {swap['now_relied_upon']}" if swap else "")
        gates.append(Gate("no swap of reliance (no shifted data to check the assumption)", swap is None, detail))
    return gates or None


def _guard_gates(result: FixResult) -> list[Gate] | None:
    """The guard as gates of the compare page: the accuracy and the decorrelated proxy."""
    g = result.guard
    if g is None or g["start"] is None or "val_accuracy" not in g["start"]:
        return None
    trip = g["trip"] if g["trip"] is not None and "val_accuracy" in g["trip"] else None
    last = trip or next((h for h in reversed(result.history) if "val_accuracy" in h), g["start"])
    s = g["start"]
    detail = f"in-distribution accuracy {s['val_accuracy']:.4f} -> {last['val_accuracy']:.4f}"
    if "val_proxy_accuracy" in s and "val_proxy_accuracy" in last:
        detail += (f"; decorrelated accuracy ({g['modality']} permuted) {s['val_proxy_accuracy']:.4f} -> "
                   f"{last['val_proxy_accuracy']:.4f}")
    gates = []
    if g["enabled"] and not g["shifted"]:  # with shifted data the shifted accuracy decides
        no_gain = g["trip"] is not None and g["trip"]["reason"] == "no_gain"
        gates.append(Gate(f"fix guard (tolerance {g['tolerance']:g})", not no_gain, detail))
    if g["max_drop_accuracy"] is not None:
        hit = g["trip"] is not None and g["trip"]["reason"] == "max_drop_accuracy"
        gates.append(Gate(f"fix accuracy drop <= {g['max_drop_accuracy']:g}", not hit, detail))
    return gates


@dataclass
class FixReport:
    """What :func:`fix_and_audit` returns: the two audits, the fix result, the written model."""

    before: AuditResult | None
    after: AuditResult | None
    fix: FixResult | None  # None when there was nothing to fix
    model_path: Path | None
    gates: list[Gate] | None = None
    #: whether this process writes the report: False on the ranks > 0 of a torchrun group,
    #: whose report has no audits (``before``/``after`` None) and whose ``write`` does nothing
    writer: bool = True

    @property
    def nothing_to_fix(self) -> bool:
        """True when the input's audit found no modality ignored, unused or weak, so nothing
        was trained (``force=True`` trains anyway)."""
        return self.fix is None

    @property
    def guard_tripped(self) -> bool:
        return self.fix is not None and self.fix.guard_tripped

    @property
    def failed(self) -> bool:
        """Not a success: the guard tripped, or the reliance swapped (:attr:`FixResult.failed`)."""
        return self.fix is not None and self.fix.failed

    @property
    def message(self) -> str:
        """Why the result is not a success: the guard's message and/or the swap's (empty
        otherwise)."""
        if self.fix is None:
            return ""
        return " ".join(d.message for d in self.fix.diagnostics
                        if d.code in ("fix_guard_tripped", "fix_swapped_reliance"))

    def training_log(self) -> dict[str, Any]:
        r = self.fix
        return {
            "schema_version": FIX_LOG_SCHEMA_VERSION,  # biasscope/results/schemas/fix.schema.json
            "lambda": r.lambda_value, "calibration": r.calibration, "steps": r.steps,
            "best_step": r.best_step, "stopped_early": r.stopped_early, "device": r.device,
            "target": r.target, "guard": r.guard, "reliance_after": r.reliance_after,
            "assumption": r.assumption, "swap": r.swap,
            "diagnostics": [dataclasses.asdict(d) for d in r.diagnostics],
            "settings": r.settings, "history": r.history,
        }

    def training_log_csv(self) -> str:
        history = self.fix.history
        names = sorted({k for r in history for k in r.get("scores", {})})
        cols = ["step", "epoch", "loss", "ce", "reg", "lambda", *[f"score_{n}" for n in names],
                "augmented", "val_loss", "val_accuracy", "val_proxy_accuracy", "shift_accuracy"]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        for r in history:
            writer.writerow({**r, **{f"score_{k}": v for k, v in r.get("scores", {}).items()}})
        return buf.getvalue()

    def files(self, *, plotlyjs: str = "inline") -> dict[str, str]:
        """Every report file by its name in the output folder."""
        from .render import render_compare_html, render_html

        if self.fix is None:
            return {"before/audit.json": self.before.to_json(),
                    "before/report.html": render_html(self.before, plotlyjs=plotlyjs)}
        return {
            "before/audit.json": self.before.to_json(),
            "before/report.html": render_html(self.before, plotlyjs=plotlyjs),
            "after/audit.json": self.after.to_json(),
            "after/report.html": render_html(self.after, plotlyjs=plotlyjs),
            "compare.html": render_compare_html(self.before, self.after, gates=self.gates, plotlyjs=plotlyjs),
            "training_log.csv": self.training_log_csv(),
            "training_log.json": json.dumps(_finite(self.training_log()), indent=2, default=str),
        }

    def write(self, out: str | Path, *, plotlyjs: str = "inline") -> dict[str, Path]:
        """Write the reports into ``out`` as one unit (with a manifest) and remove the folder's
        ``STATUS`` file (which says what is missing while a run is unfinished)."""
        if not self.writer:
            return {}
        out = Path(out)
        run = {"command": "fix", "model": str(self.model_path), "steps": self.fix.steps if self.fix else 0,
               "guard_tripped": self.guard_tripped, "failed": self.failed, "nothing_to_fix": self.nothing_to_fix}
        model = self.model_path.name if self.model_path is not None and self.model_path.parent == out else None
        written = write_outputs(out, self.files(plotlyjs=plotlyjs), run=run, written=[model] if model else [])
        (out / STATUS_NAME).unlink(missing_ok=True)
        return written


def _uninformative(before: AuditResult) -> list:
    """``push_uninformative`` warnings: modalities whose probe (in the before-audit) is at
    chance, which the fix would push the model to depend on."""
    from .measuring.probe import uninformative_warnings

    return uninformative_warnings(before.probes)


def fix_and_audit(
    loaded: LoadedModel,
    data: Iterable[Any],
    modalities: Sequence[Modality],
    *,
    out: str | Path,
    val_data: Iterable[Any] | None = None,
    shift_data: Iterable[Any] | None = None,
    force: bool = False,
    options: FixOptions | None = None,
    audit_options: dict[str, Any] | None = None,
    output: OutputSpec | None = None,
    thresholds: Any = None,
    resume: bool = False,
    provenance: dict[str, Any] | None = None,
    resume_hint: str = "call again with resume=True",
    progress: Progress | None = None,
    **overrides: Any,
) -> FixReport:
    """Audit ``loaded.module``, fix it, save the fixed model into ``out`` in the input's
    format, audit the fixed model; return the :class:`FixReport` (call ``.write(out)``).

    Args:
        out: the output folder: refused up front when it holds the input model. Checkpoints
            go to ``out/checkpoints``; a ``STATUS`` file there says what is missing until the
            report is written (an interrupted run leaves it, with how to resume).
        val_data: the validation data of :func:`fix`, also the data of both audits (else
            ``data``).
        shift_data: shifted data (:func:`fix`'s): both audits report the accuracy on it.
        force: train even when the input's audit finds no modality ignored, unused or weak
            (without it the report then holds the input's audit alone: ``nothing_to_fix``).
        audit_options: audit keyword options (``samples``, ...); seed, device and label key
            default to the fix's.
        provenance: recorded in both audits (``data``: the audited data's ``path`` and
            ``sha256``; ``train_data``, ``factory``, ``preset``, ``output_key``, ...).
        resume_hint: the sentence of ``STATUS`` that says how to resume.
        overrides: :class:`FixOptions` fields.
    """
    opts = resolve_fix_options(options, overrides)
    out = check_fix_output(out, loaded.path)  # the rest is checked by _check_before_work
    join_group(device=opts.device)  # under torchrun: every rank trains (a no-op otherwise)
    return _fix_and_audit(
        loaded, data, modalities, out=out, val_data=val_data, shift_data=shift_data, force=force,
        opts=opts, audit_options=audit_options,
        output=output, thresholds=thresholds, resume=resume, provenance=provenance,
        resume_hint=resume_hint, progress=progress,
    )


def _check_before_work(opts: FixOptions, modalities: Sequence[Modality], data: Any, audited: Any,
                       audit_options: dict[str, Any] | None, out: Path, resume: bool) -> None:
    """What can be checked before the first step: the fix's options against the modalities,
    the audits' options (``audit_samples`` on the command line), at least 2 examples."""
    from .runtime._batch import split_batch
    from .runtime.options import AuditOptions, check_passes

    check_fix_setup(opts, modalities, out / "checkpoints", resume)
    known = {k: v for k, v in (audit_options or {}).items() if k in AuditOptions.__dataclass_fields__}
    try:
        AuditOptions().replace(**known)
        check_passes(known.get("samples", AuditOptions().samples), len(modalities))
    except ConfigError as exc:
        if exc.parameter != "samples":
            raise
        raise ConfigError(str(exc).replace("samples", "audit_samples", 1), parameter="audit_samples") from None
    for batches, what in ((data, "data"), (audited, "val_data")):
        if isinstance(batches, (list, tuple)):
            n = sum(split_batch(b, label_key=opts.label_key).size for b in batches[:2])
            if n < 2:
                raise ConfigError(
                    f"The {what} holds {n} example(s); fix and its audits need at least 2 (the noise "
                    "scale is a standard deviation over examples). Give more data.", parameter=what,
                )


def _fix_and_audit(loaded: LoadedModel, data: Iterable[Any], modalities: Sequence[Modality], *, out: Path,
                   val_data: Iterable[Any] | None, shift_data: Iterable[Any] | None, force: bool,
                   opts: FixOptions, audit_options: dict[str, Any] | None,
                   output: OutputSpec | None, thresholds: Any, resume: bool, provenance: dict[str, Any] | None,
                   resume_hint: str, progress: Progress | None) -> FixReport:
    """:func:`fix_and_audit` inside the process group (if any): every rank trains, rank 0
    alone audits and writes. Checked before any work; on a late error what the run wrote is
    removed (:func:`~biasscope.fixing.fix_folder.undo_on_error`)."""
    audited = val_data if val_data is not None else data
    if not isinstance(audited, (list, tuple)):
        audited = list(audited)
    _check_before_work(opts, modalities, data, audited, audit_options, out, resume)
    with undo_on_error(out, model_dest_name(loaded.path)):
        if is_writer():
            out.mkdir(parents=True, exist_ok=True)
            write_status(out, ["unfinished: starting", f"to finish: {resume_hint}"], [model_dest_name(loaded.path)])
        return _run_fix(loaded, data, audited, modalities, out=out, val_data=val_data, shift_data=shift_data,
                        force=force, opts=opts, audit_options=audit_options, output=output, thresholds=thresholds, resume=resume,
                        provenance=provenance, resume_hint=resume_hint, progress=progress)


def _run_fix(loaded: LoadedModel, data: Iterable[Any], audited: Any, modalities: Sequence[Modality], *, out: Path,
             val_data: Iterable[Any] | None, shift_data: Iterable[Any] | None, force: bool, opts: FixOptions, audit_options: dict[str, Any] | None,
             output: OutputSpec | None, thresholds: Any, resume: bool, provenance: dict[str, Any] | None,
             resume_hint: str, progress: Progress | None) -> FixReport:
    """The audit before, the fix, the save and the audit after (STATUS says where it is)."""
    report = progress or (lambda stage, done, total, info: None)
    kw = {"seed": opts.seed, "device": opts.device, "label_key": opts.label_key, **(audit_options or {})}
    if shift_data is not None and not isinstance(shift_data, (list, tuple)):
        shift_data = list(shift_data)
    kw.update(output=output, thresholds=thresholds, shift_data=shift_data,
              progress=lambda s, d, t, i=None: report(s, d, t, i or {}))
    write_status(out, ["unfinished: auditing the input model", "missing: the fixed model, training_log.*, before/, after/, compare.html", f"to finish: {resume_hint}"])
    before = _audit_on_writer("the audit of the input model", loaded.module, audited, modalities, kw)
    if not force and _nothing_to_fix(before):
        (out / STATUS_NAME).unlink(missing_ok=True)
        return FixReport(before, None, None, None, writer=is_writer())
    pushed = _uninformative(before) if before is not None else []
    if pushed:  # before training: the user may stop a fix that would push noise
        report("warnings", 1, 1, {"diagnostics": pushed})
    write_status(out, [f"unfinished: training (checkpoints in {out / 'checkpoints'})", "missing: the fixed model, training_log.*, before/, after/, compare.html", f"to finish: {resume_hint}"])
    try:
        result = fix(loaded.module, data, modalities, val_data=val_data, shift_data=shift_data, options=opts, output=output,
                     checkpoint_dir=out / "checkpoints", resume=resume, progress=report)
    except FixInterrupted as exc:
        write_status(out, [f"interrupted after {exc.result.steps} steps; the last checkpoint is in {out / 'checkpoints'}", "missing: the fixed model, training_log.*, before/, after/, compare.html", f"to finish: {resume_hint}"])
        raise
    with sync_point("the audit of the fixed model"):  # rank 0 saves and audits; the others wait
        model_path = out / model_dest_name(loaded.path).rstrip("/")
        if is_writer():
            # the old manifest goes before the model is replaced: never beside a newer model
            (out / MANIFEST_NAME).unlink(missing_ok=True)
            model_path = save_model(loaded, result.model, model_path)
            write_status(out, [f"unfinished: auditing the fixed model ({model_path.name} is written)", "missing: training_log.*, before/, after/, compare.html", f"to finish: {resume_hint}"])
            with local_only():  # the audit would otherwise shard across the waiting ranks
                after = audit(result.model, audited, modalities, **kw)  # see _audit_on_writer's hook
    if not is_writer():
        return FixReport(None, None, result, model_path, writer=False)
    common = {**(provenance or {}), "versions": _versions()}
    source = _model_info(loaded.path, loaded.kind)
    before = dataclasses.replace(before, provenance={**before.provenance, **common, "model": source})
    after = dataclasses.replace(
        after,
        provenance={**after.provenance, **common, "model": _model_info(model_path, loaded.kind),
                    "input_model": source, "fix": _fix_summary(result)},
        diagnostics=[*after.diagnostics, *pushed, *result.diagnostics],
    )
    return FixReport(before, after, result, model_path, _fix_gates(result, before, after))


def _nothing_to_fix(before: AuditResult | None) -> bool:
    """Whether the input's audit found no modality ignored, unused or weak (rank 0's answer
    on every rank under torchrun)."""
    found = before is not None and not before.failing("weak")
    if is_distributed():
        import torch

        found = bool(all_reduce_sum(torch.tensor([int(found)])).item())
    return found
