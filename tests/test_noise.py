"""Per-example noise and permutations: values owned by the example, not by the batch."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from biasscope.measuring._noise import (
    STREAMS, _mix_int, _signed, example_noise, example_permutation, mix64, stream_id,
)

torch.set_num_threads(1)


def _noise(index, *, shape=(3, 5), samples=4, first_sample=0, stream=0, seed=7, sigma=1.0, scale=1.0):
    return example_noise(
        shape, sigma, scale=scale, seed=seed, example_index=torch.as_tensor(index), stream=stream,
        samples=samples, first_sample=first_sample, device="cpu",
    )


def test_mix64_matches_the_reference_splitmix64_finaliser():
    values = [0, 1, 2**32 + 7, 2**63 - 1, 2**63, 2**64 - 1, 0x9E3779B97F4A7C15]
    got = mix64(torch.tensor([_signed(v) for v in values]))
    assert [int(g) & (2**64 - 1) for g in got] == [_mix_int(v) for v in values]
    assert _mix_int(0x9E3779B97F4A7C15) == 0xE220A8397B1DCDAF  # splitmix64(seed 0), first output


def test_an_examples_noise_does_not_depend_on_its_batch_or_position():
    whole = _noise(range(10))
    for split in ([3, 1, 4, 0], [9], [7, 8, 2, 6, 5]):
        part = _noise(split)
        assert torch.equal(part, whole[:, split])


def test_chunking_over_samples_gives_the_same_draws():
    whole = _noise([4, 2], samples=6)
    chunks = torch.cat([_noise([4, 2], samples=4), _noise([4, 2], samples=2, first_sample=4)])
    assert torch.equal(chunks, whole)
    assert torch.equal(_noise([4, 2], samples=3), whole[:3])  # K does not change sample k


def test_a_longer_padded_first_dimension_keeps_the_prefix():
    short = _noise([1, 2], shape=(5, 6))
    long = _noise([1, 2], shape=(9, 6))
    assert torch.equal(long[:, :, :5], short)


def test_noise_differs_across_examples_streams_seeds_and_samples():
    base = _noise([0, 1], samples=2)
    assert not torch.equal(base[:, 0], base[:, 1])
    assert not torch.equal(base[0], base[1])
    assert not torch.equal(_noise([0, 1], samples=2, stream=1), base)
    assert not torch.equal(_noise([0, 1], samples=2, seed=8), base)
    assert torch.equal(_noise([0, 1], samples=2), base)  # and the same call repeats


def test_moments_match_the_scaled_gaussian():
    sigma = torch.tensor([0.5, 2.0])
    z = _noise(range(200), shape=(2,), samples=500, sigma=sigma, scale=1.5)  # 100k per feature
    flat = z.reshape(-1, 2).double()
    target_sd = (1.5 * sigma).double()
    assert torch.allclose(flat.mean(0) / target_sd, torch.zeros(2, dtype=torch.float64), atol=0.02)
    assert torch.allclose(flat.std(0) / target_sd, torch.ones(2, dtype=torch.float64), atol=0.01)
    standard = (flat / target_sd).numpy()
    for j in range(2):
        assert stats.kstest(standard[:, j], "norm").pvalue > 1e-3
        assert abs(stats.kurtosis(standard[:, j])) < 0.05  # Gaussian excess kurtosis 0


def test_draws_are_uncorrelated_across_neighbours():
    z = _noise(range(64), shape=(256,), samples=64).reshape(-1, 256).double()
    # cos/sin pairs from one word (features 2p, 2p+1), adjacent pairs, adjacent examples
    for a, b in ((z[:, 0::2], z[:, 1::2]), (z[:, 1:-1:2], z[:, 2::2])):
        r = torch.corrcoef(torch.stack([a.reshape(-1), b.reshape(-1)]))[0, 1]
        assert abs(float(r)) < 4 / math.sqrt(a.numel())
    by_example = _noise(range(2000), shape=(1,), samples=1)[0, :, 0].double()
    r = torch.corrcoef(torch.stack([by_example[:-1], by_example[1:]]))[0, 1]
    assert abs(float(r)) < 4 / math.sqrt(2000)


def test_noise_has_the_requested_dtype_shape_and_bound():
    z = _noise(range(3), shape=(2, 3, 4), samples=5)
    assert z.shape == (5, 3, 2, 3, 4) and z.dtype == torch.float32
    assert float(z.abs().max()) <= math.sqrt(48 * math.log(2)) + 1e-5
    z64 = example_noise((4,), 1.0, scale=1.0, seed=0, example_index=torch.arange(2), stream=0,
                        samples=2, dtype=torch.float64)
    assert z64.dtype == torch.float64


def test_permutation_depends_only_on_seed_stream_and_n():
    p = example_permutation(50, seed=3, stream=1)
    assert sorted(p.tolist()) == list(range(50))
    assert torch.equal(p, example_permutation(50, seed=3, stream=1))
    assert not torch.equal(p, example_permutation(50, seed=3, stream=2))
    assert not torch.equal(p, example_permutation(50, seed=4, stream=1))
    assert example_permutation(0, seed=0, stream=0).numel() == 0


def test_permutations_are_uniform_over_positions():
    n, draws = 5, 4000
    counts = torch.zeros(n, n)
    for stream in range(draws):
        counts[torch.arange(n), example_permutation(n, seed=0, stream=stream)] += 1
    expected = draws / n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 60  # (n-1)^2 = 16 degrees of freedom: P(chi2 > 60) ~ 1e-7


def test_noise_rejects_more_than_2_to_32_features():
    with pytest.raises(ValueError, match="2\\*\\*32"):
        example_noise((2**16, 2**16 + 1), 1.0, scale=1.0, seed=0, example_index=torch.arange(1),
                      stream=0, samples=1)


def test_stream_ids_are_distinct_per_purpose_modality_and_repeat():
    ids = {stream_id(p, m, r) for p in STREAMS for m in (0, 1, 2**16 - 1) for r in (0, 1, 2**32 - 1)}
    assert len(ids) == len(STREAMS) * 9
    with pytest.raises(ValueError, match="purposes"):
        stream_id("noise")
    with pytest.raises(ValueError):
        stream_id("perturb", 2**16)


def test_an_empty_batch_gives_an_empty_draw():
    z = _noise(torch.arange(0), shape=(3,), samples=2)
    assert z.shape == (2, 0, 3)
