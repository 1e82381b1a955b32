"""biasscope: does your multimodal classifier ignore a modality? Measure it, and fix it.

The public names load lazily (module ``__getattr__``): ``import biasscope`` costs no torch
import, so the command line starts fast; ``biasscope.audit`` imports what it needs on first use.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

#: public name -> the module (relative to this package) that defines it
_EXPORTS: dict[str, str] = {
    "AuditOptions": "options",
    "AuditReport": "report",
    "AuditResult": "results",
    "Attribution": "insight_results",
    "BiasscopeError": "errors",
    "Calibration": "regularizer",
    "ConfigError": "errors",
    "DataLoadError": "errors",
    "Diagnostic": "results",
    "Estimate": "results",
    "FixInterrupted": "fix",
    "FixOptions": "options",
    "FixReport": "workflow",
    "FixResult": "fix",
    "FunctionalEntropyRegularizer": "regularizer",
    "Gate": "compare",
    "HFMonitor": "hf_monitor",
    "LightningMonitor": "lightning_monitor",
    "LoadedModel": "loading",
    "Modality": "modality",
    "ModalityError": "errors",
    "ModalityResult": "results",
    "ModelLoadError": "errors",
    "ModelOutputError": "errors",
    "Monitor": "monitor",
    "MonitorRecord": "monitor",
    "OutputSpec": "_batch",
    "ProbeResult": "insight_results",
    "Thresholds": "verdict",
    "audit": "audit",
    "audit_report": "report",
    "calibrate_lambda": "regularizer",
    "compare_gates": "compare",
    "fix": "fix",
    "fix_and_audit": "workflow",
    "load_data": "data",
    "load_model": "loading",
    "save_model": "loading",
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


class _Package(types.ModuleType):
    """Keeps ``biasscope.audit`` / ``biasscope.fix`` the functions once their modules load:
    importing a submodule binds it on the package, and these names are both."""

    def __setattr__(self, name: str, value: Any) -> None:
        if (
            isinstance(value, types.ModuleType)
            and _EXPORTS.get(name) == name
            and value.__name__ == f"{__name__}.{name}"
            and hasattr(value, name)
        ):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
