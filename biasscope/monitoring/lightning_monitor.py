"""A Lightning Callback that audits a fixed held-out batch during training and logs the
per-modality shares, reliance and verdicts through the trainer's own loggers (TensorBoard,
CSV, W&B, MLflow: whatever ``Trainer(logger=...)`` has).

Needs ``lightning`` (``pip install 'biasscope[lightning]'``) or ``pytorch_lightning``, imported
when the class is first used (``import biasscope`` and this module's import need neither). :class:`LightningMonitor` subclasses
``lightning.pytorch.callbacks.Callback`` (``pytorch_lightning``'s when only that is
installed); ``PyTorchLightningMonitor`` is the same callback for ``pytorch_lightning.Trainer``.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..measuring.modality import Modality
from .monitor import DEFAULT_EVERY, Monitor, MonitorRecord, batch_to_device, check_settings

__all__ = ["LightningMonitor", "PyTorchLightningMonitor"]


def _callback_base(package: str) -> type:
    try:
        return importlib.import_module(f"{package}.callbacks").Callback
    except ImportError:
        raise ConfigError(
            f"The Lightning monitor needs {package.split('.')[0]}: pip install 'biasscope[lightning]'."
        ) from None


class _MonitorHooks:
    """The hooks, on any Lightning ``Callback`` base.

    Args:
        batch: one held-out batch the model is called with (dict or tuple, label included).
        modalities: the :class:`Modality` specs.
        every: audit every this many optimizer steps (and at the start of training); None
            audits at the end of each validation instead.
        submodule: audit ``pl_module.<submodule>`` (e.g. ``"model"``) instead of the
            LightningModule itself (whose ``forward`` must then take the batch).
        html: write the trajectory figure here at the end of ``fit``.
        overrides: audit options on top of :data:`~biasscope.monitoring.monitor.MONITOR_OPTIONS`.
    """

    def __init__(
        self,
        batch: Any,
        modalities: Sequence[Modality],
        *,
        every: int | None = DEFAULT_EVERY,
        submodule: str | None = None,
        html: str | Path | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__()
        self.batch, self.modalities, self.every = batch, list(modalities), every
        self.submodule, self.html, self.overrides = submodule, html, overrides
        self.monitor: Monitor | None = None
        check_settings(every, None, overrides)

    @property
    def history(self) -> list[MonitorRecord]:
        return self.monitor.history if self.monitor is not None else []

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        model = getattr(pl_module, self.submodule) if self.submodule else pl_module
        self.monitor = Monitor(model, batch_to_device(self.batch, pl_module.device), self.modalities,
                               every=self.every, **self.overrides)
        if self.every is not None:
            self._audit(trainer, trainer.global_step)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.every is not None and self.monitor is not None and self.monitor.due(trainer.global_step):
            self._audit(trainer, trainer.global_step)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if self.every is None and self.monitor is not None and not trainer.sanity_checking:
            self._audit(trainer, trainer.global_step)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self.html is not None and self.history and trainer.is_global_zero:
            self.monitor.write_html(self.html)  # type: ignore[union-attr]

    def _audit(self, trainer: Any, step: int) -> None:
        record = self.monitor.audit_now(step)  # type: ignore[union-attr]
        metrics = record.metrics()
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)


def _monitor_class(package: str, name: str) -> type:
    cls = type(name, (_MonitorHooks, _callback_base(package)), {"__module__": __name__})
    cls.__doc__ = f"Audit a fixed batch during ``{package}`` training; log shares, reliance, verdicts.\n\n" + (
        _MonitorHooks.__doc__ or ""
    )
    return cls


def __getattr__(name: str) -> Any:
    """Build the callback class on first use: ``import biasscope.monitoring.lightning_monitor`` needs no
    Lightning; ``LightningMonitor`` needs ``lightning`` (or ``pytorch_lightning``)."""
    if name == "LightningMonitor":
        try:
            cls = _monitor_class("lightning.pytorch", name)
        except ConfigError:
            cls = _monitor_class("pytorch_lightning", name)
    elif name == "PyTorchLightningMonitor":  # for pytorch_lightning.Trainer when both are installed
        cls = _monitor_class("pytorch_lightning", name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = cls
    return cls
