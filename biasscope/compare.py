"""CI gates over two audits: before and after a fix (or two versions of a model)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .errors import ConfigError
from .results import AuditResult

__all__ = ["Gate", "check_comparable", "evaluate_gates", "parse_min_share"]


@dataclass(frozen=True)
class Gate:
    """One CI check: its name, whether it passed, and what was measured."""

    name: str
    passed: bool
    detail: str


def parse_min_share(specs: list[str]) -> dict[str, float]:
    """``["text=0.2", ...]`` -> ``{"text": 0.2}``."""
    out = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ConfigError(f"Cannot read --min-share {spec!r}: write MODALITY=SHARE, e.g. text=0.2.")
    return out


_SETTINGS = ("samples", "scale", "divergence")


def check_comparable(before: AuditResult, after: AuditResult) -> list[str]:
    """Refuse audits of different modalities; return warnings for settings that differ
    (their numbers are then not directly comparable)."""
    if sorted(before.names) != sorted(after.names):
        raise ConfigError(
            f"The audits have different modalities ({', '.join(before.names)} vs "
            f"{', '.join(after.names)}); compare audits of the same modalities."
        )
    return [
        f"{key} differs ({before.settings.get(key)!r} vs {after.settings.get(key)!r}): "
        "the entropy measures are not directly comparable"
        for key in _SETTINGS
        if before.settings.get(key) != after.settings.get(key)
    ]


def evaluate_gates(
    before: AuditResult,
    after: AuditResult,
    *,
    fail_if_ignored: bool = False,
    max_drop_accuracy: float | None = None,
    min_share: Mapping[str, float] | None = None,
) -> list[Gate]:
    """The gates asked for, each evaluated on ``after`` (and ``before`` for accuracy)."""
    check_comparable(before, after)
    gates: list[Gate] = []
    if fail_if_ignored:
        ignored = after.ignored
        gates.append(
            Gate(
                "no modality ignored",
                not ignored,
                f"ignored: {', '.join(ignored)}" if ignored else "every modality is used",
            )
        )
    if max_drop_accuracy is not None:
        if before.accuracy is None or after.accuracy is None:
            raise ConfigError(
                "--max-drop-accuracy needs accuracy in both audits: audit data with labels."
            )
        drop = before.accuracy - after.accuracy
        gates.append(
            Gate(
                f"accuracy drop <= {max_drop_accuracy:g}",
                drop <= max_drop_accuracy + 1e-12,
                f"{before.accuracy:.4f} -> {after.accuracy:.4f} (drop {drop:+.4f})",
            )
        )
    for name, floor in (min_share or {}).items():
        if name not in after.names:
            raise ConfigError(
                f"--min-share names {name!r}, but the audit has modalities {', '.join(after.names)}."
            )
        share = after[name].share
        gates.append(Gate(f"share of {name} >= {floor:g}", share >= floor, f"share {share:.4f}"))
    return gates
