"""The JSON Schemas (draft 2020-12) of biasscope's JSON outputs, shipped in the package:
``audit`` (audit.json), ``compare`` (``compare --json``) and ``fix`` (fix's
training_log.json). Each file's ``$id`` carries its version, as does each document's
``schema_version``. Torch-free; validating needs ``jsonschema`` (``pip install jsonschema``).
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

from ..errors import ConfigError

__all__ = ["SCHEMAS", "load_schema", "schema_text", "validate"]

#: output name -> the schema version it is written in
SCHEMAS = {"audit": 3, "compare": 1, "fix": 1}


def _check(name: str) -> None:
    if name not in SCHEMAS:
        raise ConfigError(f"No JSON Schema named {name!r}; the schemas are {', '.join(SCHEMAS)}.")


def schema_text(name: str) -> str:
    """The schema file of output ``name`` as text (to save or publish it)."""
    _check(name)
    return files(__package__).joinpath("schemas", f"{name}.schema.json").read_text(encoding="utf-8")


def load_schema(name: str) -> dict[str, Any]:
    """The schema of output ``name`` (``audit``, ``compare``, ``fix``) as a dict."""
    return json.loads(schema_text(name))


def validate(document: Any, name: str) -> None:
    """Raise :class:`ConfigError` naming the first place where ``document`` breaks the schema."""
    try:
        import jsonschema
    except ImportError:
        raise ConfigError("Validating against the schema needs jsonschema: pip install jsonschema.") from None
    schema = load_schema(name)
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is not None:
        where = "/".join(map(str, error.absolute_path)) or "(top level)"
        raise ConfigError(f"This {name} JSON does not follow schema version {SCHEMAS[name]} at {where}: {error.message}.")
