"""Fix checkpoints: tensors + JSON round-trip exactly, and no pickle is ever opened."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

from biasscope.fixing._checkpoint import LEGACY_CHECKPOINT_NAME, CheckpointStore, pack, unpack
from biasscope.errors import ConfigError


def test_nested_state_round_trips(tmp_path):
    opt = torch.optim.Adam([torch.nn.Parameter(torch.ones(3))], lr=0.1)
    opt.param_groups[0]["params"][0].grad = torch.ones(3)
    opt.step()
    state = {
        "optimizer": opt.state_dict(),  # int keys, tuples (betas), 0-dim tensors
        "rng": torch.get_rng_state(),
        "nan": float("nan"), "inf": float("-inf"), "none": None, "flag": True,
        "history": [{"step": 1, "scores": {"a": 0.5}}],
    }
    store = CheckpointStore(tmp_path)
    store.save(state)
    back = store.load()
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert set(back["optimizer"]["state"]) == {0}
    exp = back["optimizer"]["state"][0]["exp_avg"]
    assert torch.equal(exp, state["optimizer"]["state"][0]["exp_avg"])
    assert torch.equal(back["rng"], state["rng"]) and back["rng"].dtype == torch.uint8
    assert math.isnan(back["nan"]) and back["inf"] == float("-inf")
    assert back["none"] is None and back["flag"] is True and back["history"] == state["history"]
    skeleton, tensors = pack({"x": (1, 2)})
    assert unpack(skeleton, tensors) == {"x": (1, 2)} and not tensors


class Marker:
    def __reduce__(self):
        return (open, ("/tmp/biasscope-pickle-marker", "w"))


def test_a_pickle_is_never_loaded(tmp_path):
    (tmp_path / LEGACY_CHECKPOINT_NAME).write_bytes(pickle.dumps(Marker()))
    with pytest.raises(ConfigError, match="earlier version"):
        CheckpointStore(tmp_path).load()
    store = CheckpointStore(tmp_path)
    store.path.write_bytes(pickle.dumps(Marker()))  # a pickle under the new name
    with pytest.raises(ConfigError, match="Cannot read the checkpoint"):
        store.load()
    import os

    assert not os.path.exists("/tmp/biasscope-pickle-marker")


def test_truncated_checkpoint_is_refused(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save({"w": torch.ones(100)})
    store.path.write_bytes(store.path.read_bytes()[:-50])
    with pytest.raises(ConfigError, match="resume=False"):
        store.load()
