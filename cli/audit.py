"""``biasscope audit``: measure how much a model depends on each modality; write the report."""

from pathlib import Path
from typing import List, Optional

import typer

from biasscope.errors import ConfigError
from biasscope.runtime.options import ATTRIBUTIONS, AuditOptions, check_choice

from . import _options as o
from ._common import (
    EXIT_GATE, ProgressDisplay, batch_size_setting, console, guarded, input_paths, load_inputs, model_source,
    pick, read_config, read_data, set_stage, shown,
)

_D = AuditOptions()


def _max_rows(value: Optional[str]) -> object:
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"max_rows must be a positive integer or auto (got {value!r}).", parameter="max_rows") from None


def _run_settings(cfg: object, fail_on: Optional[str], plotlyjs: Optional[str], batch_size: Optional[int]) -> tuple:
    """The run's settings that are not audit options: the gate, the page's plotly.js, the
    batch size (flag > config > default), each checked."""
    from biasscope.compare import FAIL_ON

    table = cfg.audit  # type: ignore[attr-defined]
    fail_on = pick(fail_on, cfg, "fail_on", None, table)
    if fail_on is not None:
        check_choice("fail_on", fail_on, FAIL_ON)
    plotlyjs = pick(plotlyjs, cfg, "plotlyjs", "inline", table)
    check_choice("plotlyjs", plotlyjs, ("inline", "cdn"))
    return fail_on, plotlyjs, batch_size_setting(batch_size, cfg, table)


def audit_command(
    model: Optional[str] = o.Model,
    data: Optional[str] = o.Data,
    shift_data: Optional[str] = typer.Option(None, "--shift-data", help="Shifted data (labelled; the suspected shortcut broken, or a later sample): the report shows the accuracy on it, and compare can gate on it."),
    modality: List[str] = o.Modalities,
    factory: Optional[str] = o.Factory,
    kind: Optional[str] = o.Kind,
    trust_pickle: bool = o.TrustPickle,
    hf_class: Optional[str] = o.HfClass,
    call: Optional[str] = o.Call,
    adapter: Optional[str] = o.Adapter,
    preset: Optional[str] = o.Preset,
    label_key: Optional[str] = o.LabelKey,
    batch_size: Optional[int] = o.BatchSize,
    limit: Optional[int] = o.Limit,
    output_key: Optional[str] = o.OutputKey,
    output_index: Optional[int] = o.OutputIndex,
    profile: Optional[str] = typer.Option(None, "--profile", help="quick (CI, monitoring: K=8, 5 shuffles, no Shapley/probe/attributions), standard (the defaults) or thorough (K=128, 30 shuffles, tensorization check); the options given win [default: standard]."),
    output_kind: Optional[str] = typer.Option(None, "--output-kind", help=f"What the output holds: auto (detected), logits, probs, log_probs, binary, multilabel or regression {o.default(_D.output_kind)}."),
    samples: Optional[int] = typer.Option(None, "--samples", "-k", help=f"Gaussian samples per example and modality {o.default(_D.samples)}."),
    scale: Optional[float] = typer.Option(None, "--scale", help=f"Noise scale s: z ~ N(0, s^2 sigma^2) per feature {o.default(_D.scale)}."),
    divergence: Optional[str] = typer.Option(None, "--divergence", help=f"kl or official (the paper code's BCE) {o.default(_D.divergence)}."),
    max_rows: Optional[str] = typer.Option(None, "--max-rows", help=f"Largest expanded batch run at once (or auto): lower it to bound memory {o.default(_D.max_rows)}."),
    permutation_repeats: Optional[int] = typer.Option(None, "--permutation-repeats", help=f"Shuffles per modality for the permutation score {o.default(_D.permutation_repeats)}."),
    no_shapley: bool = typer.Option(False, "--no-shapley", help="Skip the modality Shapley values."),
    tensorization: Optional[bool] = typer.Option(None, "--tensorization/--no-tensorization", help=f"Also run the joint-perturbation (tensorization) check: (M+1)K gradient-free passes per example more {o.default(_D.tensorization)}.", show_default=False),
    no_output_check: bool = typer.Option(False, "--no-output-check", help="Audit even an output that does not look like logits of the label classes."),
    no_probe: bool = typer.Option(False, "--no-probe", help="Skip probing each modality's representation for the label."),
    explain: Optional[int] = typer.Option(None, "--explain", help=f"Attribute this many examples inside the modality each depends on most; 0 skips {o.default(_D.explain)}."),
    attribution: Optional[str] = typer.Option(None, "--attribution", help=f"captum method of the attributions: {', '.join(ATTRIBUTIONS)} {o.default(_D.attribution)}."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Local Hugging Face tokenizer folder that decodes token ids into words in the attributions (nothing is downloaded)."),
    precision: Optional[str] = typer.Option(None, "--precision", help=f"Forward-pass precision on CUDA: fp32, bf16 or fp16 {o.default(_D.precision)}."),
    device: Optional[str] = o.Device,
    seed: Optional[int] = o.Seed,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder \\[default: ./biasscope-report]."),
    plotlyjs: Optional[str] = typer.Option(None, "--plotlyjs", help="inline (default: works offline) or cdn (small file)."),
    fail_on: Optional[str] = typer.Option(None, "--fail-on", help="Exit 1 when a modality is ignored in any sense (ignored, also unused) or ignored/weak (weak)."),
    config: Optional[Path] = o.Config,
    quiet: bool = o.Quiet,
    debug: bool = o.Debug,
) -> None:
    """Audit MODEL on DATA: per-modality functional entropy, Fisher and Poincare bounds,
    permutation and Shapley checks; writes report.html and audit.json, prints the verdict."""
    with guarded(debug):
        from biasscope.config import resolve_options
        from biasscope.report import AUDIT_FILES, audit_report, check_output_folder, torchrun_group, writing_stage

        cfg = read_config(config)
        options = resolve_options("audit", {
            "samples": samples, "scale": scale, "divergence": divergence, "max_rows": _max_rows(max_rows),
            "permutation_repeats": permutation_repeats, "device": device, "seed": seed,
            "label_key": label_key, "limit": limit, "precision": precision,
            "shapley": False if no_shapley else None, "tensorization": tensorization,
            "check_output": False if no_output_check else None, "probe": False if no_probe else None,
            "explain": explain, "output_kind": output_kind, "attribution": attribution, "profile": profile,
        }, cfg)
        fail_on, plotlyjs, size = _run_settings(cfg, fail_on, plotlyjs, batch_size)
        source, words = pick(data, cfg, "data"), _tokenizer(pick(tokenizer, cfg, "tokenizer", None, cfg.audit))
        out_dir = Path(pick(out, cfg, "out", "biasscope-report", cfg.audit))
        sources = input_paths(model_source(model, cfg), pick(factory, cfg, "factory"), source, cfg.path, pick(adapter, cfg, "adapter"), shift_data, pick(tokenizer, cfg, "tokenizer", None, cfg.audit))
        check_output_folder(out_dir, AUDIT_FILES, inputs=sources)
        inputs = load_inputs(
            model=model, config=cfg, factory=factory, kind=kind, trust_pickle=trust_pickle,
            hf_class=hf_class, modality=modality, preset=preset, label_key=options.label_key or "none",
            output_key=output_key, output_index=output_index, call=call, adapter=adapter, modalities_from_data=True,
        )
        batches, data_info = read_data(source, label_key=inputs.label_key, batch_size=size, limit=options.limit)
        shifted, shift_info = read_data(shift_data, label_key=inputs.label_key, batch_size=size, limit=None, what="shift-data") if shift_data else (None, None)
        # under torchrun every process measures its share; rank 0 alone shows, writes and prints
        with torchrun_group(options.device) as writer:
            with ProgressDisplay(quiet or not writer) as progress:
                report = audit_report(
                    inputs.loaded.module, batches, inputs.modalities, options=options,
                    output=inputs.output, thresholds=cfg.thresholds, progress=progress, tokenizer=words,
                    provenance={**inputs.provenance, "data": data_info, "shift_data": shift_info}, plotlyjs=plotlyjs, shift_data=shifted,
                )
            with writing_stage():
                if writer:
                    _write_and_print(report, out_dir)
        _gate(report, fail_on, writer)


def _gate(report: object, fail_on: Optional[str], writer: bool) -> None:
    """Exit 1 (saying why, from the writing process) when ``--fail-on`` fails."""
    gate = report.gate(fail_on)  # type: ignore[attr-defined]
    if gate is not None and not gate.passed:
        if writer:
            console.print(f"[bold red]FAIL[/] --fail-on {fail_on}: {shown(gate.detail)}", highlight=False)
        raise typer.Exit(EXIT_GATE)


def _tokenizer(path: Optional[str]) -> object:
    """The tokenizer that decodes token ids in the attributions (None: ids are shown)."""
    if path is None:
        return None
    from biasscope.measuring.explain import load_tokenizer

    set_stage(f"loading the tokenizer {path!r} (--tokenizer)")
    return load_tokenizer(path)


def _write_and_print(report: object, out_dir: Path) -> None:
    """Write the report folder as one unit, then print the summary and where it went."""
    set_stage(f"writing the report to {str(out_dir)!r}")
    paths = report.write(out_dir)
    console.print(_summary(report.result))
    console.print(
        f"report: {shown(str(paths['report.html']))}  json: {shown(str(paths['audit.json']))}",
        highlight=False,
    )


def _summary(result: object) -> object:
    from biasscope.render import audit_summary

    return audit_summary(result, width=console.width)
