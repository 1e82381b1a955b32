"""``biasscope.toml``: the project's model, data, modalities, thresholds and fix settings,
so that a CI job runs ``biasscope audit`` with no flags. Command-line flags win over it.

Relative paths in the file are relative to the file's folder.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .modality import Modality
from .verdict import Thresholds

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["CONFIG_NAME", "ProjectConfig", "find_config", "load_config"]

CONFIG_NAME = "biasscope.toml"

_TOP = {
    "model", "factory", "kind", "trust_pickle", "hf_class", "preset", "data", "label_key",
    "batch_size", "limit", "output_key", "output_index", "modalities", "audit", "thresholds", "fix",
}
_PATHS = {"model", "data", "factory"}
_AUDIT = {
    "samples", "scale", "seed", "device", "divergence", "max_rows", "permutation_repeats",
    "shapley", "out", "fail_on", "plotlyjs",
}
_FIX = {
    "data", "val", "epochs", "steps", "lr", "optimizer", "lambda", "estimator", "form", "samples",
    "scale", "seed", "device", "amp", "patience", "checkpoint_every", "out", "batch_size",
    "modality_dropout",
}


@dataclass
class ProjectConfig:
    """The parsed file: top-level loading options, modalities, and per-command tables."""

    path: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)  # top-level keys
    modalities: list[Modality] = field(default_factory=list)
    audit: dict[str, Any] = field(default_factory=dict)
    fix: dict[str, Any] = field(default_factory=dict)
    thresholds: Thresholds = field(default_factory=Thresholds)

    def get(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)


def find_config(explicit: str | Path | None = None, *, cwd: Path | None = None) -> Path | None:
    """The config to use: ``explicit`` if given (it must exist), else ``./biasscope.toml``
    if present, else None."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"No config file at {str(path)!r}; check the --config path.")
        return path
    candidate = (cwd or Path.cwd()) / CONFIG_NAME
    return candidate if candidate.is_file() else None


def _unknown(where: str, keys: set[str], allowed: set[str]) -> None:
    extra = sorted(keys - allowed)
    if extra:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(extra)}. Allowed: {', '.join(sorted(allowed))}."
        )


def load_config(path: str | Path) -> ProjectConfig:
    """Read and validate a ``biasscope.toml``."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Cannot read the config {str(path)!r} ({exc}).") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}); fix the syntax.") from None
    _unknown(str(path), set(raw), _TOP)
    base = path.parent
    options = {k: v for k, v in raw.items() if k not in {"modalities", "audit", "thresholds", "fix"}}
    for key in _PATHS & set(options):
        options[key] = _resolve(base, options[key])
    mods_raw = raw.get("modalities", {})
    if not isinstance(mods_raw, dict):
        raise ConfigError(
            f"{path}: [modalities] must be a table of NAME = \"input:KEY\" or \"layer:path\"."
        )
    modalities = [Modality.parse(f"{name}={site}") for name, site in mods_raw.items()]
    audit = dict(raw.get("audit", {}))
    _unknown(f"{path} [audit]", set(audit), _AUDIT)
    fix = dict(raw.get("fix", {}))
    _unknown(f"{path} [fix]", set(fix), _FIX)
    for table in (audit, fix):
        if "out" in table:
            table["out"] = _resolve(base, table["out"])
    for key in ("data", "val"):
        if key in fix:
            fix[key] = _resolve(base, fix[key])
    thresholds_raw = raw.get("thresholds", {})
    _unknown(f"{path} [thresholds]", set(thresholds_raw), {"ignored", "weak", "dominant"})
    try:
        thresholds = Thresholds(**{k: float(v) for k, v in thresholds_raw.items()})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path} [thresholds]: {exc}") from None
    return ProjectConfig(path, options, modalities, audit, fix, thresholds)


def _resolve(base: Path, value: Any) -> Any:
    """A relative file path becomes relative to the config's folder; ``pkg.mod:fn``
    factory strings and absolute paths stay as they are."""
    if not isinstance(value, str):
        raise ConfigError(f"Expected a path string, got {value!r}.")
    candidate = base / value
    if Path(value).is_absolute() or (":" in value and not candidate.exists() and ".py:" not in value):
        return value
    if ".py:" in value:
        file, _, fn = value.rpartition(":")
        return f"{base / file}:{fn}"
    return str(candidate)
