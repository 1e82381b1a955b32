"""biasscope: does your multimodal classifier ignore a modality? Measure it, and fix it.

The public names load lazily (module ``__getattr__``): ``import biasscope`` costs no torch
import, so the command line starts fast; ``biasscope.audit`` imports what it needs on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> the module (relative to this package) that defines it
_EXPORTS: dict[str, str] = {
    "AuditOptions": "runtime.options",
    "AuditReport": "report",
    "AuditResult": "results._audit",
    "Attribution": "results._insight",
    "BiasscopeError": "errors",
    "Calibration": "fixing.calibration",
    "ConfigError": "errors",
    "DataLoadError": "errors",
    "Diagnostic": "results._audit",
    "Estimate": "results._audit",
    "FixInterrupted": "fixing.fix",
    "FixOptions": "runtime.options",
    "FixReport": "workflow",
    "FixResult": "fixing.fix",
    "FunctionalEntropyRegularizer": "fixing.regularizer",
    "Gate": "compare",
    "HFMonitor": "monitoring.hf_monitor",
    "LightningMonitor": "monitoring.lightning_monitor",
    "LoadedModel": "io.loading",
    "Modality": "measuring.modality",
    "ModalityError": "errors",
    "ModalityResult": "results._audit",
    "ModelLoadError": "errors",
    "ModelOutputError": "errors",
    "Monitor": "monitoring.monitor",
    "MonitorRecord": "monitoring.monitor",
    "OutputSpec": "runtime._batch",
    "ProbeResult": "results._insight",
    "Thresholds": "auditing.verdict",
    "audit": "auditing.audit",
    "audit_report": "report",
    "calibrate_lambda": "fixing.calibration",
    "compare_gates": "compare",
    "fix": "fixing.fix",
    "fix_and_audit": "workflow",
    "load_data": "io.data",
    "load_model": "io.loading",
    "save_model": "io.loading",
}

__all__ = sorted(["__version__", *_EXPORTS])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

