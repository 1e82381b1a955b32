"""The audit's numbers belong to the examples: the same audit at batch sizes 7 and 64 and
max_rows 50 and 4096 gives every measure (means, per-example values, intervals, joint
check, permutation scores, Shapley values, verdicts) to 1e-5 relative."""

from __future__ import annotations

import pytest
import torch

import biasscope as bs
from _audit_compare import count_numbers, differences
from planted import Branches

N = 70
OPTIONS = dict(samples=6, permutation_repeats=3, device="cpu", seed=3)


def _data(batch: int) -> list[tuple]:
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(N, d, generator=g) for d in (5, 3, 2)]
    model = Branches((5, 3, 2), ignore=(2,))
    label = model(*xs).argmax(1)
    label[::5] = (label[::5] + 1) % 4  # not perfectly accurate: reliance is measurable either way
    return [(*(x[i : i + batch] for x in xs), label[i : i + batch]) for i in range(0, N, batch)]


def _audit(batch: int, max_rows: int) -> dict:
    mods = [bs.Modality(f"m{i}", input=i) for i in range(3)]
    return bs.audit(Branches((5, 3, 2), ignore=(2,)), _data(batch), mods, max_rows=max_rows, **OPTIONS).to_dict()


@pytest.fixture(scope="module")
def reference() -> dict:
    return _audit(64, 4096)


@pytest.mark.parametrize(("batch", "max_rows"), [(7, 50), (7, 4096), (64, 50)])
def test_batch_size_and_max_rows_do_not_change_any_number(reference, batch, max_rows):
    other = _audit(batch, max_rows)
    assert differences(reference, other) == []
    assert count_numbers(reference) > 1000  # per-example values included
    # the ignored modality stays exactly zero, and the verdicts are those of the reference
    ignored = next(m for m in other["modalities"] if m["name"] == "m2")
    assert all(v == 0.0 for v in ignored["per_example"]["functional_entropy"])
    assert other["verdicts"] == reference["verdicts"]


def test_a_different_seed_changes_the_numbers(reference):
    mods = [bs.Modality(f"m{i}", input=i) for i in range(3)]
    other = bs.audit(Branches((5, 3, 2), ignore=(2,)), _data(64), mods, **{**OPTIONS, "seed": 4}).to_dict()
    assert differences(reference, other)  # the comparison can fail
