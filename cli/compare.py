"""``biasscope compare``: two audits side by side, with CI gates as exit codes."""

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from biasscope.compare import check_comparable, evaluate_gates, parse_min_share
from biasscope.render import compare_table, write_compare_html
from biasscope.results import AuditResult

from . import _options as o
from ._common import EXIT_GATE, console, err_console, guarded
from .main import app


@app.command("compare")
def compare_command(
    before: Path = typer.Argument(..., help="audit.json before (e.g. of the original model)."),
    after: Path = typer.Argument(..., help="audit.json after (e.g. of the fixed model)."),
    fail_if_ignored: bool = typer.Option(False, "--fail-if-ignored", help="Exit 1 if any modality is still ignored after."),
    max_drop_accuracy: Optional[float] = typer.Option(None, "--max-drop-accuracy", help="Exit 1 if accuracy drops by more than X (e.g. 0.02)."),
    min_share: List[str] = typer.Option([], "--min-share", help="MODALITY=X: exit 1 if its share after is below X (repeatable)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the side-by-side HTML page here (e.g. compare.html)."),
    plotlyjs: str = typer.Option("inline", "--plotlyjs", help="inline or cdn."),
    debug: bool = o.Debug,
) -> None:
    """Compare BEFORE and AFTER audits; exit 1 when a gate fails, 2 on bad input."""
    with guarded(debug):
        a, b = AuditResult.load(before), AuditResult.load(after)
        gates = evaluate_gates(
            a, b,
            fail_if_ignored=fail_if_ignored,
            max_drop_accuracy=max_drop_accuracy,
            min_share=parse_min_share(min_share),
        )
        for warning in check_comparable(a, b):
            err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
        console.print(compare_table(a, b))
        for gate in gates:
            mark = "[green]PASS[/]" if gate.passed else "[bold red]FAIL[/]"
            console.print(f"{mark} {escape(gate.name)}: {escape(gate.detail)}", highlight=False)
        if out is not None:
            write_compare_html(a, b, out, plotlyjs=plotlyjs, gates=gates)
            console.print(f"comparison: {escape(str(out))}", highlight=False)
        if not all(g.passed for g in gates):
            raise typer.Exit(EXIT_GATE)
