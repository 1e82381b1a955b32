"""A Hugging Face ``TrainerCallback`` that audits a fixed held-out batch during training and
logs the per-modality shares, reliance and verdicts through ``Trainer.log``: every
``report_to`` integration (TensorBoard, W&B, MLflow...) and ``state.log_history`` get them.

Needs ``transformers`` and ``accelerate`` (``pip install 'biasscope[hf]'``), imported when the
class is first used (``import biasscope`` and this module's import need neither).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..measuring.modality import Modality
from .monitor import DEFAULT_EVERY, Monitor, MonitorRecord, batch_to_device, check_settings

__all__ = ["HFMonitor"]


class _TrainerHooks:
    """Audit a fixed batch during ``Trainer.train()``; log shares, reliance, verdicts.

    Add it with ``HFMonitor(...).attach(trainer)`` (it logs through ``trainer.log``)::

        monitor = HFMonitor(val_batch, [Modality("image", input="pixel_values"), ...],
                            html="trajectory.html").attach(trainer)
        trainer.train()
        monitor.history[-1].verdicts

    Args:
        batch: one held-out batch the model is called with (``model(**batch)``; its label
            under ``label_key``, ``"labels"`` by default as in the Trainer's batches).
        modalities: the :class:`Modality` specs.
        every: audit every this many optimizer steps (and at the start of training); None
            audits after each evaluation instead.
        html: write the trajectory figure here at the end of training.
        overrides: audit options on top of :data:`~biasscope.monitoring.monitor.MONITOR_OPTIONS`.
    """

    def __init__(
        self,
        batch: Any,
        modalities: Sequence[Modality],
        *,
        every: int | None = DEFAULT_EVERY,
        html: str | Path | None = None,
        **overrides: Any,
    ) -> None:
        self.batch, self.modalities, self.every, self.html = batch, list(modalities), every, html
        self.overrides = {"label_key": "labels", **overrides}
        check_settings(every, None, self.overrides)
        self.monitor: Monitor | None = None
        self.trainer: Any = None

    @property
    def history(self) -> list[MonitorRecord]:
        return self.monitor.history if self.monitor is not None else []

    def attach(self, trainer: Any) -> Any:
        """Add this callback to ``trainer`` and log through it; returns self."""
        self.trainer = trainer
        trainer.add_callback(self)
        return self

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self.trainer is None:
            raise ConfigError(
                "HFMonitor logs through the Trainer: add it with HFMonitor(...).attach(trainer), "
                "not Trainer(callbacks=[...])."
            )
        self.monitor = Monitor(model, batch_to_device(self.batch, args.device), self.modalities,
                               every=self.every, **self.overrides)
        if self.every is not None:
            self._audit(state.global_step)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.every is not None and self.monitor is not None and self.monitor.due(state.global_step):
            self._audit(state.global_step)

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.every is None and self.monitor is not None:
            self._audit(state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.html is not None and self.history and state.is_world_process_zero:
            self.monitor.write_html(self.html)  # type: ignore[union-attr]

    def _audit(self, step: int) -> None:
        record = self.monitor.audit_now(step)  # type: ignore[union-attr]
        self.trainer.log(record.metrics())


def __getattr__(name: str) -> Any:
    """Build ``HFMonitor`` (a ``transformers.TrainerCallback``) on first use."""
    if name != "HFMonitor":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from transformers import TrainerCallback
    except ImportError:
        raise ConfigError("The Hugging Face monitor needs transformers: pip install 'biasscope[hf]'.") from None
    cls = type(name, (_TrainerHooks, TrainerCallback), {"__module__": __name__, "__doc__": _TrainerHooks.__doc__})
    globals()[name] = cls
    return cls
