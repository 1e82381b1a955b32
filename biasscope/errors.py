"""The error family: every user mistake raises a subclass with a message that says what
was wrong and how to fix it. The CLI prints the message (no traceback) and exits 2."""

from __future__ import annotations

__all__ = [
    "BiasscopeError",
    "ModalityError",
    "ModelLoadError",
    "DataLoadError",
    "ModelOutputError",
    "ConfigError",
    "OutputPathError",
]


class BiasscopeError(Exception):
    """Base class of every error biasscope raises on purpose.

    ``parameter`` names the option at fault (``samples``) when there is one, so that a front
    end can name its own spelling of it (the CLI's ``--samples``). ``source`` is the file that
    holds the wrong value (a biasscope.toml), when it came from one: the message then names
    that file's keys, and a front end leaves them as they are (no flag names).
    """

    def __init__(self, *args: object, parameter: str | None = None, source: str | None = None) -> None:
        super().__init__(*args)
        self.parameter = parameter
        self.source = source


class ModalityError(BiasscopeError):
    """A modality spec does not match the model or the data."""


class ModelLoadError(BiasscopeError):
    """A model file is missing, corrupt, unsupported, or its factory failed."""


class DataLoadError(BiasscopeError):
    """A data file or data factory is missing, corrupt, unsupported or empty."""


class ModelOutputError(BiasscopeError):
    """The model's forward pass failed or its output holds no usable logits."""


class ConfigError(BiasscopeError):
    """A biasscope.toml file or a command-line option is invalid."""


class OutputPathError(ConfigError):
    """An output path cannot be written (a file where a folder is needed, read-only, an
    input path...); raised before any work is done."""
