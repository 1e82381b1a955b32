"""``biasscope fix``: fine-tune with ModDrop (and, with --lambda, the functional-entropy
regularizer), then audit again.
Parses the options, shows progress, maps the outcome to an exit code; the work is
:func:`biasscope.workflow.fix_and_audit`."""

import os
from pathlib import Path
from typing import Any, List, Optional

import typer

from biasscope.runtime.options import AuditOptions, FixOptions

from . import _options as o
from ._common import (
    ProgressDisplay, batch_size_setting, console, err_console, guarded, input_paths, load_inputs, pick, read_config,
    read_data, shown,
)

D = FixOptions()


class FixDisplay:
    """The audits' progress bars, and one bar over the fix steps with the latest numbers."""

    def __init__(self, quiet: bool) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.stages = ProgressDisplay(quiet)
        self.enabled = self.stages.enabled
        self.progress = Progress(
            TextColumn("fix"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[metrics]}"), console=err_console, transient=True,
        )
        self.task = None

    def __call__(self, stage: str, done: int, total: int, info: Optional[dict] = None) -> None:
        if stage == "warnings":  # before training (push_uninformative): printed even when quiet
            for d in (info or {}).get("diagnostics", []):
                err_console.print(f"[yellow]{d.severity}:[/] {shown(d.message)} {shown(d.fix)}", highlight=False)
            return
        if not self.enabled:
            return
        if stage != "fix":
            self.stages(stage, done, total)
            return
        if self.task is None:
            self.progress.start()
            self.task = self.progress.add_task("fix", total=total or None, metrics="")
        r = info or {}
        scores = " ".join(f"{k}={v:.3g}" for k, v in r.get("scores", {}).items())
        val = f" val_acc={r['val_accuracy']:.3f} proxy={r['val_proxy_accuracy']:.3f}" if "val_accuracy" in r else ""
        val += f" shifted={r['shift_accuracy']:.3f}" if "shift_accuracy" in r else ""
        metrics = f"loss={r.get('loss', 0):.4f} ce={r.get('ce', 0):.4f} reg={r.get('reg', 0):.4g} {scores}{val}"
        self.progress.update(self.task, completed=done, metrics=shown(metrics))

    def __enter__(self) -> "FixDisplay":
        self.stages.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.task is not None:
            self.progress.stop()
        self.stages.__exit__(*exc)


def _lambda(value: Any) -> Any:
    from biasscope.errors import ConfigError

    if value is None:
        return D.lambda_
    if value == "auto":
        return "auto"
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--lambda must be a number or auto, got {value!r}.") from None


def fix_command(
    model: Optional[str] = o.Model,
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Training data (file or factory)."),
    val: Optional[str] = typer.Option(None, "--val", help="Validation data: the guard, early stopping, best weights, the ModDrop target, and the before/after audits."),
    shift_data: Optional[str] = typer.Option(None, "--shift-data", help="Shifted data: labelled examples where the suspected shortcut is broken (or a later, other-source sample). fix keeps the weights with the best accuracy on it; the reports show it before and after."),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="Re-initialise every layer and train from scratch with the same ingredients (after measuring the input's reliance)."),
    force: bool = typer.Option(False, "--force", help="Train even when the input's audit finds no modality ignored, unused or weak."),
    modality: List[str] = o.Modalities,
    factory: Optional[str] = o.Factory,
    kind: Optional[str] = o.Kind,
    trust_pickle: bool = o.TrustPickle,
    hf_class: Optional[str] = o.HfClass,
    preset: Optional[str] = o.Preset,
    label_key: Optional[str] = o.LabelKey,
    batch_size: Optional[int] = o.BatchSize,
    limit: Optional[int] = o.Limit,
    output_key: Optional[str] = o.OutputKey,
    output_index: Optional[int] = o.OutputIndex,
    epochs: Optional[int] = typer.Option(None, "--epochs", help=f"Passes over the training data \\[default: {D.epochs}]."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Stop after this many optimisation steps."),
    lr: Optional[float] = typer.Option(None, "--lr", help=f"Learning rate \\[default: {D.lr:g}]."),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help=f"adam, adamw or sgd \\[default: {D.optimizer}]."),
    lambda_: Optional[str] = typer.Option(None, "--lambda", help=f"Weight of the functional-entropy regularizer, or auto (calibrated on the first batches); 0 trains with ModDrop alone, which did as well on both bundled benchmarks at half the cost \\[default: {D.lambda_:g}]."),
    estimator: Optional[str] = typer.Option(None, "--estimator", help=f"fisher (log-Sobolev bound) or poincare (variance variant) \\[default: {D.estimator}]."),
    form: Optional[str] = typer.Option(None, "--form", help=f"Form of the term \\[default: {D.form}]."),
    samples: Optional[int] = typer.Option(None, "--samples", "-k", help=f"Noise samples per example in the regularizer \\[default: {D.samples}]."),
    scale: Optional[float] = typer.Option(None, "--scale", help=f"Noise scale s \\[default: {D.scale:g}]."),
    modality_dropout: Optional[float] = typer.Option(None, "--modality-dropout", help=f"ModDrop rate on the --augment modality in the cross-entropy pass; 0 for the regularizer alone \\[default: {D.modality_dropout:g}]."),
    augment: Optional[str] = typer.Option(None, "--augment", help=f"Which modality ModDrop permutes: reliance (the one the model relies on most, measured by permutation), sensitivity (largest score at each step) or a modality name \\[default: {D.augment}]."),
    target_ratio: Optional[float] = typer.Option(None, "--target-ratio", help=f"With --lambda auto: the term's gradient norm as a multiple of the cross-entropy's \\[default: {D.target_ratio:g}]."),
    guard: Optional[bool] = typer.Option(None, "--guard/--no-guard", help="With --val: stop (exit 1, report written) when in-distribution accuracy falls while the decorrelated accuracy does not rise \\[default: on]."),
    guard_tolerance: Optional[float] = typer.Option(None, "--guard-tolerance", help=f"The guard's tolerance on both accuracies \\[default: {D.guard_tolerance:g}]."),
    max_drop_accuracy: Optional[float] = typer.Option(None, "--max-drop-accuracy", help="With --val: a hard bound on the in-distribution accuracy drop (exit 1 when exceeded)."),
    amp: bool = typer.Option(False, "--amp", help="Mixed precision on CUDA."),
    patience: Optional[int] = typer.Option(None, "--patience", help="Early stopping: validations without improvement."),
    restore_best: bool = typer.Option(False, "--restore-best", help="Keep the best validation weights, not the last (only when --val is free of the bias)."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help=f"Write a checkpoint every N steps \\[default: {D.checkpoint_every}]."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint in OUT/checkpoints."),
    audit_samples: Optional[int] = typer.Option(None, "--audit-samples", help=f"Samples per example in the before/after audits \\[default: {AuditOptions().samples}]."),
    device: Optional[str] = o.Device,
    seed: Optional[int] = o.Seed,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (not the input model's) \\[default: ./biasscope-fix]."),
    config: Optional[Path] = o.Config,
    quiet: bool = o.Quiet,
    debug: bool = o.Debug,
) -> None:
    """Fine-tune MODEL on --data with ModDrop on the relied-upon modality (and the
    functional-entropy regularizer with --lambda auto); write the
    model in its input format (never over the input), a training log, and audits before and
    after. Exit 1 when the result is not a success (the guard stopped it, or the reliance
    swapped; reports written); exit 0 without training when nothing is ignored or weak.
    On N processes: torchrun --nproc-per-node N -m biasscope fix ... (DDP; rank 0 writes)."""
    with guarded(debug):
        cfg = read_config(config)
        table = cfg.fix
        out_dir = _checked_out(cfg, table, out, model, factory, data, val, shift_data)
        flags = dict(epochs=epochs, max_steps=steps, lr=lr, optimizer=optimizer, estimator=estimator, form=form,
                     samples=samples, scale=scale, patience=patience, modality_dropout=modality_dropout, augment=augment,
                     target_ratio=target_ratio, checkpoint_every=checkpoint_every, guard_tolerance=guard_tolerance,
                     max_drop_accuracy=max_drop_accuracy, lambda_=lambda_, guard=guard, amp=amp or None,
                     restore_best=restore_best or None, from_scratch=from_scratch or None, device=device, seed=seed)
        options = _fix_options(cfg, table, flags)
        size = batch_size_setting(batch_size, cfg, table)
        inputs = load_inputs(
            model=model, config=cfg, factory=factory, kind=kind, trust_pickle=trust_pickle,
            hf_class=hf_class, modality=modality, preset=preset, label_key=label_key,
            output_key=output_key, output_index=output_index,
        )
        options = options.replace(label_key=inputs.label_key)
        train, train_info = read_data(pick(data, cfg, "data", None, table), label_key=inputs.label_key, batch_size=size, limit=pick(limit, cfg, "limit"))
        (val_batches, val_info), (shift_batches, shift_info) = (
            _held(pick(v, cfg, key, None, table), inputs.label_key, size, flag) for v, key, flag in ((val, "val", "val"), (shift_data, "shift_data", "shift-data")))
        provenance = {"data": val_info or train_info, "train_data": train_info, "val_data": val_info, "shift_data": shift_info, "factory": pick(factory, cfg, "factory"),
                      "preset": pick(preset, cfg, "preset"), "output_key": inputs.output.key, "output_index": inputs.output.index}
        audit_options = {"samples": pick(audit_samples, cfg, "audit_samples", AuditOptions().samples, table)}
        report = _run(inputs, train, (val_batches, shift_batches), out_dir, options, audit_options, provenance, resume=resume, quiet=quiet, force=force)
        _finish(report, out_dir, options)


def _held(source: Optional[str], label_key: Optional[str], size: int, flag: str) -> tuple:
    """The batches and provenance of --val or --shift-data (None, None when not given)."""
    if not source:
        return None, None
    return read_data(source, label_key=label_key, batch_size=size, limit=None, what=flag)


def _checked_out(cfg: Any, table: dict, out, model, factory, data, val, shift) -> Path:
    """The output folder, checked before any work: writable, no input, and not the input
    model's own folder."""
    from biasscope.report import check_output_folder
    from biasscope.workflow import check_fix_output

    out_dir = Path(pick(out, cfg, "out", "biasscope-fix", table))
    model_path = pick(model, cfg, "model")
    sources = input_paths(model_path, pick(factory, cfg, "factory"), pick(data, cfg, "data", None, table),
                          pick(val, cfg, "val", None, table), pick(shift, cfg, "shift_data", None, table), cfg.path)
    if model_path is None:
        return check_output_folder(out_dir, inputs=sources)
    return check_fix_output(out_dir, model_path, sources)


def _fix_options(cfg: Any, table: dict, flags: dict) -> FixOptions:
    """FixOptions from the flags given, else the [fix] table, else the config's top level,
    else the defaults (:func:`biasscope.config.resolve_options`); a --lambda given as text
    (the flag, or a string in the config) is read by :func:`_lambda`."""
    from biasscope.config import resolve_options

    raw = flags.get("lambda_")
    if raw is None:
        raw = pick(None, cfg, "lambda", None, table)
    return resolve_options("fix", {**flags, "lambda_": None if raw is None else _lambda(raw)}, cfg)


def _run(inputs: Any, train: list, held: tuple, out_dir: Path, options: FixOptions, audit_options: dict,
         provenance: dict, *, resume: bool, quiet: bool, force: bool) -> Any:
    """fix_and_audit with the progress display; an interrupt exits 130 with where to resume."""
    from biasscope.fixing.fix import FixInterrupted
    from biasscope.workflow import fix_and_audit

    quiet = quiet or os.environ.get("RANK", "0") != "0"  # under torchrun rank 0 alone shows progress
    try:
        with FixDisplay(quiet) as display:
            return fix_and_audit(
                inputs.loaded, train, inputs.modalities, out=out_dir, val_data=held[0], shift_data=held[1],
                force=force, options=options,
                audit_options=audit_options, output=inputs.output, thresholds=inputs.config.thresholds,
                resume=resume, provenance=provenance, progress=display,
                resume_hint="run the same biasscope fix command again with --resume",
            )
    except FixInterrupted as exc:
        err_console.print(
            f"[yellow]interrupted after {exc.result.steps} steps[/]; the last checkpoint is in "
            f"{shown(out_dir / 'checkpoints')} ({shown(out_dir / 'STATUS')} says what is missing): run the same "
            "command with --resume to continue.", highlight=False,
        )
        raise typer.Exit(130) from None


def _finish(report: Any, out_dir: Path, options: FixOptions) -> None:
    """Write the report folder and show the summary: rank 0 alone under torchrun; exit 1
    when the result is not a success (the guard tripped, or the reliance swapped)."""
    if report.writer:
        report.write(out_dir)
        _show(report, out_dir, options)
    if report.failed:
        label = "guard" if report.guard_tripped else "not a success"
        err_console.print(f"[bold red]{label}:[/] {shown(report.message)}", highlight=False)
        raise typer.Exit(1)


def _show(report: Any, out_dir: Path, options: FixOptions) -> None:
    from biasscope.render import compare_table

    r = report.fix
    if r is None:
        console.print(
            f"nothing to fix: the audit finds no modality ignored, unused or weak ({shown(report.before.sentence)}); "
            f"no training. Its report: {shown(out_dir / 'before' / 'report.html')}. --force trains anyway.", highlight=False)
        return
    how = (
        "auto: the term's gradient norm = the cross-entropy's" if options.lambda_ == "auto"
        else "the regularizer is off; --lambda auto turns it on" if r.lambda_value == 0 else "given"
    )
    console.print(f"lambda = {r.lambda_value:.4g} ({how}), {r.steps} steps on {shown(r.device)}", highlight=False)
    t = r.target or {}
    reliance = ", ".join(f"{k} {v:.3g}" for k, v in (t.get("reliance") or {}).items())
    console.print(f"ModDrop target: {shown(t.get('modality') or ('every modality' if t.get('rule') == 'all' else 'per step'))} ({shown(t.get('rule'))}; reliance, nats: {shown(reliance)})", highlight=False)
    console.print(f"[bold]assumption:[/] {shown(r.assumption)}", highlight=False)
    if report.before.shift_accuracy is not None:
        console.print(f"accuracy on the shifted data: {report.before.shift_accuracy:.3f} -> {report.after.shift_accuracy:.3f}", highlight=False)
    for d in r.diagnostics:
        if d.code not in ("fix_guard_tripped", "fix_swapped_reliance"):
            err_console.print(f"[yellow]{d.severity}:[/] {shown(d.message)}", highlight=False)
    console.print(compare_table(report.before, report.after))
    console.print(f"[bold]before:[/] {shown(report.before.sentence)}\n[bold]after:[/]  {shown(report.after.sentence)}", highlight=False)
    console.print(f"model: {shown(report.model_path)}  log: {shown(out_dir / 'training_log.csv')}  comparison: {shown(out_dir / 'compare.html')}", highlight=False)
