"""biasscope: does your multimodal classifier ignore a modality? Measure it, and fix it."""

from __future__ import annotations

__version__ = "0.1.0"

from ._batch import OutputSpec
from .audit import audit
from .errors import (
    BiasscopeError,
    ConfigError,
    DataLoadError,
    ModalityError,
    ModelLoadError,
    ModelOutputError,
)
from .modality import Modality
from .results import AuditResult, Estimate, ModalityResult
from .verdict import Thresholds

__all__ = [
    "__version__",
    "audit",
    "Modality",
    "OutputSpec",
    "Thresholds",
    "AuditResult",
    "ModalityResult",
    "Estimate",
    "BiasscopeError",
    "ConfigError",
    "DataLoadError",
    "ModalityError",
    "ModelLoadError",
    "ModelOutputError",
]
