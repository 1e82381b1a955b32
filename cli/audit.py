"""``biasscope audit``: measure how much a model depends on each modality; write the report."""

from pathlib import Path
from typing import List, Optional

import typer

from biasscope import audit
from biasscope.errors import ConfigError
from rich.markup import escape

from biasscope._files import write_atomic
from biasscope.render import audit_summary, render_html

from . import _options as o
from ._common import EXIT_GATE, ProgressDisplay, console, guarded, load_inputs, pick, read_config, read_data
from .main import app

FAIL_ON = {"ignored": ("ignored",), "weak": ("ignored", "weak")}


@app.command("audit")
def audit_command(
    model: Optional[str] = o.Model,
    data: Optional[str] = o.Data,
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
    samples: Optional[int] = typer.Option(None, "--samples", "-k", help="Gaussian samples per example and modality \\[default: 32]."),
    scale: Optional[float] = typer.Option(None, "--scale", help="Noise scale s: z ~ N(0, s^2 sigma^2) per feature \\[default: 1.0]."),
    divergence: Optional[str] = typer.Option(None, "--divergence", help="kl (default) or official (the paper code's BCE)."),
    max_rows: Optional[int] = typer.Option(None, "--max-rows", help="Largest expanded batch run at once: lower it to bound memory \\[default: 4096]."),
    permutation_repeats: Optional[int] = typer.Option(None, "--permutation-repeats", help="Shuffles per modality for the permutation score \\[default: 10]."),
    no_shapley: bool = typer.Option(False, "--no-shapley", help="Skip the modality Shapley values."),
    device: Optional[str] = o.Device,
    seed: Optional[int] = o.Seed,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder \\[default: ./biasscope-report]."),
    plotlyjs: Optional[str] = typer.Option(None, "--plotlyjs", help="inline (default: works offline) or cdn (small file)."),
    fail_on: Optional[str] = typer.Option(None, "--fail-on", help="Exit 1 when a modality is ignored (ignored) or ignored/weak (weak)."),
    config: Optional[Path] = o.Config,
    quiet: bool = o.Quiet,
    debug: bool = o.Debug,
) -> None:
    """Audit MODEL on DATA: per-modality functional entropy, Fisher and Poincare bounds,
    permutation and Shapley checks; writes report.html and audit.json, prints the verdict."""
    with guarded(debug):
        cfg = read_config(config)
        table = cfg.audit
        fail_on = pick(fail_on, cfg, "fail_on", None, table)
        if fail_on is not None and fail_on not in FAIL_ON:
            raise ConfigError(f"--fail-on must be 'ignored' or 'weak', got {fail_on!r}.")
        plotlyjs = pick(plotlyjs, cfg, "plotlyjs", "inline", table)
        if plotlyjs not in ("inline", "cdn"):
            raise ConfigError(f"--plotlyjs must be 'inline' or 'cdn', got {plotlyjs!r}.")
        inputs = load_inputs(
            model=model, config=cfg, factory=factory, kind=kind, trust_pickle=trust_pickle,
            hf_class=hf_class, modality=modality, preset=preset, label_key=label_key,
            output_key=output_key, output_index=output_index,
        )
        batches, data_info = read_data(
            pick(data, cfg, "data"),
            label_key=inputs.label_key,
            batch_size=pick(batch_size, cfg, "batch_size", 64),
            limit=pick(limit, cfg, "limit"),
        )
        with ProgressDisplay(quiet) as progress:
            result = audit(
                inputs.loaded.module,
                batches,
                inputs.modalities,
                samples=pick(samples, cfg, "samples", 32, table),
                scale=pick(scale, cfg, "scale", 1.0, table),
                seed=pick(seed, cfg, "seed", 0, table),
                device=pick(device, cfg, "device", "auto", table),
                divergence=pick(divergence, cfg, "divergence", "kl", table),
                label_key=inputs.label_key,
                output=inputs.output,
                max_rows=pick(max_rows, cfg, "max_rows", 4096, table),
                thresholds=cfg.thresholds,
                permutation_repeats=pick(permutation_repeats, cfg, "permutation_repeats", 10, table),
                shapley=not no_shapley and table.get("shapley", True),
                progress=progress,
            )
        result.provenance.update(inputs.provenance, data=data_info)
        out_dir = Path(pick(out, cfg, "out", "biasscope-report", table))
        html = render_html(result, plotlyjs=plotlyjs)  # render both before writing either
        json_path = result.save(out_dir / "audit.json")
        html_path = write_atomic(out_dir / "report.html", html)
        console.print(audit_summary(result, width=console.width))
        console.print(f"report: {escape(str(html_path))}  json: {escape(str(json_path))}", highlight=False)
        failing = [m for m in result.modalities if fail_on is not None and m.verdict in FAIL_ON[fail_on]]
        if failing:
            names = ", ".join(f"{m.name} is {m.verdict}" for m in failing)
            console.print(f"[bold red]FAIL[/] --fail-on {fail_on}: {escape(names)}", highlight=False)
            raise typer.Exit(EXIT_GATE)
