"""Performance-grounded checks beside the entropies: how much accuracy and likelihood a
model loses when a modality's representation is shuffled across the examples of the audit
set, and how the model's performance is shared among its modalities.

- Permutation score: Gat, Schwartz & Schwing, "Perceptual Score: What Data Modalities Does
  Your Model Perceive?", NeurIPS 2021. A modality is permuted across the examples (its
  information is destroyed while its marginal distribution is kept); the drop in accuracy,
  normalised by the clean accuracy, and the increase in cross-entropy are repeated R times
  for a 95% interval.
- Modality Shapley values (SHAPE-style: Hu, Li & Zhou, "SHAPE: An Unified Approach to
  Evaluate the Contribution and Cooperation of Individual Modalities", IJCAI 2022): the
  players are the modalities, v(S) is the performance with every modality outside S
  permuted; exact over the 2^M coalitions, or estimated by sampling orderings
  (Castro, Gomez & Tejada, Computers & Operations Research 2009) for large M.

Permutations are drawn over the whole audit set, not within a batch (a batch that holds a
single class would otherwise hide the dependence). Every forward pass runs under
``torch.no_grad``; the caller puts the model on ``device`` in eval mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..runtime._batch import Batch, OutputSpec, call_model
from ..runtime._device import model_device
from ..runtime._distributed import gather_rows, shard, sync_point
from ._downstream import DownstreamPlan, Recording
from ._noise import example_permutation, stream_id
from ._perturbation import capture, check_finite
from ._stats import mean_interval
from ..errors import ConfigError, DataLoadError, ModalityError
from .modality import Modality, Transform, intervene, validate_modalities
from ..results import PermutationScore, ShapleyValues

__all__ = ["METRICS", "AuditSet", "permutation_scores", "modality_shapley"]

METRICS = ("accuracy", "log_likelihood")

Progress = Callable[[str, int, int], None]

@dataclass(frozen=True)
class _Performance:
    """Accuracy and mean log-likelihood of the labels over the audit set."""

    accuracy: float
    log_likelihood: float
    flip_rate: float = 0.0  # share of predictions that differ from the clean ones
    confidence_change: float = 0.0  # mean |change| of the clean top class's probability

    def metric(self, name: str) -> float:
        return getattr(self, name)


class AuditSet:
    """The audit set with what a permutation draws from: per modality the representation
    of every example (concatenated over batches) or ``None`` when its shape varies between
    batches, in which case the modality is permuted within each batch."""

    @torch.no_grad()
    def __init__(
        self,
        model: nn.Module,
        batches: Sequence[Batch],
        modalities: Sequence[Modality],
        device: torch.device,
        output: OutputSpec,
    ) -> None:
        self.model, self.batches, self.device, self.output = model, list(batches), device, output
        self.offsets = [0, *np.cumsum([b.size for b in self.batches]).tolist()]
        self.n = self.offsets[-1]
        # the batches this process evaluates permuted: those whose first example is in its shard
        mine = shard(self.n)
        self.owned = [j for j in range(len(self.batches)) if self.offsets[j] in mine]
        layers = [m for m in modalities if m.layer is not None]
        parts: dict[str, list[Tensor]] = {m.name: [] for m in modalities}
        scores, clean_top = [], []
        self.downstream = DownstreamPlan(model, modalities, output)  # permuted passes rerun what depends on it
        self.recordings: dict[int, Recording | None] = {}
        for j, b in enumerate(batch.to(device) for batch in self.batches):  # every example, in every process
            with self.downstream.record(b, keep=j in self.owned) as rec:
                logits, reps = capture(model, b, layers, output)
            self.recordings[j] = rec
            _check_labels(logits, b.label)
            scores.append(_score(logits, b.label))
            clean_top.append(_top(logits))
            for m in modalities:
                h = reps[m.name] if m.layer is not None else b.get_input(m.input)
                parts[m.name].append(h.detach().cpu())
        self.clean = _performance(torch.cat([c for c, _ in scores]), torch.cat([ll for _, ll in scores]))
        self.clean_top = torch.cat(clean_top)  # (N, 2): the clean predicted class and its probability
        self.pool: dict[str, Tensor | None] = {}
        for m in modalities:
            hs = parts.pop(m.name)
            same = all(h.shape[1:] == hs[0].shape[1:] and h.dtype == hs[0].dtype for h in hs)
            self.pool[m.name] = torch.cat(hs) if same else None

    def scope(self, modality: Modality) -> str:
        return "global" if self.pool[modality.name] is not None else "within_batch"

    def _replace(self, modality: Modality, rows: Tensor) -> Transform:
        """The transform that puts the representations of examples ``rows`` (global indices)
        in place of a batch's own."""
        pool = self.pool[modality.name]
        if pool is not None:
            new = pool[rows].to(self.device)

            def swap(h: Tensor) -> Tensor:
                if h.shape != new.shape:
                    raise ModalityError(
                        f"Modality {modality.name!r}: {modality.site} has shape {tuple(h.shape)} "
                        f"in one pass and {tuple(new.shape)} in another; its representation "
                        "must not depend on the other modalities' values."
                    )
                return new

            return swap
        # within-batch fallback: the relative order of a uniform permutation's values on a
        # block is a uniform permutation of that block
        local = torch.argsort(rows).to(self.device)
        return lambda h: h[local]

    def evaluate(self, perm: Tensor, absent: Sequence[Modality]) -> _Performance:
        """Performance with each modality in ``absent`` replaced by the representation of
        example ``perm[i]`` at row ``i`` (one permutation of the whole set, shared). Each
        process runs its own batches; the per-example scores are gathered in global order."""
        correct, loglik, moved = [], [], []
        with sync_point("the permutation checks"):
            for j in self.owned:
                rows = perm[self.offsets[j] : self.offsets[j + 1]]
                b = self.batches[j].to(self.device)
                with intervene(self.model, b, {m: self._replace(m, rows) for m in absent}) as bb, \
                        self.downstream.replay(self.recordings[j], b, 1):
                    logits = check_finite(call_model(self.model, bb, self.output))
                c, ll = _score(logits, b.label)
                correct.append(c)
                loglik.append(ll)
                moved.append(_moved(logits, self.clean_top[self.offsets[j] : self.offsets[j + 1]]))
        empty = torch.zeros(0, dtype=torch.float64)
        moved_all = gather_rows(torch.cat(moved) if moved else empty.view(0, 2))
        return _performance(gather_rows(torch.cat(correct) if correct else empty),
                            gather_rows(torch.cat(loglik) if loglik else empty), moved_all)


def _performance(correct: Tensor, loglik: Tensor, moved: Tensor | None = None) -> _Performance:
    """Accuracy and mean log-likelihood from the per-example scores of the whole set, and
    from ``moved`` (N, 2) the flip rate and the mean confidence change."""
    n = correct.numel()
    flips, conf = (0.0, 0.0) if moved is None else (float(v) / n for v in moved.sum(0))
    return _Performance(float(correct.sum()) / n, float(loglik.sum()) / n, flips, conf)


def _top(logits: Tensor) -> Tensor:
    """Per example (float64, on CPU): the predicted class and its probability."""
    p = torch.softmax(logits.double(), dim=1)
    top, cls = p.max(dim=1)
    return torch.stack([cls.double(), top], dim=1).cpu()


def _moved(logits: Tensor, clean_top: Tensor) -> Tensor:
    """Per example: whether the prediction differs from the clean one, and the absolute
    change of the clean predicted class's probability (N, 2)."""
    p = torch.softmax(logits.double(), dim=1).cpu()
    cls = clean_top[:, 0].long()
    flipped = (p.argmax(dim=1) != cls).double()
    return torch.stack([flipped, (p.gather(1, cls[:, None])[:, 0] - clean_top[:, 1]).abs()], dim=1)


def _score(logits: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
    """Per example (float64, on CPU): whether the prediction is right, and log p(label)."""
    label = label.to(logits.device)
    correct = (logits.argmax(dim=1) == label).double()
    logp = torch.log_softmax(logits.double(), dim=1).gather(1, label[:, None])[:, 0]
    return correct.cpu(), logp.cpu()


def _permutation(n: int, seed: int, repeat: int) -> Tensor:
    """Repeat ``repeat``'s permutation of the audit set: keyed by (seed, repeat) only."""
    return example_permutation(n, seed=seed, stream=stream_id("permutation", 0, repeat))


def _check_labels(logits: Tensor, label: Tensor) -> None:
    classes = logits.shape[1]
    if label.numel() and (int(label.min()) < 0 or int(label.max()) >= classes):
        raise DataLoadError(
            f"Labels range over [{int(label.min())}, {int(label.max())}] but the model gives "
            f"{classes} class scores; labels must be class indices 0..{classes - 1}."
        )


def _validate(batches: Sequence[Batch], modalities: Sequence[Modality]) -> None:
    if not batches:
        raise DataLoadError("The audit set is empty: give at least one batch with an example.")
    for batch in batches:
        label = batch.label
        if label is None or label.dim() != 1 or label.is_floating_point() or label.numel() != batch.size:
            raise DataLoadError(
                "Permutation scores and modality Shapley values need integer class labels, one "
                "per example (dict batches: under the label key; tuple batches: last)."
            )
        validate_modalities(batch, modalities, perturbable=False)


@torch.no_grad()
def permutation_scores(
    model: nn.Module,
    batches: Sequence[Batch],
    modalities: Sequence[Modality],
    *,
    repeats: int = 10,
    seed: int = 0,
    device: torch.device | str | None = None,
    output: OutputSpec = OutputSpec(),
    progress: Progress | None = None,
    data: AuditSet | None = None,
) -> dict[str, PermutationScore]:
    """Accuracy drop and cross-entropy increase when each modality is permuted across the
    whole audit set (perceptual score), with a 95% interval over ``repeats`` permutations.

    Repeat ``r`` uses the permutation ``example_permutation(n, seed=seed,
    stream=stream_id("permutation", 0, r))`` (:mod:`biasscope.measuring._noise`: the same on every
    process, whatever the batches) for every modality (common random numbers, so modalities are compared on the same
    shuffles). A modality whose representation shape varies between batches is permuted
    within each batch instead (recorded as its scope).

    Args:
        batches: labelled :class:`Batch` es (integer class labels), on any device.
        device: where the model is (default: the device of its parameters).
        data: an :class:`AuditSet` of these batches and modalities, to share its clean pass
            with :func:`modality_shapley`.
    Returns:
        modality name -> :class:`PermutationScore`.
    """
    if repeats < 1:
        raise ConfigError(f"repeats must be at least 1 (got {repeats}); the default is 10.")
    _validate(batches, modalities)
    dev = torch.device(device) if device is not None else model_device(model)
    report = progress or (lambda stage, done, total: None)
    total = len(modalities) * repeats
    report("permutation", 0, total)
    data = data or AuditSet(model, batches, modalities, dev, output)
    perms = [_permutation(data.n, seed, r) for r in range(repeats)]
    clean = data.clean
    scores: dict[str, PermutationScore] = {}
    for i, m in enumerate(modalities):
        drop, rel, loss, flips, conf = [], [], [], [], []
        for r, perm in enumerate(perms):
            shuffled = data.evaluate(perm, [m])
            flips.append(shuffled.flip_rate)
            conf.append(shuffled.confidence_change)
            d = clean.accuracy - shuffled.accuracy
            drop.append(d)
            rel.append(d / clean.accuracy if clean.accuracy > 0 else 0.0)
            loss.append(clean.log_likelihood - shuffled.log_likelihood)  # CE = -mean log p
            report("permutation", i * repeats + r + 1, total)
        scores[m.name] = PermutationScore(
            accuracy_drop=mean_interval(np.array(drop)),
            relative_accuracy_drop=mean_interval(np.array(rel)),
            loss_increase=mean_interval(np.array(loss)),
            repeats=repeats,
            scope=data.scope(m),
            flip_rate=mean_interval(np.array(flips)),
            confidence_change=mean_interval(np.array(conf)),
        )
    return scores


@torch.no_grad()
def modality_shapley(
    model: nn.Module,
    batches: Sequence[Batch],
    modalities: Sequence[Modality],
    *,
    seed: int = 0,
    device: torch.device | str | None = None,
    output: OutputSpec = OutputSpec(),
    metrics: Sequence[str] = METRICS,
    exact_max: int = 10,
    samples: int = 200,
    progress: Progress | None = None,
    data: AuditSet | None = None,
) -> list[ShapleyValues]:
    """Shapley values of the modalities for each metric, v(S) = the metric with every
    modality outside S permuted across the audit set.

    One permutation ``pi`` (that of repeat 0 of :func:`permutation_scores`) serves every modality and every coalition:
    absent modalities of example ``i`` all come from example ``pi[i]``, so v(none) is the
    performance against shuffled labels, coalition values are mutually consistent, and two
    interchangeable modalities get equal values. Exact over the 2^M coalitions for
    M <= ``exact_max``; otherwise ``samples`` orderings (antithetic pairs) estimate the values
    (``exact=False``; efficiency still holds exactly). Each coalition is evaluated once for
    all metrics.

    Args:
        metrics: any of ``"accuracy"`` and ``"log_likelihood"`` (mean log p(label)).
        data: an :class:`AuditSet` of these batches and modalities (see above).
    Returns:
        One :class:`ShapleyValues` per metric, in the order of ``metrics``.
    """
    metrics = _check_shapley_options(metrics, exact_max, samples)
    _validate(batches, modalities)
    dev = torch.device(device) if device is not None else model_device(model)
    report = progress or (lambda stage, done, total: None)
    mods = list(modalities)
    count = len(mods)
    full = (1 << count) - 1
    exact = count <= exact_max
    total = full if exact else samples
    report("shapley", 0, total)
    data = data or AuditSet(model, batches, mods, dev, output)
    generator = torch.Generator().manual_seed(seed)  # the sampled orderings (large M) only
    perm = _permutation(data.n, seed, 0)
    cache: dict[int, _Performance] = {full: data.clean}

    def v(mask: int) -> _Performance:
        if mask not in cache:
            absent = [m for i, m in enumerate(mods) if not mask >> i & 1]
            cache[mask] = data.evaluate(perm, absent)
        return cache[mask]

    if exact:
        phi = _exact_shapley(v, count, full, metrics, lambda done: report("shapley", done, total))
    else:
        phi = _sampled_shapley(v, count, samples, metrics, generator, lambda done: report("shapley", done, total))

    out = []
    for k, name in enumerate(metrics):
        top, bottom = v(full).metric(name), v(0).metric(name)
        singles = sum(v(1 << i).metric(name) - bottom for i in range(count))
        out.append(
            ShapleyValues(
                metric=name,
                values={m.name: float(phi[k, i]) for i, m in enumerate(mods)},
                full=top,
                empty=bottom,
                interaction=top - bottom - singles,
                exact=exact,
            )
        )
    return out


def _check_shapley_options(metrics: Sequence[str], exact_max: int, samples: int) -> list[str]:
    metrics = list(metrics)
    unknown = [x for x in metrics if x not in METRICS]
    if not metrics or unknown or len(set(metrics)) != len(metrics):
        raise ConfigError(
            f"metrics must be distinct names among {', '.join(METRICS)}; got {metrics!r}."
        )
    if exact_max < 0 or samples < 1:
        raise ConfigError(
            f"exact_max must be >= 0 and samples >= 1 (got {exact_max} and {samples})."
        )
    return metrics


def _exact_shapley(v, count: int, full: int, metrics: list[str], done) -> np.ndarray:
    """phi_m = sum_{S not containing m} |S|! (M - |S| - 1)! / M! [v(S + m) - v(S)]."""
    for mask in range(full):
        v(mask)
        done(mask + 1)
    weight = [
        math.factorial(s) * math.factorial(count - s - 1) / math.factorial(count)
        for s in range(count)
    ]
    phi = np.zeros((len(metrics), count))
    for i in range(count):
        bit = 1 << i
        for mask in range(full + 1):
            if mask & bit:
                continue
            w = weight[mask.bit_count()]
            for k, name in enumerate(metrics):
                phi[k, i] += w * (v(mask | bit).metric(name) - v(mask).metric(name))
    return phi


def _sampled_shapley(v, count: int, samples: int, metrics: list[str], generator, done) -> np.ndarray:
    """The mean marginal contribution over ``samples`` orderings (antithetic pairs)."""
    orderings: list[list[int]] = []
    while len(orderings) < samples:
        order = torch.randperm(count, generator=generator).tolist()
        orderings += [order, order[::-1]]
    phi = np.zeros((len(metrics), count))
    for n, order in enumerate(orderings[:samples]):
        mask, prev = 0, v(0)
        for i in order:
            mask |= 1 << i
            cur = v(mask)
            for k, name in enumerate(metrics):
                phi[k, i] += cur.metric(name) - prev.metric(name)
            prev = cur
        done(n + 1)
    return phi / samples
