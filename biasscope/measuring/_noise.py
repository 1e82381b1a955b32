"""Random draws that belong to the example: Gaussian perturbation noise and permutations
whose values depend only on (seed, stream, example index, sample, feature), never on the
batch an example sits in, the chunk size, the process it runs on or the device.

The generator is counter-based: word n of example i's stream is
``splitmix64(key_i + splitmix64(n * GAMMA))`` with ``key_i = splitmix64(splitmix64(seed ^ stream') + i)``
(Steele, Lea & Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014), turned
into two standard normals by Box-Muller. It is vectorised integer arithmetic on any device,
so one call draws a whole (samples, batch, *feat) block; CPU and CUDA give the same bits
(the float transforms may differ in the last ulp).

The counter of feature ``j`` (row-major flat index within the example) of sample ``k`` is
``k * 2**32 + j``: the draw of a sample does not depend on K or on chunking over samples,
and a feature's draw does not depend on the size of the first feature dimension (a padded
sequence length), so the first L positions of a longer padded sequence get the same noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["STREAMS", "example_noise", "example_permutation", "mix64", "standard_normal_block", "stream_id"]

#: purposes of the audit's random draws; each (purpose, modality, repeat) is its own stream
STREAMS = ("perturb", "joint", "frozen", "permutation", "shapley", "bootstrap")

_MASK64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15  # splitmix64's increment (odd, golden ratio)
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_SAMPLE_STRIDE = 1 << 32  # counter = k * 2**32 + j: up to 2**32 features per example
_TWO_PI = 2.0 * math.pi
_CPU_CHUNK_WORDS = 1 << 16  # words per chunk on CPU (int64: 512 KiB, stays in cache)


def _signed(value: int) -> int:
    """A 64-bit pattern as the int64 that holds it (torch has no uint64 arithmetic)."""
    value &= _MASK64
    return value - (1 << 64) if value >> 63 else value


def _shr(x: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 bit patterns (``>>`` on int64 is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix64(x: Tensor) -> Tensor:
    """splitmix64's finaliser on int64 bit patterns: a bijection of the 64-bit words, with
    multiplication wrapping mod 2**64 as torch's int64 arithmetic does."""
    return _mix64_(x.clone())


def _mix64_(x: Tensor) -> Tensor:
    """:func:`mix64` in place."""
    x ^= _shr(x, 30)
    x.mul_(_signed(_M1))
    x ^= _shr(x, 27)
    x.mul_(_signed(_M2))
    x ^= _shr(x, 31)
    return x


def _mix_int(x: int) -> int:
    """:func:`mix64` on one Python int (for keys), as a 64-bit unsigned value."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * _M1) & _MASK64
    x = ((x ^ (x >> 27)) * _M2) & _MASK64
    return x ^ (x >> 31)


def _stream_key(seed: int, stream: int) -> int:
    """One 64-bit key per (seed, stream), unsigned."""
    return _mix_int(_mix_int(seed) ^ _mix_int(stream * _GAMMA + 0x632BE59BD9B4E019))


def _example_keys(seed: int, stream: int, example_index: Tensor, device: torch.device) -> Tensor:
    """key_i = mix64(stream key + i * GAMMA) for each example index, int64 on ``device``."""
    index = example_index.to(device=device, dtype=torch.int64)
    return mix64(_signed(_stream_key(seed, stream)) + index * _signed(_GAMMA))


def _normal_pairs_(words: Tensor, out: Tensor) -> None:
    """Box-Muller on hashed words (R, P) into ``out`` (R, 2P): the top 24 bits give u1 in
    (0, 1], the next 24 u2 in [0, 1); out[:, 2p] = r cos(2 pi u2), out[:, 2p+1] = r sin(...),
    r = sqrt(-2 ln u1); |value| <= sqrt(48 ln 2) = 5.77, as for any 24-bit uniform."""
    dtype = out.dtype
    radius = (_shr(words, 40) + 1).to(dtype).mul_(2.0**-24).log_().mul_(-2.0).sqrt_()
    angle = (_shr(words, 16) & 0xFFFFFF).to(dtype).mul_(_TWO_PI * 2.0**-24)
    pairs = out.view(out.shape[0], -1, 2)
    torch.mul(radius, torch.cos(angle), out=pairs[..., 0])
    torch.mul(radius, angle.sin_(), out=pairs[..., 1])


def standard_normal_block(
    keys: Tensor, samples: range, features: int, *, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Standard normals (len(samples), len(keys), features): sample k, feature j of the
    stream ``keys[b]`` is the Box-Muller value of word ``mix64(key + mix64(c * GAMMA))``,
    c = (k * 2**32 + j) // 2, taking cos for even j and sin for odd j.

    The counter is hashed before it meets the key so that the streams of two examples never
    run in lockstep (splitmix's key + n * GAMMA streams overlap for some key pairs). Works
    in cache-sized chunks of rows on CPU (a few times faster than whole-block temporaries).
    """
    device, n_keys = keys.device, keys.numel()
    pairs = (features + 1) // 2
    sample = torch.arange(samples.start, samples.stop, device=device, dtype=torch.int64)
    pair = torch.arange(pairs, device=device, dtype=torch.int64)
    counter = _mix64_((sample[:, None] * (_SAMPLE_STRIDE // 2) + pair) * _signed(_GAMMA))  # (K, P)
    rows = len(samples) * n_keys
    out = torch.empty(rows, 2 * pairs, device=device, dtype=dtype)
    step = max(rows, 1) if device.type != "cpu" else max(1, _CPU_CHUNK_WORDS // max(pairs, 1))
    for lo in range(0, rows, step):
        r = torch.arange(lo, min(lo + step, rows), device=device)
        words = _mix64_(keys[r % n_keys, None] + counter[r // n_keys])
        _normal_pairs_(words, out[lo : lo + len(r)])
    out = out[:, :features] if 2 * pairs != features else out
    return out.reshape(len(samples), n_keys, features)


def stream_id(purpose: str, modality: int = 0, repeat: int = 0) -> int:
    """The stream number of one kind of draw: ``purpose`` from :data:`STREAMS`, the
    modality's position (< 2**16) and the repeat or draw number (< 2**32)."""
    if purpose not in STREAMS or not 0 <= modality < 1 << 16 or not 0 <= repeat < 1 << 32:
        raise ValueError(f"bad stream ({purpose!r}, {modality}, {repeat}); purposes: {', '.join(STREAMS)}.")
    return (STREAMS.index(purpose) << 48) | (modality << 32) | repeat


def example_noise(
    shape_per_example: Sequence[int],
    sigma: Tensor | float,
    *,
    scale: float,
    seed: int,
    example_index: Tensor,
    stream: int,
    samples: int,
    first_sample: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """z ~ N(0, diag(scale^2 sigma^2)) of shape (samples, B, *shape_per_example), where the
    value for example ``example_index[b]``, sample ``first_sample + k`` and feature j is a
    function of (seed, stream, example index, sample, j) only.

    Args:
        shape_per_example: the feature shape of one example (the representation's dims after
            the batch dim).
        sigma: per-feature standard deviation, broadcastable to ``shape_per_example``.
        example_index: (B,) global indices of the batch's examples in the dataset.
        stream: which draw this is (one stream per modality and purpose, so the noise of
            modality 0 and modality 1 of the same example differ).
        first_sample: index of the first sample drawn (to draw K samples in chunks).
    Returns:
        (samples, B, *shape_per_example) tensor of ``dtype`` on ``device``.
    """
    device = torch.device(device) if device is not None else example_index.device
    shape = tuple(int(d) for d in shape_per_example)
    features = math.prod(shape)
    if features > _SAMPLE_STRIDE:
        raise ValueError(f"at most 2**32 features per example (got {features}).")
    keys = _example_keys(seed, stream, example_index.reshape(-1), device)  # (B,)
    eps = standard_normal_block(keys, range(first_sample, first_sample + samples), features, dtype=dtype)
    eps = eps.view(samples, keys.numel(), *shape)
    if isinstance(sigma, Tensor):
        sigma = sigma.to(device=device, dtype=dtype)
    return eps.mul_(sigma * scale)


def example_permutation(n: int, *, seed: int, stream: int, device: torch.device | str = "cpu") -> Tensor:
    """A permutation of range(n) that depends only on (seed, stream, n): examples sorted by
    a 64-bit hash of their index (a bijection of the index, so there are no ties).

    Every process computes the same permutation; ``perm[i]`` is the example whose
    representation example i receives.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0 (got {n}).")
    keys = _example_keys(seed, stream, torch.arange(n), torch.device(device))
    return torch.argsort(keys, stable=True)
