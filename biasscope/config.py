"""``biasscope.toml``: the project's model, data, modalities, thresholds and fix settings,
so that a CI job runs ``biasscope audit`` with no flags. Command-line flags win over it.

Relative paths in the file are relative to the file's folder.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import BiasscopeError, ConfigError
from .auditing.verdict import Thresholds

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "CONFIG_NAME", "ProjectConfig", "config_key", "find_config", "load_config",
    "resolve_options", "table_schema",
]

CONFIG_NAME = "biasscope.toml"

_NUMBER = (int, float)
_TABLES = ("modalities", "audit", "thresholds", "fix")
_TOP: dict[str, Any] = {
    "model": str, "factory": str, "kind": str, "hf_class": str,
    "preset": str, "data": str, "label_key": str, "batch_size": int, "limit": int,
    "output_key": str, "output_index": int, "call": str, "adapter": str, **{t: dict for t in _TABLES},
}
_PATHS = {"model", "data", "factory", "adapter"}
#: the config key of an option field, where it differs from the field's name
_KEYS = {"lambda_": "lambda"}
#: older spellings still read: config key -> option field
_ALIASES = {"fix": {"steps": "max_steps"}}
#: keys of a command's table that are not options of the verb (where to write, gates...)
_EXTRA: dict[str, dict[str, Any]] = {
    "audit": {"out": str, "fail_on": str, "plotlyjs": str, "batch_size": int, "tokenizer": str, "profile": str},
    "fix": {"data": str, "val": str, "shift_data": str, "out": str, "batch_size": int, "audit_samples": int},
}
_TYPES: dict[str, Any] = {"int": (int,), "float": _NUMBER, "str": (str,), "bool": (bool,)}


def _options_class(table: str) -> type:
    from .runtime.options import AuditOptions, FixOptions

    return {"audit": AuditOptions, "fix": FixOptions}[table]


def config_key(field_name: str) -> str:
    """The ``biasscope.toml`` key of an option field (``lambda_`` -> ``lambda``)."""
    return _KEYS.get(field_name, field_name)


def table_schema(table: str) -> dict[str, Any]:
    """The allowed keys of the ``[audit]`` or ``[fix]`` table with their TOML types,
    generated from the fields of AuditOptions / FixOptions (so no option can be missing)."""
    schema: dict[str, Any] = {}
    for f in fields(_options_class(table)):
        kinds: tuple[type, ...] = ()
        for part in str(f.type).split("|"):
            kinds += _TYPES.get(part.strip(), ())
        schema[config_key(f.name)] = tuple(dict.fromkeys(kinds))
    for alias, name in _ALIASES.get(table, {}).items():
        schema[alias] = schema[config_key(name)]
    return {**schema, **_EXTRA[table]}


_THRESHOLDS: dict[str, Any] = {"ignored": _NUMBER, "weak": _NUMBER, "dominant": _NUMBER}


#: keys that no file may set: trust to run code stored in a file comes from the command line
#: (or the Python argument), never from a file the tool reads
_REFUSED = {"trust_pickle": "--trust-pickle", "trust_remote_code": "--trust-pickle"}


def _refuse_trust(path: Path, raw: dict[str, Any]) -> None:
    tables = [("", raw)] + [(f" [{t}]", raw[t]) for t in _TABLES if isinstance(raw.get(t), dict)]
    for where, table in tables:
        for key in _REFUSED.keys() & table.keys():
            raise ConfigError(
                f"{path}{where} sets {key}, but trust to run code stored in a model file is never "
                f"read from a file biasscope reads: remove the key from {path} and pass "
                f"{_REFUSED[key]} on the command line (trust_pickle=True in Python) for a file you "
                "trust.", source=str(path),
            )


def _check_table(where: str, table: dict[str, Any], schema: dict[str, Any]) -> None:
    """Unknown keys and values of the wrong type are errors that name the key."""
    extra = sorted(set(table) - set(schema))
    if extra:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(extra)}. Allowed: {', '.join(sorted(schema))}.",
            source=where.split(" [")[0],
        )
    for key, value in table.items():
        kinds = schema[key] if isinstance(schema[key], tuple) else (schema[key],)
        bad_bool = isinstance(value, bool) and bool not in kinds
        if bad_bool or not isinstance(value, kinds):
            names = " or ".join(k.__name__.replace("str", "string").replace("dict", "table") for k in kinds)
            raise ConfigError(f"{where}: {key} must be a {names}, got {_short(value)}.", source=where.split(" [")[0])


@dataclass
class ProjectConfig:
    """The parsed file: top-level loading options, modalities, and per-command tables."""

    path: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)  # top-level keys
    modalities: list[Any] = field(default_factory=list)  # Modality
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
        raise ConfigError(f"Cannot read the config {str(path)!r} ({exc}); check the --config path.", source=str(path)) from None
    except (tomllib.TOMLDecodeError, RecursionError, ValueError) as exc:
        raise ConfigError(f"{path} is not valid TOML ({str(exc)[:200]}); fix the syntax.", source=str(path)) from None
    _refuse_trust(path, raw)
    _check_table(str(path), raw, _TOP)
    base = path.parent
    options = {k: v for k, v in raw.items() if k not in _TABLES}
    for key in _PATHS & set(options):
        options[key] = _resolve(base, options[key])
    mods_raw = raw.get("modalities", {})
    _check_table(f"{path} [modalities]", mods_raw, {name: str for name in mods_raw})
    from .measuring.modality import Modality  # imports torch: only when a file names modalities

    try:
        modalities = [Modality.parse(f"{name}={site}") for name, site in mods_raw.items()]
    except BiasscopeError as exc:
        raise ConfigError(f"{path} [modalities]: {exc}", source=str(path)) from None
    audit = dict(raw.get("audit", {}))
    _check_table(f"{path} [audit]", audit, table_schema("audit"))
    fix = dict(raw.get("fix", {}))
    _check_table(f"{path} [fix]", fix, table_schema("fix"))
    for table in (audit, fix):
        if "out" in table:
            table["out"] = _resolve(base, table["out"])
    for key in ("data", "val", "shift_data"):
        if key in fix:
            fix[key] = _resolve(base, fix[key])
    thresholds_raw = raw.get("thresholds", {})
    _check_table(f"{path} [thresholds]", thresholds_raw, _THRESHOLDS)
    thresholds = Thresholds(**{k: float(v) for k, v in thresholds_raw.items()})
    return ProjectConfig(path, options, modalities, audit, fix, thresholds)


def _short(value: Any) -> str:
    """A value as the message shows it: a nested table or a huge number cut to 80 characters."""
    try:
        text = repr(value)
    except (RecursionError, ValueError):
        text = f"a {type(value).__name__}"
    return text if len(text) <= 80 else text[:77] + "..."


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


def _field_name(key: str, table: str) -> str:
    by_key = {v: k for k, v in _KEYS.items()}
    return _ALIASES.get(table, {}).get(key, by_key.get(key, key))


def resolve_options(
    table: str, flags: Mapping[str, Any], config: ProjectConfig | None = None
) -> Any:
    """The options of a verb (``table`` is ``"audit"`` or ``"fix"``): each field from
    ``flags`` when given (not None), else the config's ``[table]``, else its top level,
    else the default of AuditOptions / FixOptions. Invalid values raise ConfigError naming
    the parameter (and the config file, when the value came from it).
    """
    from .runtime.options import options_from_mapping

    cls = _options_class(table)
    names = {f.name for f in fields(cls)} | ({"profile"} if table == "audit" else set())
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    if config is not None:
        where = str(config.path) if config.path else "the config"
        for key in names & set(config.options):
            values[key], origin[key] = config.options[key], where
        for key, value in getattr(config, table).items():
            name = _field_name(key, table)
            if name in names:
                values[name], origin[name] = value, f"{where} [{table}] {key}"
    for name, value in flags.items():
        if value is not None:
            values[name] = value
            origin.pop(name, None)
    key = values.get("label_key")
    if isinstance(key, str) and key.lower() in ("", "none"):  # `--label-key none` (or None): no labels
        values["label_key"] = None
    try:
        return options_from_mapping(cls, values)
    except ConfigError as exc:
        if exc.parameter in origin:
            raise ConfigError(f"{origin[exc.parameter]}: {exc}", source=str(config.path)) from None
        raise
