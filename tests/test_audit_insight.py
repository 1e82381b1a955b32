"""The audit with the steps of issue #14 (biasscope/auditing/_insight.py): data checks first,
the probe's two planted readings end to end, the attributions, the options that skip them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import biasscope as bs
from biasscope.results import AuditResult

FAST = dict(samples=4, permutation_repeats=4, shapley=False, tensorization=False, seed=0, device="cpu")
CLASSES = 4


class ReadsShortcut(nn.Module):
    """Reads only ``shortcut`` (a one-hot of the label): ``text`` and ``noise`` are
    structurally ignored (no path from them to the logits)."""

    def forward(self, shortcut, text, noise):
        return 5.0 * shortcut + 0.0 * (text.sum(1, keepdim=True) + noise.sum(1, keepdim=True))


def _data(n: int = 240, batch: int = 60, seed: int = 0) -> list[tuple]:
    """``text`` carries the label (class mean + noise, a probe reads it at ~100%);
    ``noise`` is independent of it (a probe is at chance)."""
    g = torch.Generator().manual_seed(seed)
    label = torch.arange(n) % CLASSES
    label = label[torch.randperm(n, generator=g)]
    centres = torch.randn(CLASSES, 6, generator=g) * 3
    text = centres[label] + torch.randn(n, 6, generator=g)
    noise = torch.randn(n, 6, generator=g)
    shortcut = nn.functional.one_hot(label, CLASSES).float()
    return [(shortcut[i:i + batch], text[i:i + batch], noise[i:i + batch], label[i:i + batch])
            for i in range(0, n, batch)]


MODS = [bs.Modality("shortcut", input=0), bs.Modality("text", input=1), bs.Modality("noise", input=2)]


@pytest.fixture(scope="module")
def planted() -> AuditResult:
    torch.manual_seed(0)
    return bs.audit(ReadsShortcut(), _data(), MODS, explain=2, **FAST)


def test_ignored_informative_modality_is_information_left_unused(planted):
    assert planted["text"].verdict == "ignored" and planted["noise"].verdict == "ignored"
    text = next(p for p in planted.probes if p.modality == "text")
    assert text.informative and text.accuracy.mean > 0.9 and text.chance == 0.25
    assert text.model_accuracy == 1.0 and text.model_accuracy_permuted.mean == 1.0 and text.used == 0.0
    unused = [d for d in planted.diagnostics if d.code == "information_unused"]
    assert [d.modality for d in unused] == ["text"] and unused[0].severity == "warning"
    assert "information left unused" in unused[0].message
    assert "`text`, which alone predicts the label at" in planted.sentence
    assert "(chance 25%): information left unused" in planted.sentence


def test_ignored_noise_modality_is_ignoring_it_is_right(planted):
    noise = next(p for p in planted.probes if p.modality == "noise")
    assert not noise.informative and noise.accuracy.ci_low <= 0.25 and noise.available < 0.2
    right = [d for d in planted.diagnostics if d.code == "ignoring_is_right"]
    assert [d.modality for d in right] == ["noise"] and right[0].severity == "info"
    assert "`noise`, which carries no label information (probe at chance): ignoring it is right" in planted.sentence
    shortcut = next(p for p in planted.probes if p.modality == "shortcut")
    # shuffled, the model falls to chance (a random one-hot): all of its information used
    assert shortcut.accuracy.mean == 1.0 and shortcut.used > 0.9
    assert shortcut.model_accuracy_permuted.ci_low <= 0.25 <= shortcut.model_accuracy_permuted.ci_high + 0.05


def test_data_checks_come_first_and_attributions_follow_the_modality_used(planted):
    assert planted.diagnostics[0].code == "label_balance" and "25.0%" in planted.diagnostics[0].message
    assert len(planted.attributions) == 2
    assert [a.selected for a in planted.attributions] == ["highest", "lowest"]
    for a in planted.attributions:  # the only modality the output depends on
        assert a.modality == "shortcut" and a.kind == "vector" and len(a.values) == CLASSES
        # integrated gradients of 5 * onehot: all the attribution on the label's own feature
        assert max(range(CLASSES), key=lambda i: abs(a.values[i])) == a.target
    again = AuditResult.from_dict(planted.to_dict())
    assert again.probes == planted.probes and again.attributions == planted.attributions
    assert planted.to_dict()["probes"][1]["informative"] is True


def test_probe_and_explain_can_be_turned_off_and_need_labels():
    data = _data(n=80, batch=40)
    off = bs.audit(ReadsShortcut(), data, MODS, probe=False, explain=0, **FAST)
    assert off.probes == [] and off.attributions == []
    assert not any(d.code in ("information_unused", "ignoring_is_right") for d in off.diagnostics)
    assert off.sentence.startswith("The model ignores `text` and `noise`")
    unlabelled = bs.audit(ReadsShortcut(), [b[:3] for b in data], MODS, label_key=None, explain=1, **FAST)
    assert unlabelled.probes == [] and len(unlabelled.attributions) == 1


def test_a_non_finite_modality_input_stops_the_audit_before_measuring():
    data = _data(n=80, batch=40)
    data[1][1][3, 2] = float("nan")
    with pytest.raises(bs.DataLoadError, match="text"):
        bs.audit(ReadsShortcut(), data, MODS, **FAST)
