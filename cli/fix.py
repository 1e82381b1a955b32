"""``biasscope fix``: fine-tune with the functional-entropy regularizer, then audit again."""

import csv
import io
import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape


from . import _options as o
from ._common import ProgressDisplay, console, err_console, guarded, load_inputs, pick, read_config, read_data
from .main import app


class TrainingDisplay:
    """One progress bar over the steps, with the latest loss, CE, term and scores."""

    def __init__(self, quiet: bool, total: Optional[int]) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.enabled = not quiet and err_console.is_terminal
        self.progress = Progress(
            TextColumn("fix"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[metrics]}"), console=err_console, transient=True,
        )
        self.task = self.progress.add_task("fix", total=total, metrics="")

    def __call__(self, *args) -> None:
        record = args[-1] if len(args) != 1 else args[0]  # (record) or (stage, done, total, record)
        if not self.enabled:
            return
        scores = " ".join(f"{k}={v:.3g}" for k, v in record["scores"].items())
        val = f" val_acc={record['val_accuracy']:.3f}" if "val_accuracy" in record else ""
        self.progress.update(
            self.task, completed=record["step"],
            metrics=f"loss={record['loss']:.4f} ce={record['ce']:.4f} reg={record['reg']:.4g} {scores}{val}",
        )

    def __enter__(self) -> "TrainingDisplay":
        if self.enabled:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.progress.stop()


def _log_csv(history: list) -> str:
    names = sorted({k for r in history for k in r.get("scores", {})})
    cols = ["step", "epoch", "loss", "ce", "reg", "lambda", *[f"score_{n}" for n in names], "val_loss", "val_accuracy"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    writer.writeheader()
    for r in history:
        writer.writerow({**r, **{f"score_{k}": v for k, v in r.get("scores", {}).items()}})
    return buf.getvalue()


def _output_path(out: Path, loaded) -> Path:
    if loaded.kind == "hf":
        return out / "model"
    return out / f"model{loaded.path.suffix or '.pt'}"


@app.command("fix")
def fix_command(
    model: Optional[str] = o.Model,
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Training data (file or factory)."),
    val: Optional[str] = typer.Option(None, "--val", help="Validation data: early stopping, best weights, and the before/after audits."),
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
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Passes over the training data \\[default: 10]."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Stop after this many optimisation steps."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate \\[default: 1e-3]."),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help="adam (default), adamw or sgd."),
    lambda_: Optional[str] = typer.Option(None, "--lambda", help="Weight of the regularizer, or auto (calibrated on the first batches) \\[default: auto]."),
    estimator: Optional[str] = typer.Option(None, "--estimator", help="fisher (log-Sobolev bound, default) or poincare (variance variant)."),
    form: Optional[str] = typer.Option(None, "--form", help="Form of the term: log_share (default, scale-free), inverse (the paper's ||1/I||_2), log_inverse, mean_log."),
    samples: Optional[int] = typer.Option(None, "--samples", "-k", help="Noise samples per example in the regularizer \\[default: 4]."),
    scale: Optional[float] = typer.Option(None, "--scale", help="Noise scale s \\[default: 1.0]."),
    modality_dropout: Optional[float] = typer.Option(None, "--modality-dropout", help="ModDrop rate on the --augment modality in the cross-entropy pass \\[default: 0.5; 0 for the regularizer alone]."),
    augment: Optional[str] = typer.Option(None, "--augment", help="Which modality ModDrop permutes: dominant (largest score at each step, default) or a modality name."),
    target_ratio: Optional[float] = typer.Option(None, "--target-ratio", help="With --lambda auto: the term's gradient norm as a multiple of the cross-entropy's \\[default: 1.0]."),
    amp: bool = typer.Option(False, "--amp", help="Mixed precision on CUDA."),
    patience: Optional[int] = typer.Option(None, "--patience", help="Early stopping: validations without improvement."),
    restore_best: bool = typer.Option(False, "--restore-best", help="Keep the best validation weights, not the last (only when --val is free of the bias)."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="Write a checkpoint every N steps \\[default: 50]."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint in OUT/checkpoints."),
    audit_samples: int = typer.Option(32, "--audit-samples", help="Samples per example in the before/after audits."),
    device: Optional[str] = o.Device,
    seed: Optional[int] = o.Seed,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder \\[default: ./biasscope-fix]."),
    config: Optional[Path] = o.Config,
    quiet: bool = o.Quiet,
    debug: bool = o.Debug,
) -> None:
    """Fine-tune MODEL on --data with the functional-entropy regularizer; write the model in its
    input format (never over the input), a training log, and audits before and after."""
    with guarded(debug):
        from biasscope import audit
        from biasscope.errors import ConfigError
        from biasscope.fix import FixInterrupted, fix
        from biasscope.loading import save_model
        from biasscope.render import compare_table, write_compare_html, write_html
        from biasscope.report import write_atomic
        cfg = read_config(config)
        table = cfg.fix
        inputs = load_inputs(
            model=model, config=cfg, factory=factory, kind=kind, trust_pickle=trust_pickle,
            hf_class=hf_class, modality=modality, preset=preset, label_key=label_key,
            output_key=output_key, output_index=output_index,
        )
        size = pick(batch_size, cfg, "batch_size", 64, table)
        train, train_info = read_data(pick(data, cfg, "data", None, table), label_key=inputs.label_key, batch_size=size, limit=pick(limit, cfg, "limit"))
        val_source = pick(val, cfg, "val", None, table)
        val_batches = read_data(val_source, label_key=inputs.label_key, batch_size=size, limit=None)[0] if val_source else None
        lam = pick(lambda_, cfg, "lambda", "auto", table)
        if lam != "auto":
            try:
                lam = float(lam)
            except ValueError:
                raise ConfigError(f"--lambda must be a number or auto, got {lam!r}.") from None
        out_dir = Path(pick(out, cfg, "out", "biasscope-fix", table))
        dev = pick(device, cfg, "device", "auto", table)
        run_seed = pick(seed, cfg, "seed", 0, table)
        audit_data = val_batches or train
        common = dict(label_key=inputs.label_key, output=inputs.output, device=dev, seed=run_seed)
        with ProgressDisplay(quiet) as progress:
            before = audit(inputs.loaded.module, audit_data, inputs.modalities, samples=audit_samples, thresholds=cfg.thresholds, progress=progress, **common)
        options = {k: v for k, v in dict(
            epochs=pick(epochs, cfg, "epochs", None, table), max_steps=pick(steps, cfg, "steps", None, table),
            lr=pick(lr, cfg, "lr", None, table), optimizer=pick(optimizer, cfg, "optimizer", None, table),
            estimator=pick(estimator, cfg, "estimator", None, table), form=pick(form, cfg, "form", None, table),
            samples=pick(samples, cfg, "samples", None, table), scale=pick(scale, cfg, "scale", None, table),
            patience=pick(patience, cfg, "patience", None, table),
            modality_dropout=pick(modality_dropout, cfg, "modality_dropout", None, table),
            augment=pick(augment, cfg, "augment", None, table),
            target_ratio=pick(target_ratio, cfg, "target_ratio", None, table),
            checkpoint_every=pick(checkpoint_every, cfg, "checkpoint_every", None, table),
        ).items() if v is not None}
        total = options.get("max_steps") or options.get("epochs", fix.__kwdefaults__["epochs"]) * len(train)
        try:
            with TrainingDisplay(quiet, total) as shown:
                result = fix(
                    inputs.loaded.module, train, inputs.modalities, val_data=val_batches, lambda_=lam,
                    amp=amp or bool(table.get("amp", False)), checkpoint_dir=out_dir / "checkpoints",
                    restore_best=restore_best or bool(table.get("restore_best", False)),
                    resume=resume, progress=shown, **common, **options,
                )
        except FixInterrupted as exc:
            err_console.print(
                f"[yellow]interrupted after {exc.result.steps} steps[/]; the last checkpoint is in "
                f"{out_dir / 'checkpoints'}: run the same command with --resume to continue."
            )
            raise typer.Exit(130) from None
        model_path = save_model(inputs.loaded, result.model, _output_path(out_dir, inputs.loaded))
        write_atomic(out_dir / "training_log.csv", _log_csv(result.history))
        write_atomic(out_dir / "training_log.json", json.dumps({
            "lambda": result.lambda_value, "calibration": result.calibration, "steps": result.steps,
            "best_step": result.best_step, "stopped_early": result.stopped_early, "device": result.device,
            "settings": result.settings, "history": result.history,
        }, indent=2, default=str))
        with ProgressDisplay(quiet) as progress:
            after = audit(result.model, audit_data, inputs.modalities, samples=audit_samples, thresholds=cfg.thresholds, progress=progress, **common)
        for name, res in (("before", before), ("after", after)):
            res.provenance.update(inputs.provenance, data=train_info if val_source is None else {"path": val_source})
            res.save(out_dir / name / "audit.json")
            write_html(res, out_dir / name / "report.html")
        write_compare_html(before, after, out_dir / "compare.html")
        how = "auto: the term's gradient norm = the cross-entropy's" if lam == "auto" else "given"
        console.print(f"lambda = {result.lambda_value:.4g} ({how}), {result.steps} steps on {result.device}", highlight=False)
        console.print(compare_table(before, after))
        console.print(f"[bold]before:[/] {escape(before.sentence)}\n[bold]after:[/]  {escape(after.sentence)}", highlight=False)
        console.print(f"model: {model_path}  log: {out_dir / 'training_log.csv'}  comparison: {out_dir / 'compare.html'}", highlight=False)
