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


def _with(result, **changes):
    out = copy.deepcopy(result)
    for name, verdict in changes.items():
        out[name].verdict = verdict
    return out


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--max-drop-accuracy", "nan"], "--max-drop-accuracy must be a finite number"),
        (["--max-drop-accuracy", "-1"], "--max-drop-accuracy must be a finite number >= 0"),
        (["--max-drop-accuracy", "inf"], "--max-drop-accuracy"),
        (["--min-share", "b=nan"], "--min-share 'b=nan': the share must be a number in [0, 1]"),
        (["--min-share", "b=2"], "in [0, 1]"),
        (["--min-reliance-share", "b=-0.1"], "--min-reliance-share"),
    ],
)
def test_gate_values_rejected_not_failed(pair, args, needle):
    """A nonsense bound is a usage error (2) naming the flag, never a failed gate (1)."""
    before, after = pair
    res = _compare(before, after, *args)
    assert res.exit_code == 2, res.output
    assert needle in " ".join(res.output.split())


def test_out_equal_to_an_input_is_refused_before_any_work(pair):
    before, after = pair
    original = after.read_bytes()
    for target in (after, before):
        res = _compare(before, after, "--out", str(target))
        assert res.exit_code == 2 and "is one of the inputs" in " ".join(res.output.split())
    assert after.read_bytes() == original


def test_json_array_and_directory_have_their_own_message(pair, tmp_path):
    before, _ = pair
    (tmp_path / "list.json").write_text("[]")
    res = _compare(before, tmp_path / "list.json")
    assert res.exit_code == 2 and "holds a JSON list, not an object" in " ".join(res.output.split())
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "audit.json").write_text(before.read_text())
    res = _compare(before, tmp_path / "run")
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "is a folder" in text and "give that file" in text
    assert "unexpected" not in text


def test_fail_if_weak_and_headline(audit_result, tmp_path):
    """`after` with b weak: --fail-if-ignored passes but the headline is not a plain pass
    and names b; --fail-if-weak fails."""
    before = _with(audit_result, a="ok", b="ok")
    after = _with(audit_result, a="ok", b="weak")
    before.save(tmp_path / "b.json")
    after.save(tmp_path / "a.json")
    res = _compare(tmp_path / "b.json", tmp_path / "a.json", "--fail-if-ignored")
    text = " ".join(res.output.split())
    assert res.exit_code == 0 and "not gated: b is weak" in text and "PASSED" not in text
    res = _compare(tmp_path / "b.json", tmp_path / "a.json", "--fail-if-weak")
    assert res.exit_code == 1 and "b is weak" in res.output
    res = _compare(tmp_path / "b.json", tmp_path / "b.json", "--fail-if-weak")
    assert res.exit_code == 0 and "PASSED" in res.output


def test_headline_states():
    from biasscope.compare import Gate, headline

    class R:
        ignored = ["t"]
        modalities = [type("M", (), {"name": "t", "verdict": "unused"})(),
                      type("M", (), {"name": "i", "verdict": "weak"})()]

        def __getitem__(self, name):
            return next(m for m in self.modalities if m.name == name)

    ok, bad = Gate("g", True, ""), Gate("h", False, "")
    assert headline([ok, bad], R()).status == "failed"
    assert headline([ok], R()).ungated == {"t": "unused", "i": "weak"}
    assert headline([ok], R(), gated_levels=["ignored"]).ungated == {"i": "weak"}
    assert headline([ok], R(), gated_levels=["weak"]).status == "passed"
    assert headline([], R()).status == "no_gates"


def test_min_reliance_share(audit_result):
    """`b` is ignored by construction: its reliance share is ~0, `a`'s ~1."""
    from biasscope.compare import compare_gates
    from biasscope.auditing.verdict import reliance_shares

    shares = reliance_shares(audit_result.modalities)
    assert shares["a"] > 0.9 and shares["b"] < 0.1
    gates = compare_gates(audit_result, audit_result, min_reliance_share={"a": 0.5, "b": 0.2})
    assert [g.passed for g in gates] == [True, False]
    no_perm = copy.deepcopy(audit_result)
    for m in no_perm.modalities:
        m.permutation = None
    with pytest.raises(ConfigError, match="needs permutation scores"):
        compare_gates(audit_result, no_perm, min_reliance_share={"a": 0.5})


def test_audits_of_different_data_refused_unless_allowed(audit_result, tmp_path):
    a, b = copy.deepcopy(audit_result), copy.deepcopy(audit_result)
    a.provenance["data"] = {"path": "val.pt", "sha256": "1" * 64}
    b.provenance["data"] = {"path": "val.pt", "sha256": "2" * 64}
    a.save(tmp_path / "a.json")
    b.save(tmp_path / "b.json")
    res = _compare(tmp_path / "a.json", tmp_path / "b.json")
    assert res.exit_code == 2 and "different data" in res.output and "--allow-different-data" in res.output
    res = _compare(tmp_path / "a.json", tmp_path / "b.json", "--allow-different-data")
    assert res.exit_code == 0 and "different data" in res.output  # still warned


def test_the_page_is_not_a_plain_pass_while_a_modality_is_weak(audit_result):
    """One passing gate that did not ask about verdicts: the page says the gate passed *and*
    that b is still weak (not "All 1 gates passed.")."""
    from biasscope.compare import Gate
    from biasscope.render import render_compare_html

    weak = _with(audit_result, a="ok", b="weak")
    html = " ".join(render_compare_html(weak, weak, gates=[Gate("fix guard", True, "")], plotlyjs="cdn").split())
    assert "The gate passed, but <code>b</code> is still weak (no gate asked about it)." in html
    assert "All 1 gates" not in html
    fine = _with(audit_result, a="ok", b="ok")
    two = [Gate("g1", True, ""), Gate("g2", True, "")]
    assert "All 2 gates passed." in " ".join(render_compare_html(fine, fine, gates=two, plotlyjs="cdn").split())
    gated = [Gate("no modality ignored or weak", False, "b is weak")]
    assert "1 of 1 gate failed." in " ".join(render_compare_html(weak, weak, gates=gated, plotlyjs="cdn").split())
