"""A 20,000-example audit runs in bounded memory: its peak resident set grows with the
examples no faster than what the audit must keep per example (estimated below), measured
against a 2,000-example audit in a fresh process each."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

FEATURES = 4  # per modality; two modalities
MODALITIES = 2
MEASURES = 4  # functional entropy, Fisher bound, variance, Poincare bound
JOINT = 4  # the tensorization's four per-example values
REPEATS = 2

CHILD = textwrap.dedent(
    f"""
    import sys
    import torch
    from torch import nn
    import biasscope as bs

    torch.set_num_threads(1)
    n, batch = int(sys.argv[1]), 1000

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head = nn.Linear({FEATURES}, 8), nn.Linear({FEATURES}, 8), nn.Linear(16, 3)

        def forward(self, a, b):
            return self.head(torch.cat([torch.tanh(self.a(a)), torch.tanh(self.b(b))], 1))

    torch.manual_seed(0)
    net = Net()
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(n, {FEATURES}, generator=g), torch.randn(n, {FEATURES}, generator=g)
    with torch.no_grad():
        label = net(a, b).argmax(1)
    data = [{{"a": a[i:i + batch], "b": b[i:i + batch], "label": label[i:i + batch]}} for i in range(0, n, batch)]
    result = bs.audit(net, data, [bs.Modality("a", input="a"), bs.Modality("b", input="b")], samples=4,
                      permutation_repeats={REPEATS}, shapley=False, probe=False, explain=0)
    assert len(result.modalities[0].per_example["variance"]) == n
    print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")))
    """
)


def _per_example_bytes() -> int:
    """What the audit must hold per example (bytes), counted from its state:
    the caller's data (float32 features, int64 label); the permutation pool (every example's
    float32 representation, ``AuditSet.pool``, twice while its batches are concatenated);
    per example the M x 4 measures, 4 joint values and the prediction (float64/int64 tensors,
    twice while ``EntropyState.values`` concatenates them to numpy); the labels as a tensor
    and as a list, the predictions as a list (8 B pointers to cached small ints); the
    result's per-example lists of Python floats (8 B pointer + 24 B float); R permutation
    index vectors (int64)."""
    data = MODALITIES * FEATURES * 4 + 8
    pool = 2 * MODALITIES * FEATURES * 4
    measured = 2 * (MODALITIES * MEASURES * 8 + JOINT * 8 + 8)
    lists = 8 + 8 + 8 + 8
    result = MODALITIES * MEASURES * (8 + 24)
    permutation = REPEATS * 8
    return data + pool + measured + lists + result + permutation  # 616 B with the values above


# scipy's bootstrap (biasscope.measuring._stats) resamples in batches of 4,000,000 values whatever n is;
# its transient peak (~100-130 MB) moves by up to ~32 MB with how n divides 4,000,000
# (measured: 100 MB at n=2,000, 132 MB at 20,000, 109 MB at 60,000): a fixed allowance, not
# growth per example.
BOOTSTRAP_ALLOWANCE_KB = 48_000


def _peak_kb(n: int) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(n)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


@pytest.mark.slow
def test_a_20000_example_audit_grows_by_no_more_than_its_per_example_state():
    small, large = _peak_kb(2_000), _peak_kb(20_000)
    per_example = _per_example_bytes()
    expected_kb = (20_000 - 2_000) * per_example / 1024
    growth_kb = large - small
    print(f"peak RSS: {small} kB (2,000), {large} kB (20,000); growth {growth_kb} kB = "
          f"{growth_kb * 1024 / 18_000:.0f} B/example; estimate {per_example} B/example")  # shown with -s
    assert large < 1.5 * small + BOOTSTRAP_ALLOWANCE_KB, (small, large)
    assert growth_kb <= 3 * expected_kb + BOOTSTRAP_ALLOWANCE_KB, (
        f"peak RSS {small} kB at 2,000 examples, {large} kB at 20,000: {growth_kb} kB more, "
        f"over 3x the {expected_kb:.0f} kB expected ({per_example} B per example) plus "
        f"{BOOTSTRAP_ALLOWANCE_KB} kB for the bootstrap's batch"
    )
