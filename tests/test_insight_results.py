"""JSON round trip and the derived fractions of the probe and attribution results."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest

from biasscope.results import (
    Attribution, ProbeResult, above_chance, attribution_from_dict, probe_from_dict,
)
from biasscope.results._audit import Estimate, _finite


def _probe(permuted=Estimate(0.55, 0.5, 0.6)):
    return ProbeResult("m", "input:0", Estimate(0.6, 0.5, 0.7), 0.2, 5, 100, 4, 4, 0.9, permuted)


def test_round_trip_through_json():
    p = _probe()
    assert probe_from_dict(json.loads(json.dumps(asdict(p)))) == p
    a = Attribution("t", "layer:emb", 4, 2, "integrated_gradients", "tokens", [0.5, -1.0], [2, 6], ["a", "b"], 1e-4)
    assert attribution_from_dict(json.loads(json.dumps(asdict(a)))) == a
    assert a.array.tolist() == [0.5, -1.0]
    # nan bounds are written as null (results._finite) and read back as nan
    q = _probe(Estimate(0.55, math.nan, math.nan))
    back = probe_from_dict(json.loads(json.dumps(_finite(asdict(q)))))
    assert math.isnan(back.model_accuracy_permuted.ci_low) and back.model_accuracy_permuted.mean == 0.55


def test_available_used_and_informative():
    p = _probe()
    assert p.available == pytest.approx(0.5) and p.used == pytest.approx(0.5) and p.informative
    assert _probe(Estimate(0.95, 0.9, 1.0)).used == 0.0  # permuting helped: clipped at 0
    assert _probe(Estimate(0.0, 0.0, 0.0)).used == 1.0  # below chance: clipped at 1
    at_chance = ProbeResult("m", "input:0", Estimate(0.25, 0.19, 0.31), 0.2, 5, 100, 4, 4, 0.9, Estimate(0.9, 0.9, 0.9))
    assert not at_chance.informative and at_chance.available == pytest.approx(0.0625)
    assert above_chance(0.5, 0.5) == 0.0 and above_chance(1.0, 1.0) == 0.0
