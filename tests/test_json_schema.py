"""The shipped JSON Schemas (biasscope/results/json_schema.py, biasscope/results/schemas/): valid draft
2020-12, versioned like the outputs; every output follows its schema (here, and after every
test through conftest's ``_outputs_follow_the_schema``); stored audits of older versions stay
readable by ``compare`` (biasscope/results/_migrations.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

jsonschema = pytest.importorskip("jsonschema")

from biasscope import ConfigError, DataLoadError  # noqa: E402
from biasscope.cli.main import app  # noqa: E402
from biasscope.compare import COMPARE_SCHEMA_VERSION, load_audit  # noqa: E402
from biasscope.results.json_schema import SCHEMAS, load_schema, schema_text, validate  # noqa: E402
from biasscope.results._migrations import READABLE_SCHEMAS, migrate_audit  # noqa: E402
from biasscope.results import SCHEMA_VERSION, VERDICTS, AuditResult  # noqa: E402
from biasscope.workflow import FIX_LOG_SCHEMA_VERSION  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
runner = CliRunner()


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_each_schema_is_valid_draft_2020_12_and_carries_its_version(name):
    schema = load_schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"urn:biasscope:schema:{name}:{SCHEMAS[name]}"
    assert schema["properties"]["schema_version"] == {"const": SCHEMAS[name]}
    assert json.loads(schema_text(name)) == schema


def test_the_schema_versions_are_those_the_outputs_are_written_in():
    assert SCHEMAS == {"audit": SCHEMA_VERSION, "compare": COMPARE_SCHEMA_VERSION, "fix": FIX_LOG_SCHEMA_VERSION}
    assert load_schema("audit")["$defs"]["verdict"]["enum"] == list(VERDICTS)


def test_an_audit_follows_the_schema_and_its_per_example_values_carry_ids(audit_result):
    data = json.loads(audit_result.to_json())
    validate(data, "audit")
    assert data["example_ids"] == list(range(data["n_examples"]))
    for m in data["modalities"]:
        assert all(len(v) == len(data["example_ids"]) for v in m["per_example"].values())


def test_a_broken_audit_is_refused_naming_the_place(audit_result):
    data = json.loads(audit_result.to_json())
    data["modalities"][1]["verdict"] = "maybe"
    with pytest.raises(ConfigError, match="modalities/1/verdict"):
        validate(data, "audit")
    del data["example_ids"]
    with pytest.raises(ConfigError, match="example_ids"):
        validate(data, "audit")
    with pytest.raises(ConfigError, match="schemas are audit, compare, fix"):
        load_schema("report")


@pytest.mark.parametrize("version", [1, 2])
def test_a_stored_older_audit_is_migrated_to_the_current_schema(version):
    stored = json.loads((FIXTURES / f"audit_v{version}.json").read_text())
    assert stored["schema_version"] == version and version in READABLE_SCHEMAS
    migrated = migrate_audit(stored)
    assert stored["schema_version"] == version  # the input is not changed
    validate(migrated, "audit")
    result = load_audit(FIXTURES / f"audit_v{version}.json")
    assert result.schema_version == SCHEMA_VERSION and result.example_ids == list(range(24))
    assert result.ignored == ["b"] and result["b"].share == 0.0
    validate(json.loads(result.to_json()), "audit")  # read old, written new


def test_compare_reads_an_old_baseline_against_a_new_audit(tmp_path):
    new = tmp_path / "new.json"
    AuditResult.load(FIXTURES / "audit_v2.json").save(new)
    res = runner.invoke(app, ["compare", str(FIXTURES / "audit_v1.json"), str(new), "--max-drop-accuracy", "0.02",
                                 "--json", str(tmp_path / "compare.json")])
    assert res.exit_code == 0, res.output
    document = json.loads((tmp_path / "compare.json").read_text())
    validate(document, "compare")
    assert document["status"] == "passed_ungated" and document["ungated"] == {"b": "ignored"}
    assert document["before"]["verdicts"] == document["after"]["verdicts"] == {"a": "dominant", "b": "ignored"}


def test_compare_json_records_a_failed_gate(tmp_path):
    path = tmp_path / "compare.json"
    base = str(FIXTURES / "audit_v2.json")
    res = runner.invoke(app, ["compare", base, base, "--fail-if-ignored", "--json", str(path)])
    assert res.exit_code == 1
    document = json.loads(path.read_text())
    assert document["status"] == "failed" and document["failed"] and not document["gates"][0]["passed"]


@pytest.mark.parametrize("version", [0, 4, "2", True, None])
def test_unreadable_versions_say_what_to_do(version):
    data = json.loads((FIXTURES / "audit_v2.json").read_text())
    data["schema_version"] = version
    match = "upgrade this one" if version == 4 else "re-run the audit"
    with pytest.raises(DataLoadError, match=match):
        AuditResult.from_dict(copy.deepcopy(data))


def test_a_fix_training_log_follows_the_schema():
    log = {
        "schema_version": FIX_LOG_SCHEMA_VERSION, "lambda": 0.5, "calibration": None, "steps": 2, "best_step": 1,
        "stopped_early": False, "device": "cpu", "target": {"modality": "color"}, "guard": None,
        "reliance_after": {"image": 0.3, "color": None}, "diagnostics": [], "settings": {},
        "history": [{"step": 0, "epoch": 0, "loss": 1.2, "ce": 1.1, "reg": 0.1, "lambda": 0.5, "scores": {"image": 2.0}}],
    }
    validate(log, "fix")
    log["history"][0]["step"] = -1
    with pytest.raises(ConfigError, match="history/0/step"):
        validate(log, "fix")
