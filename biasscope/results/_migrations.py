"""Reading older audit JSON: one step per schema version, each turning version v's JSON form
into version v + 1's, so that a baseline stored by any earlier biasscope stays readable by
``compare``. Torch-free.

When a change to :class:`~biasscope.results.AuditResult` changes its JSON form: raise
``SCHEMA_VERSION``, add the step from the previous version here, ship the new schema in
``biasscope/results/schemas/`` and store a file of the old version under ``tests/fixtures/``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from ..errors import DataLoadError

__all__ = ["SCHEMA_VERSION", "READABLE_SCHEMAS", "migrate_audit"]

#: the audit JSON's version; 3: ``example_ids``. The JSON Schema:
#: biasscope/results/schemas/audit.schema.json.
SCHEMA_VERSION = 3


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """2 added the reliance shares, ``reliance_measurable``, ``chance_accuracy``, the
    agreement analysis (unknown for a version 1 file) and the verdict ``unused``."""
    for modality in data.get("modalities", []):
        modality.setdefault("reliance_share", None)
    for key in ("reliance_measurable", "chance_accuracy", "agreement"):
        data.setdefault(key, None)
    return data


def _v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    """3 added ``example_ids``; version 2 per-example lists are in data order (positions)."""
    data.setdefault("example_ids", list(range(int(data["n_examples"]))))
    return data


#: version v -> the step that turns v's JSON form into v + 1's
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2, 2: _v2_to_v3}
READABLE_SCHEMAS = (*sorted(MIGRATIONS), SCHEMA_VERSION)


def migrate_audit(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (an audit's JSON form of any readable version) in the current version's form;
    ``data`` itself is not changed."""
    version = data.get("schema_version")
    if isinstance(version, bool) or version not in READABLE_SCHEMAS:
        newer = isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION
        hint = (
            "it was written by a newer biasscope: upgrade this one (pip install -U biasscope)"
            if newer else "re-run the audit with this version of biasscope"
        )
        raise DataLoadError(
            f"This audit JSON has schema version {version!r}; this biasscope reads versions "
            f"{', '.join(map(str, READABLE_SCHEMAS))}: {hint}."
        )
    if version == SCHEMA_VERSION:
        return data
    data = copy.deepcopy(data)
    while version != SCHEMA_VERSION:
        data = MIGRATIONS[version](data)
        version += 1
        data["schema_version"] = version
    return data
