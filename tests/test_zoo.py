"""The verdict zoo (tests/zoo.py): every planted model gets the verdict and the diagnostics
its construction implies, or the error its output calls for."""

from __future__ import annotations

import pytest
import torch

from zoo import CHECKED, cases, run_case

CASES = cases()


def test_the_zoo_is_large_and_varied():
    assert len(CASES) >= 15
    kinds = {c.name for c in CASES}
    for needed in ("chance_labels", "unreachable_site", "features_output", "tuple_output",
                   "similarity_output", "shortcut", "noise_modality", "three_modalities",
                   "five_modalities", "hf_clip_head"):
        assert needed in kinds
    covered = {code for c in CASES for code in c.diagnostics}
    assert covered == set(CHECKED)  # every checked diagnostic is expected somewhere


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_zoo_case(case):
    torch.set_num_threads(1)
    outcome = run_case(case)
    assert outcome.problems(case) == []
