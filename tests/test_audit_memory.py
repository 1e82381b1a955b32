"""The audit's precision and memory: bf16 forward passes on CPU (fp16 refused there), an
out-of-memory error halves max_rows and continues with the same numbers (and says so),
and max_rows="auto"."""

from __future__ import annotations

import pytest
import torch

import biasscope as bs
from biasscope.auditing import _state as _audit_state
from biasscope.errors import ConfigError
from _audit_compare import differences
from planted import Branches
from test_audit_invariance import OPTIONS, _data

MODS = [bs.Modality(f"m{i}", input=i) for i in range(3)]


def _audit(**kw) -> bs.AuditResult:
    return bs.audit(Branches((5, 3, 2), ignore=(2,)), _data(32), MODS, **{**OPTIONS, **kw})


def test_out_of_memory_halves_max_rows_and_keeps_the_numbers(monkeypatch):
    reference = _audit(max_rows=4096)
    real = _audit_state.EntropyState.update
    seen: list[int] = []

    def update(self, batch, *, max_rows=None):
        seen.append(max_rows)
        if max_rows > 40:  # a device that holds at most 40 rows
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, batch, max_rows=max_rows)

    monkeypatch.setattr(_audit_state.EntropyState, "update", update)
    calls = []
    result = _audit(max_rows=256, progress=lambda stage, done, total, info: calls.append((stage, done, total, info)))
    assert seen[:4] == [256, 128, 64, 32] and set(seen[4:]) == {32}  # later batches start at the halved size
    halved = [d for d in result.diagnostics if d.code == "max_rows_halved"]
    assert [d.severity for d in halved] == ["info"] * 3
    assert "max_rows 64; continued at 32" in halved[-1].message
    assert [c for c in calls if c[0] == "memory"] == [("memory", 128, 256, {"max_rows": 128}),
                                                      ("memory", 64, 128, {"max_rows": 64}),
                                                      ("memory", 32, 64, {"max_rows": 32})]
    a, b = reference.to_dict(), result.to_dict()
    a["diagnostics"] = b["diagnostics"] = []
    assert differences(a, b) == []


def test_other_errors_are_not_retried(monkeypatch):
    def update(self, batch, *, max_rows=None):
        raise ValueError("not memory")

    monkeypatch.setattr(_audit_state.EntropyState, "update", update)
    with pytest.raises(ValueError, match="not memory"):
        _audit()


def test_bf16_on_cpu_is_close_to_fp32_and_keeps_exact_zeros():
    fp32, bf16 = _audit(), _audit(precision="bf16")
    for a, b in zip(fp32.modalities, bf16.modalities):
        if a.name == "m2":
            assert b.functional_entropy.mean == 0.0 and all(v == 0.0 for v in b.per_example["variance"])
        else:
            assert b.functional_entropy.mean == pytest.approx(a.functional_entropy.mean, rel=0.1)
            assert b.functional_entropy.mean != a.functional_entropy.mean  # the reduced precision ran
    assert bf16.settings["precision"] == "bf16"


def test_fp16_on_cpu_is_refused_naming_the_parameter():
    with pytest.raises(ConfigError, match="precision"):
        _audit(precision="fp16")


def test_max_rows_auto_on_cpu_is_the_default():
    result = _audit(max_rows="auto")
    assert result.settings["max_rows"] == "auto"
    assert result.settings["max_rows_used"] == bs.AuditOptions().max_rows
