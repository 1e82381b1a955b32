"""``biasscope``: audit a multimodal classifier for ignored modalities, fix it, compare.

Start-up imports no torch: the commands import the library inside their bodies."""

from __future__ import annotations

import os
import sys


def _interrupted_at_startup(kind: type, value: BaseException, tb: object) -> None:
    """Ctrl-C while the command line is still importing: no traceback, exit 130."""
    if issubclass(kind, KeyboardInterrupt):
        os.write(2, b"interrupted\n")
        os._exit(130)
    sys.__excepthook__(kind, value, tb)  # type: ignore[arg-type]


if sys.excepthook is sys.__excepthook__:
    sys.excepthook = _interrupted_at_startup

from typing import Any, Optional  # noqa: E402

import typer  # noqa: E402

from ._common import console, quiet_interrupts, version_string  # noqa: E402


class _App(typer.Typer):
    """The ``biasscope`` program: until a command's body runs, Ctrl-C exits 130 quietly."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        quiet_interrupts()
        return super().__call__(*args, **kwargs)


app = _App(
    name="biasscope",
    help="Does your multimodal classifier ignore a modality? Audit it, fix it, gate CI on it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        console.print(version_string(), highlight=False)
        raise typer.Exit()


@app.callback()
def main(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Modality-bias diagnostics for multimodal PyTorch classifiers."""



from . import audit, compare, demo, fix, layers  # noqa: E402

app.command("audit")(audit.audit_command)
app.command("compare")(compare.compare_command)
app.command("demo")(demo.demo_command)
app.command("fix")(fix.fix_command)
app.command("layers")(layers.layers_command)

__all__ = ["app"]
