"""Precision contexts, out-of-memory retries and memory-sized chunks (on CPU, with fakes)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from biasscope.runtime._device import (
    auto_max_rows, autocast_for, is_out_of_memory, run_with_oom_retry,
)
from biasscope.errors import ConfigError, ModelOutputError
from biasscope.runtime.options import AuditOptions

torch.set_num_threads(1)


def _matmul_dtype() -> torch.dtype:
    return (torch.ones(2, 3) @ torch.ones(3, 2)).dtype


def test_fp32_is_a_no_op_and_bf16_autocasts_on_cpu():
    with autocast_for("cpu", "fp32"):
        assert _matmul_dtype() == torch.float32
    with autocast_for(torch.device("cpu"), "bf16"):
        assert _matmul_dtype() == torch.bfloat16
    assert _matmul_dtype() == torch.float32  # the context ends


def test_fp16_on_cpu_and_unknown_precisions_are_refused_naming_precision():
    with pytest.raises(ConfigError, match="precision 'fp16' is not available on cpu"):
        autocast_for("cpu", "fp16")
    with pytest.raises(ConfigError, match="precision must be one of fp32, bf16, fp16"):
        autocast_for("cpu", "int8")


def _fake_oom_above(limit: int, calls: list[int], error: Exception | None = None):
    def fn(rows: int) -> str:
        calls.append(rows)
        if rows > limit:
            raise error or torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return f"done at {rows}"

    return fn


def test_oom_halves_the_rows_reports_each_halving_and_retries():
    calls, halvings = [], []
    result = run_with_oom_retry(_fake_oom_above(100, calls), 1000, lambda old, new: halvings.append((old, new)))
    assert result == "done at 62"
    assert calls == [1000, 500, 250, 125, 62]
    assert halvings == [(1000, 500), (500, 250), (250, 125), (125, 62)]


def test_cpu_allocation_failures_count_as_out_of_memory():
    cpu_oom = RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
    calls: list[int] = []
    assert run_with_oom_retry(_fake_oom_above(3, calls, cpu_oom), 8) == "done at 2"
    assert calls == [8, 4, 2]
    assert not is_out_of_memory(RuntimeError("shape mismatch")) and not is_out_of_memory(ValueError("out of memory"))


def test_oom_at_one_row_is_an_error_that_says_so():
    calls: list[int] = []
    with pytest.raises(ModelOutputError, match="Out of memory even at max_rows 1"):
        run_with_oom_retry(_fake_oom_above(0, calls), 5)
    assert calls == [5, 2, 1]


def test_other_errors_pass_through_without_a_retry():
    calls: list[int] = []

    def fn(rows: int) -> None:
        calls.append(rows)
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        run_with_oom_retry(fn, 64)
    assert calls == [64]


def test_auto_max_rows_on_cpu_is_the_options_default():
    assert auto_max_rows(nn.Linear(2, 2), 1024, "cpu") == AuditOptions().max_rows


def test_auto_max_rows_on_cuda_fits_a_fraction_of_the_free_memory(monkeypatch):
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 * gib, 16 * gib))
    model = nn.Linear(1024, 1024)  # 4 MiB + 4 KiB of float32 parameters, still on the CPU
    params = (1024 * 1024 + 1024) * 4
    rows = auto_max_rows(model, 2**20, torch.device("cuda:0"), fraction=0.5)
    assert rows == int((8 * gib - params) * 0.5) // 2**20 == 4093
    assert auto_max_rows(model, 64 * gib, torch.device("cuda:0")) == 1  # never below one row
    assert auto_max_rows(model, 1, torch.device("cuda:0"), cap=4096) == 4096
