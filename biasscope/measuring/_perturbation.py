"""Gaussian perturbation of modality representations: the per-feature scale over the data,
and the K-sample divergences f(z) with their gradient quadratic forms, run as one expanded
batch chunked to ``max_rows`` rows. Shared by the audit and the regularizer."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..runtime._batch import Batch, OutputSpec, call_model
from ..runtime._device import autocast_for
from ._downstream import DownstreamPlan
from ._noise import example_noise
from ..errors import DataLoadError, ModalityError, ModelOutputError
from .estimators import DIVERGENCES, quadratic_form
from .modality import Modality, intervene

__all__ = [
    "representation_std",
    "representation_moments",
    "finish_std",
    "perturbation_samples",
    "CleanPass",
    "ExampleNoise",
    "capture",
    "check_finite",
]


def check_finite(logits: Tensor) -> Tensor:
    if not torch.isfinite(logits).all():
        raise ModelOutputError(
            "The model produced non-finite logits (nan or inf). Check the model's weights and "
            "that the inputs are scaled as in training (e.g. normalised images)."
        )
    return logits


def capture(
    model: nn.Module, batch: Batch, modalities: Sequence[Modality], output: OutputSpec,
    *, precision: str = "fp32",
) -> tuple[Tensor, dict[str, Tensor]]:
    """One clean forward pass (under ``precision``'s autocast): the logits and each
    modality's representation."""
    seen: dict[str, Tensor] = {}

    def keep(name: str):
        def fn(h: Tensor) -> Tensor:
            seen[name] = h
            return h

        return fn

    with intervene(model, batch, {m: keep(m.name) for m in modalities}) as b:
        with _autocast(batch, precision):
            logits = call_model(model, b, output)
    for m in modalities:
        h = seen[m.name]
        if not h.is_floating_point():
            raise ModalityError(
                f"Modality {m.name!r}: {m.site} holds {h.dtype} values, which cannot take "
                "Gaussian noise; choose a layer whose output is floating point."
            )
        if h.dim() == 0 or h.shape[0] != batch.size:
            raise ModalityError(
                f"Modality {m.name!r}: {m.site} has shape {tuple(h.shape)}, whose first "
                f"dimension is not the batch ({batch.size}); choose a batch-first representation."
            )
    return check_finite(logits), seen


def _autocast(batch: Batch, precision: str):
    """``precision``'s autocast on the device of the batch's first tensor."""
    if precision == "fp32":
        return autocast_for("cpu", "fp32")
    first = next((t for t in (*batch.args, *batch.kwargs.values()) if isinstance(t, Tensor)), None)
    return autocast_for(first.device if first is not None else "cpu", precision)


@torch.no_grad()
def representation_std(
    model: nn.Module,
    batches: Iterable[Batch],
    modalities: Sequence[Modality],
    output: OutputSpec = OutputSpec(),
    *,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Tensor]:
    """Per-feature standard deviation of each modality's representation over the data.

    Features are all dims after the batch; when their shape varies between batches (e.g.
    sequence length), the std is taken per channel (last dim) instead. ``reduce`` sums the
    float64 accumulators over processes (``_distributed.all_reduce_sum``), so that every
    process gets the std over all of them; the shape decision is then taken jointly.
    """
    return finish_std(representation_moments(model, batches, modalities, output), modalities, reduce=reduce)


@torch.no_grad()
def representation_moments(
    model: nn.Module, batches: Iterable[Batch], modalities: Sequence[Modality], output: OutputSpec = OutputSpec(),
    *, on_logits: Callable[[Tensor], None] | None = None,
) -> dict[str, tuple[list | None, list, bool]]:
    """Per modality the float64 accumulators [sum, sumsq, n] over the batch dim (None when
    the feature shape varies) and over all dims but the last, and whether it varies.
    ``on_logits`` receives each batch's clean logits (the same pass: no second one needed)."""
    def passes() -> Iterable[dict[str, Tensor]]:
        for batch in batches:
            logits, reps = capture(model, batch, modalities, output)
            if on_logits is not None:
                on_logits(logits)
            yield reps

    return moments_of(passes(), modalities)


def batch_std(reps: Mapping[str, Tensor], modalities: Sequence[Modality]) -> dict[str, Tensor]:
    """:func:`representation_std` of one batch from its clean pass's representations
    (no pass of its own)."""
    return finish_std(moments_of([reps], modalities), modalities)


def moments_of(passes: Iterable[Mapping[str, Tensor]], modalities: Sequence[Modality]) -> dict[str, tuple[list | None, list, bool]]:
    """The accumulators of :func:`representation_moments` over each pass's representations."""
    full: dict[str, list] = {}  # name -> [sum, sumsq, n] over the batch dim
    last: dict[str, list] = {}  # name -> [sum, sumsq, n] over all dims but the last
    varying: set[str] = set()
    for reps in passes:
        for name, h in reps.items():
            h = h.detach().double()
            _accumulate(last, name, h.reshape(-1, h.shape[-1]) if h.dim() > 1 else h[:, None])
            if name in full and full[name][0].shape != h.shape[1:]:
                varying.add(name)
            if name not in varying:
                _accumulate(full, name, h)
    return {m.name: (full[m.name], last[m.name], m.name in varying) for m in modalities}


def finish_std(
    moments: Mapping[str, tuple[list | None, list, bool]], modalities: Sequence[Modality], *,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Tensor]:
    """The standard deviations from :func:`representation_moments` (summed over processes
    by ``reduce``; per channel when the shape varies in any process or between them)."""
    stds = {}
    for m in modalities:
        full, last, vary = moments[m.name]
        if reduce is not None:
            shape = torch.zeros(9, dtype=torch.float64)
            feat = full[0].shape
            shape[0], shape[1 : 1 + len(feat)] = len(feat), torch.tensor(feat, dtype=torch.float64)
            totals = reduce(torch.cat([torch.tensor([float(vary), 1.0]), shape, shape.square()]))
            spread = totals[11:] * totals[1] - totals[2:11].square()  # 0 iff every process has the shape
            vary = bool(totals[0] > 0) or bool((spread.abs() > 0).any())
        s, ss, n = last if vary else full
        if reduce is not None:
            s, ss, n = reduce(s), reduce(ss), float(reduce(torch.tensor([float(n)], dtype=torch.float64)))
        if n < 2:
            raise DataLoadError(
                "The per-feature noise scale needs at least 2 examples; give more data."
            )
        var = (ss / n - (s / n).square()).clamp_min(0.0)
        stds[m.name] = var.sqrt().float()
    return stds


def _accumulate(store: dict[str, list], name: str, h: Tensor) -> None:
    s, ss, n = h.sum(0), h.square().sum(0), h.shape[0]
    if name in store:
        store[name][0] += s
        store[name][1] += ss
        store[name][2] += n
    else:
        store[name] = [s, ss, n]


class CleanPass:
    """The clean logits and representations of ``batch`` repeated k times, computed once
    per k.

    ``expand=True`` (the regularizer) runs the reference at the same expanded size as the
    perturbed pass, so an ignored modality gives bit-identical logits and f == 0 exactly.
    ``expand=False`` (the audit) runs it once at B rows and repeats its logits (one clean
    pass per example). f is a function of forward passes only: where the noise does not
    reach the logits, the K perturbed rows of an example are equal, f is constant over its
    samples and the estimators give exactly 0 (a zero gradient proves nothing about f).

    ``with_grad`` keeps the graph of the clean pass (when grad is enabled), so that a term
    built on it is differentiated through p_clean too (the regularizer); by default the
    pass runs under no_grad (the audit).

    ``downstream`` (a :class:`~biasscope.measuring._downstream.DownstreamPlan`) records the B-row clean
    pass so that every pass at k * B rows (perturbed, or the expanded reference) recomputes
    only what depends on the perturbed site (:meth:`replay`)."""

    def __init__(
        self,
        model: nn.Module,
        batch: Batch,
        modalities: Sequence[Modality],
        output: OutputSpec,
        *,
        with_grad: bool = False,
        expand: bool = True,
        precision: str = "fp32",
        downstream: DownstreamPlan | None = None,
    ) -> None:
        self.model, self.batch, self.modalities, self.output = model, batch, modalities, output
        self.with_grad, self.expand, self.precision = with_grad, expand, precision
        self.downstream, self.recording = downstream, None
        self._cache: dict[int, tuple[Tensor, dict[str, Tensor]]] = {}

    def __call__(self, k: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits of k * B rows (sample-major) and the representations (k * B rows when
        expanded, else B rows)."""
        if not self.expand:
            logits, reps = self.once()
            return (logits if k == 1 else logits.repeat(k, 1)), reps
        if k not in self._cache:
            if self.downstream is not None:
                self.once()  # the recording the expanded pass replays
            rows = self.batch.repeat(k)
            with torch.set_grad_enabled(self.with_grad and torch.is_grad_enabled()), self.replay(rows, k):
                self._cache[k] = capture(self.model, rows, self.modalities, self.output, precision=self.precision)
        return self._cache[k]

    def once(self) -> tuple[Tensor, dict[str, Tensor]]:
        """The clean logits and representations at B rows."""
        if 1 not in self._cache:
            plan = self.downstream
            if plan is not None:
                plan.prepare(self.batch)
            with torch.set_grad_enabled(self.with_grad and torch.is_grad_enabled()):
                with plan.record(self.batch) if plan is not None else nullcontext() as rec:
                    self._cache[1] = capture(self.model, self.batch, self.modalities, self.output,
                                             precision=self.precision)
            self.recording = rec
        return self._cache[1]

    def replay(self, rows: Batch, k: int):
        """The context of a pass on ``rows`` (the batch repeated k times, unperturbed): it
        takes what does not depend on the perturbed site from the recorded clean pass."""
        if self.downstream is None:
            return nullcontext()
        return self.downstream.replay(self.recording, rows, k)


#: the static loss scale of the fp16 backward (halved on overflow)
FP16_LOSS_SCALE = 2.0**16


@dataclass(frozen=True)
class ExampleNoise:
    """Per-example noise keys (:mod:`biasscope.measuring._noise`): the audit's draws depend on (seed,
    stream, example index, sample), never on the batch, chunk or process. ``streams`` gives
    each perturbed modality its stream (``stream_id("perturb", j)`` and the like)."""

    seed: int
    streams: Mapping[Modality, int]


def _noise(h: Tensor, k: int, size: int, sigma: Tensor, *, scale: float, first_sample: int,
           generator: torch.Generator | None, keyed: ExampleNoise | None, index: Tensor | None,
           modality: Modality) -> Tensor:
    """z for k samples of a batch of ``size`` examples, (k * size, *feat) sample-major."""
    feat = h.shape[1:]
    if keyed is None:
        eps = torch.randn((k * size, *feat), generator=generator, device=generator.device, dtype=torch.float32)
        return (scale * sigma.to(h.device) * eps.to(h.device)).to(h.dtype)
    z = example_noise(feat, sigma, scale=scale, seed=keyed.seed, example_index=index,
                      stream=keyed.streams[modality], samples=k, first_sample=first_sample, device=h.device)
    return z.reshape(k * size, *feat).to(h.dtype)


def perturbation_samples(
    model: nn.Module,
    batch: Batch,
    sigmas: Mapping[Modality, Tensor],
    *,
    samples: int,
    scale: float = 1.0,
    generator: torch.Generator | None = None,
    divergence: str = "kl",
    output: OutputSpec = OutputSpec(),
    max_rows: int = 4096,
    gradients: bool = True,
    create_graph: bool = False,
    offsets: Mapping[Modality, Tensor] | None = None,
    clean: CleanPass | None = None,
    detach_clean: bool = True,
    keyed: ExampleNoise | None = None,
    precision: str = "fp32",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Perturb the given modalities jointly, ``h_m + z_m`` with z_m ~ N(0, diag(s^2 sigma_m^2)).

    The noise comes from ``generator`` (the regularizer), or from the examples' keys when
    ``keyed`` is given (the audit; needs ``batch.index``). ``offsets`` adds a fixed
    (B, *feat) noise to other modalities in every sample (to evaluate f with those
    coordinates frozen, for the tensorization check). ``clean`` shares the clean passes
    between calls on the same batch. ``detach_clean=False`` differentiates f (and q) through
    the clean prediction as well (give a ``clean`` built ``with_grad``; one is built so when
    ``clean`` is None). Forward passes run under ``precision``'s autocast.

    Returns ``f`` of shape (K, B) in float64, f = D(p_clean, p_perturbed), and per modality ``q`` of
    shape (K, B), q = <Sigma grad_z f, grad_z f> (empty when ``gradients`` is False).
    """
    if divergence not in DIVERGENCES:
        raise ModalityError(
            f"Unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}."
        )
    if keyed is None and generator is None:
        raise ValueError("perturbation_samples needs a generator or per-example keys (keyed).")
    if keyed is not None and batch.index is None:
        raise ValueError("per-example noise needs the batch's example indices (Batch.index).")
    div = DIVERGENCES[divergence]
    modalities = list(sigmas)
    clean = clean or CleanPass(
        model, batch, [*modalities, *(offsets or {})], output, with_grad=not detach_clean, precision=precision
    )
    per_chunk = max(1, max_rows // batch.size)
    fs: list[Tensor] = []
    qs: dict[str, list[Tensor]] = {m.name: [] for m in modalities}
    done = 0
    while done < samples:
        k = min(per_chunk, samples - done)
        clean_logits, reps = clean(k)
        noises = {
            m.name: _noise(reps[m.name], k, batch.size, sigmas[m], scale=scale, first_sample=done,
                           generator=generator, keyed=keyed, index=batch.index, modality=m).requires_grad_(gradients)
            for m in modalities
        }
        done += k
        transforms = {m: (lambda h, _z=noises[m.name]: h + _z) for m in modalities}
        for m, offset in (offsets or {}).items():
            transforms[m] = lambda h, _o=offset.repeat(k, *([1] * (offset.dim() - 1))): h + _o
        rows = batch.repeat(k)
        with torch.set_grad_enabled(gradients):
            with intervene(model, rows, transforms) as b, _autocast(batch, precision), clean.replay(rows, k):
                logits = check_finite(call_model(model, b, output))
            # float64 from the logits (design: KL of 1e-7 is common); keeps FD checks exact
            f = div(clean_logits.double(), logits.double(), detach=detach_clean)
            fs.append(f.view(k, batch.size))
            if gradients:
                _quadratic_forms(f, noises, modalities, sigmas, scale, create_graph, qs, k, batch.size,
                                 loss_scale=FP16_LOSS_SCALE if precision == "fp16" else 1.0)
    return torch.cat(fs, dim=0), {name: torch.cat(v, dim=0) for name, v in qs.items() if v}


def _gradients(f: Tensor, zs: list[Tensor], *, create_graph: bool, loss_scale: float) -> list[Tensor | None]:
    """grad_z f.sum() for each z (None where f does not depend on it). ``loss_scale`` > 1
    (fp16 autocast) multiplies f before the backward so that small KL gradients do not
    underflow in half precision, and divides after; on inf/nan it is halved and redone."""
    if not f.requires_grad:
        return [None] * len(zs)
    while True:
        retain = loss_scale > 1 or create_graph
        grads = torch.autograd.grad(f.sum() * loss_scale, zs, create_graph=create_graph, allow_unused=True,
                                    retain_graph=retain)
        finite = all(g is None or bool(torch.isfinite(g).all()) for g in grads)
        if finite or loss_scale <= 1:
            return [g if g is None or loss_scale == 1 else g / loss_scale for g in grads]
        loss_scale = max(1.0, loss_scale / 2**4)


def _quadratic_forms(f, noises, modalities, sigmas, scale, create_graph, qs, k, size, loss_scale=1.0) -> None:
    """Append q = <Sigma grad_z f, grad_z f> (k, B) of each modality to ``qs``."""
    zs = [noises[m.name] for m in modalities]
    grads = _gradients(f, zs, create_graph=create_graph, loss_scale=loss_scale)
    for m, z, g in zip(modalities, zs, grads):
        g = torch.zeros_like(z) if g is None else g
        sigma2 = (scale * sigmas[m].to(g.device)).square()
        qs[m.name].append(quadratic_form(g.double(), sigma2).view(k, size))

