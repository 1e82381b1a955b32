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

_NUMBER = (int, float)
_TABLES = ("modalities", "audit", "thresholds", "fix")
_TOP: dict[str, Any] = {
    "model": str, "factory": str, "kind": str, "trust_pickle": bool, "hf_class": str,
    "preset": str, "data": str, "label_key": str, "batch_size": int, "limit": int,
    "output_key": str, "output_index": int, **{t: dict for t in _TABLES},
}
_PATHS = {"model", "data", "factory"}
_AUDIT: dict[str, Any] = {
    "samples": int, "scale": _NUMBER, "seed": int, "device": str, "divergence": str,
    "max_rows": int, "permutation_repeats": int, "shapley": bool, "out": str, "fail_on": str,
    "plotlyjs": str,
}
_FIX: dict[str, Any] = {
    "data": str, "val": str, "epochs": int, "steps": int, "lr": _NUMBER, "optimizer": str,
    "lambda": (str, *_NUMBER), "estimator": str, "form": str, "samples": int, "scale": _NUMBER,
    "seed": int, "device": str, "amp": bool, "patience": int, "checkpoint_every": int,
    "out": str, "batch_size": int, "modality_dropout": _NUMBER, "augment": str,
    "target_ratio": _NUMBER, "restore_best": bool,
}
_THRESHOLDS: dict[str, Any] = {"ignored": _NUMBER, "weak": _NUMBER, "dominant": _NUMBER}


def _check_table(where: str, table: dict[str, Any], schema: dict[str, Any]) -> None:
    """Unknown keys and values of the wrong type are errors that name the key."""
    extra = sorted(set(table) - set(schema))
    if extra:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(extra)}. Allowed: {', '.join(sorted(schema))}."
        )
    for key, value in table.items():
        kinds = schema[key] if isinstance(schema[key], tuple) else (schema[key],)
        bad_bool = isinstance(value, bool) and bool not in kinds
        if bad_bool or not isinstance(value, kinds):
            names = " or ".join(k.__name__.replace("str", "string").replace("dict", "table") for k in kinds)
            raise ConfigError(f"{where}: {key} must be a {names}, got {value!r}.")


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


def load_config(path: str | Path) -> ProjectConfig:
    """Read and validate a ``biasscope.toml``."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Cannot read the config {str(path)!r} ({exc}).") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}); fix the syntax.") from None
    _check_table(str(path), raw, _TOP)
    base = path.parent
    options = {k: v for k, v in raw.items() if k not in _TABLES}
    for key in _PATHS & set(options):
        options[key] = _resolve(base, options[key])
    mods_raw = raw.get("modalities", {})
    _check_table(f"{path} [modalities]", mods_raw, {name: str for name in mods_raw})
    modalities = [Modality.parse(f"{name}={site}") for name, site in mods_raw.items()]
    audit = dict(raw.get("audit", {}))
    _check_table(f"{path} [audit]", audit, _AUDIT)
    fix = dict(raw.get("fix", {}))
    _check_table(f"{path} [fix]", fix, _FIX)
    for table in (audit, fix):
        if "out" in table:
            table["out"] = _resolve(base, table["out"])
    for key in ("data", "val"):
        if key in fix:
            fix[key] = _resolve(base, fix[key])
    thresholds_raw = raw.get("thresholds", {})
    _check_table(f"{path} [thresholds]", thresholds_raw, _THRESHOLDS)
    thresholds = Thresholds(**{k: float(v) for k, v in thresholds_raw.items()})
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
