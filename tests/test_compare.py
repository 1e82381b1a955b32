"""`biasscope compare`: gates as exit codes, each way; refusing unrelated audits."""

from __future__ import annotations

import copy

import pytest
from typer.testing import CliRunner

from biasscope.cli.main import app
from biasscope.compare import evaluate_gates, parse_min_share
from biasscope.errors import ConfigError

runner = CliRunner()


@pytest.fixture()
def pair(audit_result, tmp_path):
    """before: `b` ignored (the planted fixture); after: `b` used, accuracy 0.05 lower."""
    before = copy.deepcopy(audit_result)
    after = copy.deepcopy(audit_result)
    a, b = after["a"], after["b"]
    a.share, b.share = 0.7, 0.3
    a.verdict, b.verdict = "ok", "ok"
    after.accuracy = before.accuracy - 0.05
    before.save(tmp_path / "before.json")
    after.save(tmp_path / "after.json")
    return tmp_path / "before.json", tmp_path / "after.json"


def _compare(before, after, *args):
    return runner.invoke(app, ["compare", str(before), str(after), *args])


@pytest.mark.parametrize(
    "args, forward, backward",
    [
        (["--fail-if-ignored"], 0, 1),  # after has no ignored modality; before has `b` ignored
        (["--max-drop-accuracy", "0.1"], 0, 0),
        (["--max-drop-accuracy", "0.01"], 1, 0),  # forward drops 0.05; backward gains it
        (["--min-share", "b=0.2"], 0, 1),
        (["--min-share", "b=0.5"], 1, 1),
        ([], 0, 0),
    ],
)
def test_each_gate_both_ways(pair, args, forward, backward):
    before, after = pair
    assert _compare(before, after, *args).exit_code == forward
    assert _compare(after, before, *args).exit_code == backward


def test_html_page_and_gate_lines(pair, tmp_path):
    before, after = pair
    res = _compare(before, after, "--min-share", "b=0.5", "--out", str(tmp_path / "c.html"), "--plotlyjs", "cdn")
    assert res.exit_code == 1
    assert "FAIL share of b >= 0.5" in res.output
    html = (tmp_path / "c.html").read_text()
    assert "share of b" in html and "fail" in html.lower()


def test_bad_inputs_exit_2(pair, tmp_path):
    before, after = pair
    assert _compare(before, tmp_path / "missing.json").exit_code == 2
    assert _compare(before, after, "--min-share", "b").exit_code == 2
    res = _compare(before, after, "--min-share", "zzz=0.1")
    assert res.exit_code == 2 and "zzz" in res.output
    (tmp_path / "junk.json").write_text("[1, 2")
    assert _compare(before, tmp_path / "junk.json").exit_code == 2


def test_unrelated_audits_are_refused(audit_result):
    other = copy.deepcopy(audit_result)
    other.modalities[1].name = "text"
    with pytest.raises(ConfigError, match="different modalities"):
        evaluate_gates(audit_result, other, fail_if_ignored=True)


def test_parse_min_share():
    assert parse_min_share(["text=0.2", " image = 0.5"]) == {"text": 0.2, "image": 0.5}
    with pytest.raises(ConfigError, match="MODALITY=SHARE"):
        parse_min_share(["text=lots"])
