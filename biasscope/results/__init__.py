"""The result types and their JSON form: ``AuditResult``, ``ModalityResult``, ``Estimate``,
``Diagnostic``, ``ProbeResult``, ``Attribution``; the shipped JSON Schemas and the migrations
that keep older files readable.

May import: errors, runtime.
"""

from __future__ import annotations

from ._estimate import Estimate
from ._audit import (
    Agreement, AuditResult, Diagnostic, JointCheck, MEASURES, ModalityResult, NOT_USED,
    PermutationScore, Ranking, SCHEMA_VERSION, SEVERITIES, ShapleyValues, ShareComparison,
    VERDICTS,
)
from ._insight import Attribution, ProbeResult, above_chance, attribution_from_dict, probe_from_dict

__all__ = [
    "Agreement",
    "Attribution",
    "AuditResult",
    "Diagnostic",
    "Estimate",
    "JointCheck",
    "MEASURES",
    "ModalityResult",
    "NOT_USED",
    "PermutationScore",
    "ProbeResult",
    "Ranking",
    "SCHEMA_VERSION",
    "SEVERITIES",
    "ShapleyValues",
    "ShareComparison",
    "VERDICTS",
    "above_chance",
    "attribution_from_dict",
    "probe_from_dict",
]
