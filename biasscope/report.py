"""The audit workflow as the CLI runs it, in the library: audit, render, gate, write the
report folder as one unit. ``biasscope audit`` only parses its flags, shows progress and
maps errors to exit codes around these calls."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .runtime._files import (
    MANIFEST_NAME, check_output_file, check_output_folder, write_atomic, write_outputs,
)
from .compare import Gate, fail_on_gate
from .runtime.options import AuditOptions
from .results import AuditResult

__all__ = [
    "AUDIT_FILES",
    "MANIFEST_NAME",
    "AuditReport",
    "audit_report",
    "check_output_file",
    "check_output_folder",
    "data_provenance",
    "read_manifest",
    "torchrun_group",
    "writing_stage",
    "write_atomic",
    "write_outputs",
]

#: the files an audit report folder holds (beside the manifest)
AUDIT_FILES = ("audit.json", "report.html")


@dataclass(frozen=True)
class AuditReport:
    """An audit's result with its rendered HTML page, ready to be written."""

    result: AuditResult
    html: str

    def files(self) -> dict[str, str]:
        return {"audit.json": self.result.to_json(), "report.html": self.html}

    def write(self, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
        """Write audit.json and report.html into ``out_dir`` as one unit (staged, renamed,
        the manifest ``biasscope-manifest.json`` last). Returns the written paths."""
        folder = check_output_folder(out_dir, AUDIT_FILES)
        from . import __version__

        run = {"command": "audit", "biasscope": __version__, "pid": os.getpid()}
        return write_outputs(folder, self.files(), run=run)

    def gate(self, fail_on: str | None) -> Gate | None:
        """The ``fail_on`` gate (``"ignored"`` or ``"weak"``), or None when not asked."""
        return None if fail_on is None else fail_on_gate(self.result, fail_on)


def _run_audit(
    model: Any,
    data: Iterable[Any],
    modalities: Sequence[Any] | None,
    options: AuditOptions,
    **kw: Any,
) -> AuditResult:
    from .auditing.audit import audit

    return audit(model, data, modalities, options=options, **kw)


def audit_report(
    model: Any,
    data: Iterable[Any],
    modalities: Sequence[Any] | None = None,
    *,
    options: AuditOptions | None = None,
    output: Any = None,
    thresholds: Any = None,
    progress: Callable[..., None] | None = None,
    tokenizer: Any = None,
    provenance: dict[str, Any] | None = None,
    plotlyjs: str = "inline",
    title: str | None = None,
    shift_data: Iterable[Any] | None = None,
    **overrides: Any,
) -> AuditReport:
    """Audit ``model`` (see :func:`biasscope.audit`) and render its report page.

    Args:
        modalities: as for :func:`biasscope.audit` (None: the inputs the forward takes).
        options: the audit's options; ``overrides`` (AuditOptions fields) change some of them.
        tokenizer: decodes token ids in the attributions (e.g. :func:`biasscope.measuring.explain.load_tokenizer`).
        provenance: added to the result's provenance (e.g. the model's and data's paths and
            sha256).
        plotlyjs: ``"inline"`` (the page works offline) or ``"cdn"``.
        shift_data: shifted data whose accuracy the result reports (:func:`biasscope.audit`).
    Returns:
        An :class:`AuditReport`; ``.write(out_dir)`` writes it.
    """
    from .runtime.options import check_choice
    from .render import render_html

    check_choice("plotlyjs", plotlyjs, ("inline", "cdn"))
    options = (options or AuditOptions()).replace(**overrides) if overrides else (options or AuditOptions())
    result = _run_audit(
        model, data, modalities, options, output=output, thresholds=thresholds, progress=progress,
        tokenizer=tokenizer, shift_data=shift_data,
    )
    if provenance:
        result = replace(result, provenance={**result.provenance, **provenance})
    return AuditReport(result, render_html(result, plotlyjs=plotlyjs, title=title))


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest of a report folder when every file it lists is present with its
    recorded sha256 (a complete output), else None."""
    import hashlib
    import json

    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
        for name, digest in manifest["files"].items():
            if hashlib.sha256((folder / name).read_bytes()).hexdigest() != digest:
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return manifest


def data_provenance(source: str | os.PathLike[str]) -> dict[str, Any]:
    """What an audit records of its data: the path (or factory string) and, for a file or
    folder, its sha256 (the fingerprint ``compare`` checks)."""
    from .io._sources import fingerprint

    info: dict[str, Any] = {"path": str(source)}
    if Path(source).exists():
        info["sha256"] = fingerprint(source)
    return info


@contextmanager
def torchrun_group(device: str = "auto") -> Iterator[bool]:
    """Join the ``torchrun`` process group for the block (gloo on CPU, NCCL on CUDA; a no-op
    in a single process); yields whether this process writes and prints (rank 0).

    Every process runs the audit on its share of the examples and holds the whole result;
    only the writer writes the report (:func:`writing_stage`)."""
    from .runtime._distributed import is_writer, process_group

    with process_group(device=device):
        yield is_writer()


@contextmanager
def writing_stage(stage: str = "writing the report") -> Iterator[None]:
    """Around the writer's output: a failure there (or on any process) raises on every
    process (the others with a ``RemoteRankError``), so all exit with the same code."""
    from .runtime._distributed import sync_point

    with sync_point(stage):
        yield
