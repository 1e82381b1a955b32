"""``biasscope``: audit a multimodal classifier for ignored modalities, fix it, compare."""

import os
import sys
from typing import Optional

import typer

from ._common import console, version_string

app = typer.Typer(
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
    # like `python -m`: factories and pickled models' classes import from the working folder
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())


from . import audit as _audit  # noqa: E402  (the commands register themselves on ``app``)
from . import compare as _compare  # noqa: E402
from . import demo as _demo  # noqa: E402
from . import fix as _fix  # noqa: E402
from . import layers as _layers  # noqa: E402

__all__ = ["app"]
