"""``biasscope demo``: the colored-digits loop (biased model, audit, fix, audit, compare)."""

from pathlib import Path

import typer

from . import _options as o
from ._common import ProgressDisplay, console, guarded, shown


def demo_command(
    out: Path = typer.Option(Path("biasscope-demo"), "--out", "-o", help="Output folder (the gallery is reports/demo)."),
    benchmark: str = typer.Option("colored", "--benchmark", help="colored (the colour is a pure shortcut) or both (the colour also carries part of the label: a brightness bit)."),
    fast: bool = typer.Option(False, "--fast", help="A few-second version: fewer examples and steps."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data, the models and every draw."),
    plotlyjs: str = typer.Option("inline", "--plotlyjs", help="inline (works offline) or cdn (small files, as in reports/)."),
    quiet: bool = o.Quiet,
    debug: bool = o.Debug,
) -> None:
    """Train a colour-shortcut model on the bundled colored digits, audit it, fix it with the
    `biasscope fix` defaults, audit again, and compare with an unbiased reference."""
    with guarded(debug):
        from rich.table import Table

        from biasscope.demo import run_demo
        from biasscope.render import compare_table

        with ProgressDisplay(quiet) as display:
            result = run_demo(benchmark=benchmark, fast=fast, seed=seed, progress=lambda stage, done, total, info=None: display(stage, done, total))
        result.write(out, plotlyjs=plotlyjs)

        console.print(compare_table(result.before, result.after))
        splits = [s for s in ("train", "val", "test_random", "test_gray") if s in result.accuracy["baseline"]]
        table = Table(title="Accuracy (the colour's shortcut holds 99% of the time in train/val; random at test)")
        for col in ("model", *splits):
            table.add_column(col.replace("test_random", "test (random colour)").replace("test_gray", "test (gray)"), justify="right" if col != "model" else "left")
        for name, acc in result.accuracy.items():
            table.add_row(name, *(f"{acc[s]:.3f}" for s in splits))
        console.print(table)
        console.print(f"[bold]before:[/] {shown(result.before.sentence)}\n[bold]after:[/]  {shown(result.after.sentence)}", highlight=False)
        console.print(f"lambda = {result.lambda_value:.4g} · reports in {shown(out)}/ (before, after, reference, compare.html)", highlight=False)
