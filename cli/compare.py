"""``biasscope compare``: two audits side by side, with CI gates as exit codes."""

from pathlib import Path
from typing import List, Optional

import typer

from . import _options as o
from ._common import EXIT_GATE, console, err_console, guarded, set_stage, shown


def _headline_text(status: str, failed: list, ungated: dict) -> str:
    if status == "failed":
        return f"[bold red]FAILED[/]: {shown(', '.join(failed))}"
    concerns = ", ".join(f"{n} is {v}" for n, v in ungated.items())
    if status == "no_gates":
        note = f"; not gated: {shown(concerns)}" if concerns else ""
        return f"[yellow]no gates asked[/] (pass --fail-if-ignored, --fail-if-weak, --min-share...){note}"
    if status == "passed_ungated":
        return (
            f"[yellow]gates passed, but not gated:[/] {shown(concerns)} "
            "(add --fail-if-weak / --fail-if-ignored to gate it)"
        )
    return "[green]PASSED[/]: every gate passed and no modality is ignored or weak"


def compare_command(
    before: Path = typer.Argument(..., help="audit.json before (e.g. of the original model)."),
    after: Path = typer.Argument(..., help="audit.json after (e.g. of the fixed model)."),
    fail_if_ignored: bool = typer.Option(False, "--fail-if-ignored", help="Exit 1 if any modality is still ignored (in any sense, also unused) after."),
    fail_if_weak: bool = typer.Option(False, "--fail-if-weak", help="Exit 1 if any modality is still weak or ignored after."),
    max_drop_accuracy: Optional[float] = typer.Option(None, "--max-drop-accuracy", help="Exit 1 if accuracy drops by more than X, in [0, 1] (e.g. 0.02)."),
    max_drop_shift_accuracy: Optional[float] = typer.Option(None, "--max-drop-shift-accuracy", help="Exit 1 if the accuracy on the shifted data (both audits run with --shift-data) drops by more than X."),
    min_share: List[str] = typer.Option([], "--min-share", help="MODALITY=X: exit 1 if its sensitivity share after is below X (repeatable)."),
    min_reliance_share: List[str] = typer.Option([], "--min-reliance-share", help="MODALITY=X: exit 1 if its reliance share (of the permutation loss increase) after is below X (repeatable)."),
    allow_different_data: bool = typer.Option(False, "--allow-different-data", help="Compare audits whose data differ (their sha256); refused otherwise."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the side-by-side HTML page here (e.g. compare.html)."),
    plotlyjs: str = typer.Option("inline", "--plotlyjs", help="inline or cdn."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the gates and both audits' verdicts and shares as JSON here (schema: biasscope/results/schemas/compare.schema.json)."),
    debug: bool = o.Debug,
) -> None:
    """Compare BEFORE and AFTER audits; exit 1 when a gate fails, 2 on bad input."""
    with guarded(debug):
        from biasscope.errors import DataLoadError
        from biasscope.compare import check_comparable, compare_gates, headline, load_audit, parse_min_share
        from biasscope.runtime.options import check_choice
        from biasscope.report import check_output_file

        check_choice("plotlyjs", plotlyjs, ("inline", "cdn"))
        shares = parse_min_share(min_share, parameter="min_share")
        reliance = parse_min_share(min_reliance_share, parameter="min_reliance_share")
        for path in (out, json_out):
            if path is not None:
                check_output_file(path, inputs=[before, after])
        set_stage("reading the audits")
        a, b = load_audit(before), load_audit(after)
        try:  # a field of the wrong type surfaces here, where the values are read
            gates = compare_gates(
                a, b, fail_if_ignored=fail_if_ignored, fail_if_weak=fail_if_weak,
                max_drop_accuracy=max_drop_accuracy, max_drop_shift_accuracy=max_drop_shift_accuracy, min_share=shares, min_reliance_share=reliance,
                allow_different_data=allow_different_data,
            )
            # compare_gates already refused audits that cannot be compared; this call is for the
            # warnings it returns (differing settings, possibly different data), which it drops
            warnings = check_comparable(a, b, allow_different_data=allow_different_data)
            for warning in warnings:
                err_console.print(f"[yellow]warning:[/] {shown(warning)}", highlight=False)
            from biasscope.render import compare_table, write_compare_html

            console.print(compare_table(a, b))
            for gate in gates:
                mark = "[green]PASS[/]" if gate.passed else "[bold red]FAIL[/]"
                console.print(f"{mark} {shown(gate.name)}: {shown(gate.detail)}", highlight=False)
            levels = ["weak"] if fail_if_weak else (["ignored"] if fail_if_ignored else [])
            head = headline(gates, b, gated_levels=levels)
            console.print(_headline_text(head.status, head.failed, head.ungated), highlight=False)
        except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError) as exc:
            raise DataLoadError(
                f"{str(before)!r} or {str(after)!r} holds a value of the wrong type for an audit "
                f"({type(exc).__name__}: {str(exc)[:160]}); give audit.json files written by "
                "`biasscope audit`, unedited."
            ) from None
        if out is not None:
            write_compare_html(a, b, out, plotlyjs=plotlyjs, gates=gates)
            console.print(f"comparison: {shown(str(out))}", highlight=False)
        if json_out is not None:
            from biasscope.compare import comparison_document, write_comparison_json

            document = comparison_document(a, b, gates, head, before_path=str(before), after_path=str(after), warnings=warnings)
            write_comparison_json(json_out, document)
        if head.status == "failed":
            raise typer.Exit(EXIT_GATE)
