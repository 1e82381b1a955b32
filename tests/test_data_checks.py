"""Data checks on data whose problems are planted."""

from __future__ import annotations

import pytest
import torch

from biasscope.runtime._batch import split_batch
from biasscope.auditing.data_checks import (
    data_checks, duplicate_checks, feature_checks, label_checks, std_checks,
)
from biasscope.errors import DataLoadError
from biasscope.measuring.modality import Modality
from biasscope.results import SEVERITIES

MODS = [Modality("img", input="img"), Modality("tab", input="tab")]


def _data(n=40, *, seed=0, label=None, **override):
    g = torch.Generator().manual_seed(seed)
    values = {
        "img": torch.randn(n, 2, 3, 3, generator=g),
        "tab": torch.randn(n, 4, generator=g),
        "label": torch.arange(n) % 4 if label is None else label,
    }
    values.update(override)
    return [split_batch({k: v[i : i + 16] for k, v in values.items()}) for i in range(0, n, 16)]


def _codes(diags):
    return {d.code: d for d in diags}


def test_clean_data_gives_only_the_label_balance():
    diags = data_checks(_data(), MODS, n_classes=4)
    assert [d.code for d in diags] == ["label_balance"]
    assert "25.0%" in diags[0].message and "0: 10" in diags[0].message
    assert all(d.severity in SEVERITIES for d in diags)


def test_chance_and_imbalance():
    label = torch.zeros(44, dtype=torch.long)
    label[:4] = 1  # 40 vs 4: 10x
    diags = _codes(data_checks(_data(44, label=label), MODS, n_classes=2))
    assert "90.9%" in diags["label_balance"].message
    assert diags["labels_imbalanced"].severity == "warning"
    one = _codes(label_checks(torch.zeros(8, dtype=torch.long)))
    assert "single_class" in one and "100.0%" in one["label_balance"].message


def test_labels_out_of_the_class_range_raise():
    with pytest.raises(DataLoadError, match=r"\[0, 3\].*0\.\.2"):
        data_checks(_data(), MODS, n_classes=3)
    with pytest.raises(DataLoadError, match="-1"):
        label_checks(torch.tensor([0, -1, 1]))


def test_constant_features_and_constant_modality():
    g = torch.Generator().manual_seed(1)
    img = torch.randn(40, 2, 3, 3, generator=g)
    img[:, 0] = 0.5  # 9 of 18 features constant
    tab = torch.ones(40, 4) * torch.tensor([1.0, 2, 3, 4])  # the same in every example
    diags = _codes(data_checks(_data(img=img, tab=tab), MODS))
    assert diags["constant_features"].modality == "img"
    assert "50.0%" in diags["constant_features"].message and diags["constant_features"].severity == "info"
    assert diags["modality_constant"].modality == "tab" and diags["modality_constant"].severity == "error"
    # a layer site's representation given directly
    layer = feature_checks({"enc": torch.zeros(10, 3)})
    assert [d.code for d in layer] == ["modality_constant"]
    near = feature_checks({"x": torch.cat([torch.randn(10, 1), 1.0 + 1e-9 * torch.randn(10, 1)], 1)})
    assert [d.code for d in near] == ["constant_features"]


def test_duplicates_and_conflicting_labels():
    g = torch.Generator().manual_seed(2)
    img, tab = torch.randn(40, 2, 3, 3, generator=g), torch.randn(40, 4, generator=g)
    img[30:], tab[30:] = img[:10], tab[:10]  # 10 copies; labels 30..39 % 4 vs 0..9 % 4
    diags = _codes(data_checks(_data(img=img, tab=tab), MODS))
    dup = diags["duplicate_examples"]
    assert "10 of 40" in dup.message and dup.severity == "warning"
    assert "duplicates_conflicting_labels" in diags  # 30 % 4 = 2 != 0
    same = torch.arange(40) % 10  # copies keep their label: 30..39 % 10 == 0..9 % 10
    diags = _codes(data_checks(_data(img=img, tab=tab, label=same), MODS))
    assert "duplicate_examples" in diags and "duplicates_conflicting_labels" not in diags
    assert duplicate_checks(_data()) == []


def test_non_finite_modality_raises_and_other_inputs_warn():
    img = torch.randn(40, 2, 3, 3)
    img[3, 0, 0, 0] = float("nan")
    with pytest.raises(DataLoadError, match="'img'.*1 non-finite"):
        data_checks(_data(img=img), MODS)
    extra = torch.randn(40, 2)
    extra[5, 1] = float("inf")
    diags = _codes(data_checks(_data(extra=extra), MODS))
    assert diags["non_finite_input"].severity == "warning" and "'extra'" in diags["non_finite_input"].message


def test_unlabelled_data_skips_label_checks():
    batches = [split_batch({"img": torch.randn(8, 2, 3, 3), "tab": torch.randn(8, 4)}, label_key=None)]
    assert data_checks(batches, MODS) == []


def test_std_checks_match_feature_checks_on_the_noise_scales():
    h = torch.randn(30, 2, 4)
    h[:, 1] = 2.0
    stds = {"enc": h.std(dim=0, unbiased=False)}
    (d,) = std_checks(stds)
    assert d.code == "constant_features" and "50.0%" in d.message and d.modality == "enc"
    assert [x.code for x in std_checks({"z": torch.zeros(3)})] == ["modality_constant"]
    assert std_checks({"ok": torch.ones(5)}) == []
