"""CI gates over audits: ``compare`` of two audits (before and after a fix, or two versions
of a model) and the ``fail_on`` gate of one audit. Torch-free."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .results import AuditResult
from .auditing.verdict import reliance_shares

__all__ = [
    "FAIL_ON",
    "Gate",
    "Headline",
    "COMPARE_SCHEMA_VERSION",
    "check_comparable",
    "compare_gates",
    "comparison_document",
    "write_comparison_json",
    "evaluate_gates",
    "fail_on_gate",
    "headline",
    "load_audit",
    "parse_min_share",
]

#: ``fail_on`` level -> the verdicts that fail it (the top-level ``ignored`` list covers
#: every sense of ignored, e.g. ``unused``)
FAIL_ON = ("ignored", "weak")
#: version of the JSON that ``compare --json`` writes (biasscope/results/schemas/compare.schema.json)
COMPARE_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Gate:
    """One CI check: its name, whether it passed, and what was measured."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Headline:
    """The one-line outcome of a set of gates.

    ``status``: ``"failed"`` (a gate failed), ``"passed"`` (every gate passed and no modality
    is ignored or weak), ``"passed_ungated"`` (the gates passed, but a modality is ignored or
    weak and no gate asked about it: ``ungated`` maps it to its verdict), or ``"no_gates"``.
    """

    status: str
    failed: list[str] = field(default_factory=list)
    ungated: dict[str, str] = field(default_factory=dict)


def load_audit(path: str | os.PathLike[str]) -> AuditResult:
    """Read an audit.json (:meth:`AuditResult.load`)."""
    return AuditResult.load(path)


def parse_min_share(specs: Sequence[str], *, parameter: str = "min_share") -> dict[str, float]:
    """``["text=0.2", ...]`` -> ``{"text": 0.2}``; each share a finite number in [0, 1]."""
    out = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        try:
            share = float(value)
        except ValueError:
            share = math.nan
            sep = ""
        if not sep or not name.strip():
            raise ConfigError(
                f"Cannot read {parameter} {spec!r}: write MODALITY=SHARE, e.g. text=0.2.",
                parameter=parameter,
            )
        if not (math.isfinite(share) and 0.0 <= share <= 1.0):
            raise ConfigError(
                f"{parameter} {spec!r}: the share must be a number in [0, 1] (got {value.strip()}).",
                parameter=parameter,
            )
        out[name.strip()] = share
    return out


_SETTINGS = ("samples", "scale", "divergence")


def _data_hash(result: AuditResult) -> str | None:
    data = result.provenance.get("data")
    return data.get("sha256") if isinstance(data, Mapping) else None


def check_comparable(
    before: AuditResult, after: AuditResult, *, allow_different_data: bool = False
) -> list[str]:
    """Refuse audits of different modalities, and of different data (their recorded sha256
    differ) unless ``allow_different_data``; return warnings for settings that differ."""
    if sorted(before.names) != sorted(after.names):
        raise ConfigError(
            f"The audits have different modalities ({', '.join(before.names)} vs "
            f"{', '.join(after.names)}); compare audits of the same modalities."
        )
    a, b = _data_hash(before), _data_hash(after)
    if a is not None and b is not None and a != b and not allow_different_data:
        raise ConfigError(
            f"The audits are of different data (sha256 {a[:12]}... vs {b[:12]}...): their "
            "numbers are not comparable. Audit both models on the same data, or set "
            "allow_different_data to compare them anyway.",
            parameter="allow_different_data",
        )
    warnings = [
        f"{key} differs ({before.settings.get(key)!r} vs {after.settings.get(key)!r}): "
        "the entropy measures are not directly comparable"
        for key in _SETTINGS
        if before.settings.get(key) != after.settings.get(key)
    ]
    if a != b and (a is None or b is None or allow_different_data):
        warnings.append("the audits may be of different data: their numbers are not directly comparable")
    return warnings


def _weak(result: AuditResult) -> list[str]:
    return [m.name for m in result.modalities if m.verdict == "weak" and m.name not in result.ignored]


def fail_on_gate(result: AuditResult, level: str) -> Gate:
    """The ``fail_on`` gate of one audit: ``"ignored"`` fails when a modality is ignored
    (in any sense: the result's ``ignored`` list), ``"weak"`` also when one is weak."""
    if level not in FAIL_ON:
        raise ConfigError(f"fail_on must be one of {', '.join(FAIL_ON)} (got {level!r}).", parameter="fail_on")
    failing = {name: result[name].verdict for name in result.ignored}
    if level == "weak":
        failing.update({name: "weak" for name in _weak(result)})
    detail = ", ".join(f"{n} is {v}" for n, v in failing.items()) or "every modality is used"
    return Gate(f"no modality {'ignored' if level == 'ignored' else 'ignored or weak'}", not failing, detail)


def _check_gate_values(**drops: float | None) -> None:
    from .runtime.options import check_number

    for name, value in drops.items():
        try:
            check_number(name, value, low=0.0, high=1.0, optional=True)
        except ConfigError as exc:
            raise ConfigError(f"{exc} It is an accuracy drop, e.g. 0.02.", parameter=name) from None


def compare_gates(
    before: AuditResult,
    after: AuditResult,
    *,
    fail_if_ignored: bool = False,
    fail_if_weak: bool = False,
    max_drop_accuracy: float | None = None,
    max_drop_shift_accuracy: float | None = None,
    min_share: Mapping[str, float] | None = None,
    min_reliance_share: Mapping[str, float] | None = None,
    allow_different_data: bool = False,
) -> list[Gate]:
    """The gates asked for, each evaluated on ``after`` (and ``before`` for accuracy).

    ``min_share`` bounds a modality's sensitivity share, ``min_reliance_share`` its share of
    the summed permutation loss increase (what drives the verdict). ``max_drop_shift_accuracy``
    bounds the drop of the accuracy on the shifted data (both audits run with ``shift_data``).
    """
    _check_gate_values(max_drop_accuracy=max_drop_accuracy, max_drop_shift_accuracy=max_drop_shift_accuracy)
    for parameter, floors in (("min_share", min_share), ("min_reliance_share", min_reliance_share)):
        for name, floor in (floors or {}).items():
            if not (isinstance(floor, (int, float)) and math.isfinite(floor) and 0 <= floor <= 1):
                raise ConfigError(f"{parameter} for {name!r} must be a number in [0, 1] (got {floor!r}).", parameter=parameter)
            if name not in after.names:
                raise ConfigError(
                    f"{parameter} names {name!r}, but the audit has modalities {', '.join(after.names)}.",
                    parameter=parameter,
                )
    check_comparable(before, after, allow_different_data=allow_different_data)
    gates: list[Gate] = []
    if fail_if_ignored and not fail_if_weak:
        gates.append(fail_on_gate(after, "ignored"))
    if fail_if_weak:
        gates.append(fail_on_gate(after, "weak"))
    if max_drop_accuracy is not None:
        gates.append(_accuracy_gate(before, after, max_drop_accuracy))
    if max_drop_shift_accuracy is not None:
        gates.append(_shift_gate(before, after, max_drop_shift_accuracy))
    for name, floor in (min_share or {}).items():
        share = after[name].share
        gates.append(Gate(f"share of {name} >= {floor:g}", share >= floor, f"share {share:.4f}"))
    if min_reliance_share:
        reliance = reliance_shares(after.modalities)
        if reliance is None:
            raise ConfigError(
                "min_reliance_share needs permutation scores in the after audit: audit data "
                "with labels and permutation_repeats >= 2.",
                parameter="min_reliance_share",
            )
        for name, floor in min_reliance_share.items():
            gates.append(
                Gate(f"reliance share of {name} >= {floor:g}", reliance[name] >= floor,
                     f"reliance share {reliance[name]:.4f}")
            )
    return gates


def _accuracy_gate(before: AuditResult, after: AuditResult, max_drop: float) -> Gate:
    if before.accuracy is None or after.accuracy is None:
        raise ConfigError(
            "max_drop_accuracy needs accuracy in both audits: audit data with labels.",
            parameter="max_drop_accuracy",
        )
    drop = before.accuracy - after.accuracy
    return Gate(
        f"accuracy drop <= {max_drop:g}",
        drop <= max_drop + 1e-12,
        f"{before.accuracy:.4f} -> {after.accuracy:.4f} (drop {drop:+.4f})",
    )


def _shift_gate(before: AuditResult, after: AuditResult, max_drop: float) -> Gate:
    if before.shift_accuracy is None or after.shift_accuracy is None:
        raise ConfigError(
            "max_drop_shift_accuracy needs the accuracy on shifted data in both audits: run "
            "both with --shift-data (the same file).", parameter="max_drop_shift_accuracy",
        )
    a, b = before.shift_accuracy, after.shift_accuracy
    return Gate(f"shifted-data accuracy drop <= {max_drop:g}", a - b <= max_drop + 1e-12,
                f"{a:.4f} -> {b:.4f} (drop {a - b:+.4f})")


def evaluate_gates(before: AuditResult, after: AuditResult, **gates: object) -> list[Gate]:
    """The former name of :func:`compare_gates`."""
    return compare_gates(before, after, **gates)  # type: ignore[arg-type]


def headline(gates: Sequence[Gate], after: AuditResult, *, gated_levels: Sequence[str] = ()) -> Headline:
    """The outcome of ``gates``: never a plain pass while a modality of ``after`` is ignored
    or weak and no gate asked about it (``gated_levels``: which of ``"ignored"``, ``"weak"``
    a gate covered; ``"weak"`` covers both)."""
    failed = [g.name for g in gates if not g.passed]
    if failed:
        return Headline("failed", failed=failed)
    covered = set(gated_levels) | ({"ignored"} if "weak" in gated_levels else set())
    ungated = {}
    if "ignored" not in covered:
        ungated.update({name: after[name].verdict for name in after.ignored})
    if "weak" not in covered:
        ungated.update({name: "weak" for name in _weak(after)})
    if not gates:
        return Headline("no_gates", ungated=ungated)
    return Headline("passed_ungated" if ungated else "passed", ungated=ungated)


def _audit_summary(result: AuditResult, path: str) -> dict[str, object]:
    return {
        "path": path, "accuracy": result.accuracy, "verdicts": {m.name: m.verdict for m in result.modalities},
        "shares": result.shares, "reliance_shares": {m.name: m.reliance_share for m in result.modalities},
    }


def comparison_document(
    before: AuditResult, after: AuditResult, gates: Sequence[Gate], head: Headline, *,
    before_path: str, after_path: str, warnings: Sequence[str] = (),
) -> dict[str, object]:
    """The JSON form of one comparison (what ``compare --json`` writes): both audits' verdicts
    and shares, every gate, the headline's status and the warnings; nan/inf as None."""
    import dataclasses

    from .results._audit import _finite

    return _finite({
        "schema_version": COMPARE_SCHEMA_VERSION,
        "status": head.status, "failed": list(head.failed), "ungated": dict(head.ungated),
        "gates": [dataclasses.asdict(g) for g in gates], "warnings": list(warnings),
        "before": _audit_summary(before, before_path), "after": _audit_summary(after, after_path),
    })


def write_comparison_json(path: str | os.PathLike[str], document: Mapping[str, object]) -> Path:
    """Write :func:`comparison_document`'s output to ``path`` atomically; returns the path."""
    from .runtime._files import write_atomic

    return write_atomic(Path(path), json.dumps(document, indent=2, allow_nan=False) + "\n")
