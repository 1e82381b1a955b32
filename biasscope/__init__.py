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
from .data import load_data
from .fix import FixInterrupted, FixResult, fix
from .loading import LoadedModel, load_model, save_model
from .modality import Modality
from .regularizer import FunctionalEntropyRegularizer, calibrate_lambda
from .results import AuditResult, Estimate, ModalityResult
from .verdict import Thresholds

__all__ = [
    "__version__",
    "audit",
    "fix",
    "FixResult",
    "FixInterrupted",
    "FunctionalEntropyRegularizer",
    "calibrate_lambda",
    "load_model",
    "save_model",
    "LoadedModel",
    "load_data",
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
