"""The per-batch part of the audit: K-sample estimates per example and modality, the joint
(tensorization) check and the clean predictions, accumulated batch by batch and handed on
as arrays. The summary (intervals, shares, verdicts) lives in :mod:`biasscope.auditing._summary`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..runtime._batch import Batch, OutputSpec
from ..measuring._downstream import DownstreamPlan
from ..measuring._noise import example_noise, stream_id
from ..runtime._device import is_out_of_memory
from ..measuring._perturbation import CleanPass, ExampleNoise, perturbation_samples
from ..measuring.bounds import BoundGaps, bound_diagnostics, unavailable_bounds
from ..measuring.estimators import fisher_bound, functional_entropy, poincare_bound, variance
from ..measuring.modality import Modality
from ..results import MEASURES, Diagnostic

__all__ = ["EntropyState", "MeasuredValues", "JOINT_KEYS"]

JOINT_KEYS = ("joint_entropy", "joint_variance", "sum_entropy", "sum_variance")


@dataclass(frozen=True)
class MeasuredValues:
    """Per-example arrays over the whole audit set: ``per_modality[name][measure]``,
    ``joint[key]`` (empty with one modality or without the check) and the predictions."""

    per_modality: dict[str, dict[str, np.ndarray]]
    joint: dict[str, np.ndarray]
    predictions: np.ndarray


class EntropyState:
    """Accumulates the per-example measures of one audit; :meth:`update` per batch,
    :meth:`values` at the end."""

    def __init__(
        self,
        model: nn.Module,
        modalities: Sequence[Modality],
        sigmas: dict[str, Tensor],
        *,
        samples: int,
        scale: float,
        divergence: str,
        output: OutputSpec,
        max_rows: int,
        seed: int,
        tensorization: bool = True,
        precision: str = "fp32",
        downstream: bool = True,
    ) -> None:
        self.model, self.modalities = model, list(modalities)
        self.sigmas = {m: sigmas[m.name] for m in self.modalities}
        self.seed = seed
        self.options = dict(samples=samples, scale=scale, divergence=divergence, output=output,
                            max_rows=max_rows, precision=precision)
        self.tensorization = tensorization and len(self.modalities) > 1
        self._values: dict[str, dict[str, list[Tensor]]] = {
            m.name: {k: [] for k in MEASURES} for m in self.modalities
        }
        self._joint: dict[str, list[Tensor]] = {k: [] for k in JOINT_KEYS}
        self._predictions: list[Tensor] = []
        #: perturbed passes recompute only what depends on the site (``downstream=False``: full passes)
        self.downstream = DownstreamPlan(model, self.modalities, output, enabled=downstream)
        self._gaps = {m.name: BoundGaps() for m in self.modalities}
        self._blocked: str | None = None  # why the forward blocks gradients, once it did

    def update(self, batch: Batch, *, max_rows: int | None = None) -> None:
        """Measure one batch (already on the model's device, with its example indices);
        ``max_rows`` overrides the chunk size (the numbers do not depend on it)."""
        o = self.options
        clean = CleanPass(self.model, batch, self.modalities, o["output"], expand=False, precision=o["precision"],
                          downstream=self.downstream)
        options = dict(self.options, clean=clean, max_rows=max_rows or self.options["max_rows"])
        logits, reps = clean.once()
        measured = {}
        gaps = {}
        for j, m in enumerate(self.modalities):
            keyed = ExampleNoise(self.seed, {m: stream_id("perturb", j)})
            f, q = self._samples(batch, m, keyed, options)
            measured[m.name], gaps[m.name] = _measures(f, q)
        joint = _tensorization(self.model, batch, self.sigmas, reps, options, self.seed) if self.tensorization else ()
        # appended only once the whole batch is measured (an out-of-memory retry redoes it)
        self._predictions.append(logits.argmax(dim=1).cpu())
        for name, per in measured.items():
            for k, v in per.items():
                self._values[name][k].append(v)
            blind, nonfinite = gaps[name]
            g = self._gaps[name]
            g.blind, g.nonfinite, g.examples = g.blind + blind, g.nonfinite + nonfinite, g.examples + batch.size
        for key, value in zip(JOINT_KEYS, joint):
            self._joint[key].append(value)

    def _samples(self, batch: Batch, m: Modality, keyed: ExampleNoise, options: dict) -> tuple[Tensor, Tensor | None]:
        """f (K, B) and q (K, B), or q None when the forward pass blocks gradients (found on
        the first failure with gradients on; the rest of the audit runs without them)."""
        if self._blocked is None:
            try:
                f, q = perturbation_samples(self.model, batch, {m: self.sigmas[m]}, keyed=keyed, **options)
                return f.detach().double(), q[m.name].detach().double()
            except Exception as exc:  # a forward that cannot run with gradients (numpy inside)
                if is_out_of_memory(exc):
                    raise
                self._blocked = f"{type(exc).__name__} with gradients on"
        f, _ = perturbation_samples(self.model, batch, {m: self.sigmas[m]}, keyed=keyed, gradients=False, **options)
        return f.detach().double(), None

    def diagnostics(self) -> list[Diagnostic]:
        """Why bounds are unavailable, where they are (:mod:`biasscope.measuring.bounds`)."""
        gaps = self._gaps.values()
        blocked = self._blocked
        if blocked is None and all(g.examples and g.blind == g.examples for g in gaps):
            blocked = "the gradient is zero at every site while the output moves"
        return bound_diagnostics(self._gaps, blocked=blocked)

    def values(self) -> MeasuredValues:
        return MeasuredValues(
            per_modality={
                name: {k: torch.cat(v).numpy() for k, v in per.items()} for name, per in self._values.items()
            },
            joint={k: torch.cat(v).numpy() for k, v in self._joint.items() if v},
            predictions=torch.cat(self._predictions).numpy(),
        )


def _measures(f: Tensor, q: Tensor | None) -> tuple[dict[str, Tensor], tuple[int, int]]:
    """The four per-example measures (bounds nan where unavailable) and the counts of
    gradient-blind and non-finite examples."""
    out = {"functional_entropy": functional_entropy(f).cpu(), "variance": variance(f).cpu()}
    missing, blind, nonfinite = unavailable_bounds(f, q)
    nan = torch.full_like(out["variance"], float("nan"))
    if q is None:
        out["fisher_bound"], out["poincare_bound"] = nan, nan.clone()
        return out, (0, 0)
    missing = missing.cpu()
    out["fisher_bound"] = torch.where(missing, nan, fisher_bound(f, q).cpu())
    out["poincare_bound"] = torch.where(missing, nan, poincare_bound(q).cpu())
    return out, (int(blind.sum()), int(nonfinite.sum()))


def _tensorization(model, batch, sigmas, reps, options, seed: int):
    """Per example: Ent and Var of f under the joint perturbation, and the tensorization
    sums sum_m E_{-m}[Ent_m f], sum_m E_{-m}[Var_m f] (the other modalities' noise frozen at
    one random value per example, the expectation over it taken over examples).
    Every draw is keyed by the example (streams ``joint``, ``perturb`` and ``frozen``)."""
    order = list(sigmas)
    joint = ExampleNoise(seed, {m: stream_id("joint", j) for j, m in enumerate(order)})
    f, _ = perturbation_samples(model, batch, sigmas, gradients=False, keyed=joint, **options)
    f = f.double()
    # each modality's frozen value is drawn once and shared by the terms of the others
    frozen_all = {
        o: example_noise(reps[o.name].shape[1:], s, scale=options["scale"], seed=seed,
                         example_index=batch.index, stream=stream_id("frozen", i, 0), samples=1,
                         device=reps[o.name].device)[0].to(reps[o.name].dtype)
        for i, (o, s) in enumerate(sigmas.items())
    }
    ent_sum = torch.zeros(batch.size, dtype=torch.float64, device=f.device)
    var_sum = torch.zeros_like(ent_sum)
    for j, m in enumerate(order):
        frozen = {o: z for o, z in frozen_all.items() if o != m}
        keyed = ExampleNoise(seed, {m: stream_id("perturb", j)})
        fm, _ = perturbation_samples(
            model, batch, {m: sigmas[m]}, gradients=False, offsets=frozen, keyed=keyed, **options
        )
        ent_sum += functional_entropy(fm.double())
        var_sum += variance(fm.double())
    return functional_entropy(f).cpu(), variance(f).cpu(), ent_sum.cpu(), var_sum.cpu()
