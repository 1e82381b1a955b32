"""Training-time monitoring: audit one fixed held-out batch every N steps and keep the
trajectory of per-modality shares, reliance and verdicts (the paper's Figure 3, for your run).

The framework callbacks (:mod:`biasscope.monitoring.lightning_monitor`, :mod:`biasscope.monitoring.hf_monitor`)
wrap a :class:`Monitor` and send :meth:`MonitorRecord.metrics` to the trainer's loggers.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..runtime._files import write_atomic
from ..errors import ConfigError
from ..measuring.modality import Modality
from ..runtime.options import AUDIT_PROFILES, AuditOptions
from ..results import VERDICTS, AuditResult

__all__ = [
    "MONITOR_OPTIONS", "DEFAULT_EVERY", "Monitor", "MonitorRecord", "batch_to_device", "check_settings", "verdict_code",
]

#: The audit settings of one monitoring step: the quick profile (``AUDIT_PROFILES["quick"]``:
#: few samples and shuffles, no Shapley, probe or attributions), without the output check (an
#: untrained model may sit below chance). Cost at these settings and ``every=DEFAULT_EVERY``:
#: docs/benchmarks.md (benchmarks/bench_monitor.py).
MONITOR_OPTIONS: dict[str, Any] = {**AUDIT_PROFILES["quick"], "tensorization": False, "check_output": False}
DEFAULT_EVERY = 1000
METRIC_PREFIX = "biasscope"


def verdict_code(verdict: str) -> int:
    """The verdict as a number a logger can plot: 0 ignored, 1 unused, 2 weak, 3 ok, 4 dominant."""
    return VERDICTS.index(verdict)


@dataclass(frozen=True)
class MonitorRecord:
    """One monitoring step: the sensitivity (functional-entropy) share, the reliance share
    (permutation loss increase; None without labels) and the verdict of each modality."""

    step: int
    shares: dict[str, float]
    reliance: dict[str, float | None]
    verdicts: dict[str, str]
    sentence: str
    seconds: float

    @classmethod
    def from_result(cls, step: int, result: AuditResult, seconds: float) -> MonitorRecord:
        return cls(
            step=step,
            shares=dict(result.shares),
            reliance={m.name: m.reliance_share for m in result.modalities},
            verdicts={m.name: m.verdict for m in result.modalities},
            sentence=result.sentence,
            seconds=seconds,
        )

    def metrics(self, prefix: str = METRIC_PREFIX) -> dict[str, float]:
        """Flat numeric metrics for a logger: ``{prefix}/share/NAME``, ``{prefix}/reliance/NAME``
        (when measured) and ``{prefix}/verdict/NAME`` (:func:`verdict_code`)."""
        out: dict[str, float] = {}
        for name, share in self.shares.items():
            out[f"{prefix}/share/{name}"] = float(share)
            reliance = self.reliance.get(name)
            if reliance is not None and math.isfinite(reliance):
                out[f"{prefix}/reliance/{name}"] = float(reliance)
            out[f"{prefix}/verdict/{name}"] = float(verdict_code(self.verdicts[name]))
        return out


class Monitor:
    """Audit ``model`` on one fixed ``batch`` every ``every`` steps of a training loop.

    In a loop: ``monitor.step(step)`` after each optimizer step, then ``monitor.history`` (one
    :class:`MonitorRecord` per audit) and ``monitor.write_html("trajectory.html")``.

    >>> import torch
    >>> from torch import nn
    >>> from biasscope import Modality
    >>> class Net(nn.Module):  # reads the image, never the text
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.head = nn.Linear(4, 3)
    ...     def forward(self, image, text):
    ...         return self.head(image)
    >>> g = torch.Generator().manual_seed(0)
    >>> batch = {"image": torch.randn(32, 4, generator=g), "text": torch.randn(32, 2, generator=g),
    ...          "label": torch.randint(0, 3, (32,), generator=g)}
    >>> monitor = Monitor(Net(), batch, [Modality("image", input="image"), Modality("text", input="text")], every=10)
    >>> [step for step in range(25) if monitor.step(step)]
    [0, 10, 20]
    >>> monitor.history[-1].shares["text"], monitor.history[-1].verdicts["text"]
    (0.0, 'ignored')

    Args:
        model: the classifier being trained (audited in eval mode, its mode restored after).
        batch: one held-out batch, a dict (``model(**batch)``, label under ``label_key``) or a
            tuple (label last); keep it fixed so that the steps are comparable.
        modalities: the :class:`Modality` specs.
        every: audit when ``step % every == 0`` (None: only when :meth:`audit_now` is called).
        options: audit options; default :data:`MONITOR_OPTIONS` on the model's device, and
            ``overrides`` (``samples=16``...) on top.
    """

    def __init__(
        self,
        model: nn.Module,
        batch: Any,
        modalities: Sequence[Modality],
        *,
        every: int | None = DEFAULT_EVERY,
        options: AuditOptions | None = None,
        **overrides: Any,
    ) -> None:
        check_settings(every, options, overrides)
        self.model = model
        self.batch = batch
        self.modalities = list(modalities)
        self.every = every
        self.options = _monitor_options(model, options, overrides)
        self.history: list[MonitorRecord] = []
        self.last_result: AuditResult | None = None

    @property
    def seconds(self) -> float:
        """Wall-clock seconds spent auditing so far."""
        return sum(r.seconds for r in self.history)

    def due(self, step: int) -> bool:
        """Whether ``step`` is a monitoring step not yet audited."""
        if self.every is None:
            return False
        return step % self.every == 0 and not (self.history and self.history[-1].step == step)

    def step(self, step: int) -> MonitorRecord | None:
        """Audit now if ``step`` is due (see :meth:`due`); the new record, else None."""
        return self.audit_now(step) if self.due(step) else None

    def audit_now(self, step: int) -> MonitorRecord:
        """Audit the batch now (also inside a no-grad or inference-mode validation loop)."""
        from ..auditing.audit import audit

        start = time.perf_counter()
        with torch.inference_mode(False), torch.enable_grad():
            result = audit(self.model, [self.batch], self.modalities, options=self.options)
        record = MonitorRecord.from_result(step, result, time.perf_counter() - start)
        self.last_result = result
        self.history.append(record)
        return record

    def figure(self, *, title: str | None = None) -> Any:
        """The trajectory of shares over steps (a plotly Figure)."""
        from .trajectory import trajectory_figure

        return trajectory_figure(self.history, title=title)

    def write_html(self, path: str | os.PathLike[str], *, plotlyjs: str = "inline") -> Path:
        """Write the trajectory figure as one HTML file: ``plotlyjs="inline"`` works offline
        (4.8 MB), ``"cdn"`` loads plotly.js from its CDN (small), as the reports."""
        from ..runtime.options import check_choice

        check_choice("plotlyjs", plotlyjs, ("inline", "cdn"))
        html = self.figure().to_html(include_plotlyjs=True if plotlyjs == "inline" else "cdn", full_html=True)
        return write_atomic(Path(path), html)


def check_settings(every: int | None, options: AuditOptions | None, overrides: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` for a bad ``every`` (None allowed: at each validation) or
    audit option, before training starts rather than at its first monitoring step."""
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise ConfigError(
            f"every must be a positive integer of steps, or None to audit at each validation (got {every!r}).",
            parameter="every",
        )
    (options or AuditOptions(**MONITOR_OPTIONS)).replace(**overrides)


def batch_to_device(batch: Any, device: Any) -> Any:
    """``batch`` (a tensor, or dicts, lists and tuples of them) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: batch_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(batch_to_device(v, device) for v in batch)
    return batch


def _monitor_options(model: nn.Module, options: AuditOptions | None, overrides: dict[str, Any]) -> AuditOptions:
    """:data:`MONITOR_OPTIONS` on the model's device, under ``options`` and ``overrides``."""
    if options is None:
        options = AuditOptions(**{**MONITOR_OPTIONS, "device": _model_device(model)})
    return options.replace(**overrides) if overrides else options


def _model_device(model: nn.Module) -> str:
    param = next(iter(model.parameters()), None)
    return "cpu" if param is None else str(param.device)
