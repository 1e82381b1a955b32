"""AuditResult JSON round trip, schema version, atomic writes."""

from __future__ import annotations

import json

import pytest

import biasscope as bs
from biasscope.runtime._files import write_atomic
from biasscope.results import SCHEMA_VERSION

from planted import Branches, labelled_by, tuple_data


@pytest.fixture(scope="module")
def result():
    model = Branches((5, 3), ignore={1})
    return bs.audit(model, labelled_by(model, tuple_data((5, 3))), [bs.Modality("a", input=0), bs.Modality("b", layer="encoders.1")], samples=8, permutation_repeats=3)


def test_json_round_trip(result, tmp_path):
    path = result.save(tmp_path / "audit.json")
    data = json.loads(path.read_text())
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["ignored"] == ["b"]
    assert [m["name"] for m in data["modalities"]] == ["a", "b"]
    for m in data["modalities"]:
        assert {"name", "verdict", "share"} <= set(m)
        assert set(m["functional_entropy"]) == {"mean", "ci_low", "ci_high"}
    again = bs.AuditResult.load(path)
    assert again.to_dict() == result.to_dict()
    assert again["b"].permutation == result["b"].permutation


def test_wrong_schema_and_bad_files(tmp_path):
    bad = tmp_path / "a.json"
    bad.write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(bs.DataLoadError, match="schema version"):
        bs.AuditResult.load(bad)
    bad.write_text("{not json")
    with pytest.raises(bs.DataLoadError, match="not valid JSON"):
        bs.AuditResult.load(bad)
    with pytest.raises(bs.DataLoadError, match="No audit JSON"):
        bs.AuditResult.load(tmp_path / "missing.json")


def test_write_atomic_leaves_nothing_on_failure(tmp_path):
    class Boom(str):
        pass

    target = tmp_path / "out.txt"
    write_atomic(target, "old")
    with pytest.raises(TypeError):
        write_atomic(target, 12345)  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
