"""The per-batch part of the audit: K-sample estimates per example and modality, the joint
(tensorization) check and the clean predictions, accumulated batch by batch and handed on
as arrays. The summary (intervals, shares, verdicts) lives in :mod:`biasscope._audit_summary`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ._batch import Batch, OutputSpec
from ._perturbation import CleanPass, capture, draw_noise, perturbation_samples
from .estimators import fisher_bound, functional_entropy, poincare_bound, variance
from .modality import Modality
from .results import MEASURES

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
        generator: torch.Generator,
        tensorization: bool = True,
    ) -> None:
        self.model, self.modalities, self.output = model, list(modalities), output
        self.sigmas = {m: sigmas[m.name] for m in self.modalities}
        self.options = dict(samples=samples, scale=scale, generator=generator,
                            divergence=divergence, output=output, max_rows=max_rows)
        self.tensorization = tensorization and len(self.modalities) > 1
        self._values: dict[str, dict[str, list[Tensor]]] = {
            m.name: {k: [] for k in MEASURES} for m in self.modalities
        }
        self._joint: dict[str, list[Tensor]] = {k: [] for k in JOINT_KEYS}
        self._predictions: list[Tensor] = []

    def update(self, batch: Batch) -> None:
        """Measure one batch (already on the model's device)."""
        options = dict(self.options, clean=CleanPass(self.model, batch, self.modalities, self.output))
        with torch.no_grad():
            logits, reps = capture(self.model, batch, self.modalities, self.output)
        self._predictions.append(logits.argmax(dim=1).cpu())
        for m in self.modalities:
            f, q = perturbation_samples(self.model, batch, {m: self.sigmas[m]}, **options)
            f, q = f.detach().double(), q[m.name].detach().double()
            per = self._values[m.name]
            per["functional_entropy"].append(functional_entropy(f).cpu())
            per["fisher_bound"].append(fisher_bound(f, q).cpu())
            per["variance"].append(variance(f).cpu())
            per["poincare_bound"].append(poincare_bound(q).cpu())
        if self.tensorization:
            for key, value in zip(JOINT_KEYS, _tensorization(self.model, batch, self.sigmas, reps, options)):
                self._joint[key].append(value)

    def values(self) -> MeasuredValues:
        return MeasuredValues(
            per_modality={
                name: {k: torch.cat(v).numpy() for k, v in per.items()} for name, per in self._values.items()
            },
            joint={k: torch.cat(v).numpy() for k, v in self._joint.items() if v},
            predictions=torch.cat(self._predictions).numpy(),
        )


def _tensorization(model, batch, sigmas, reps, options, *, draws: int = 1):
    """Per example: Ent and Var of f under the joint perturbation, and the tensorization
    sums sum_m E_{-m}[Ent_m f], sum_m E_{-m}[Var_m f] (the other modalities' noise frozen at
    ``draws`` random values per example, the expectation over them taken over examples)."""
    f, _ = perturbation_samples(model, batch, sigmas, gradients=False, **options)
    f = f.double()
    ent_sum = torch.zeros(batch.size, dtype=torch.float64, device=f.device)
    var_sum = torch.zeros_like(ent_sum)
    for m in sigmas:
        for _ in range(draws):
            frozen = {
                o: draw_noise(reps[o.name], s, scale=options["scale"], generator=options["generator"])
                for o, s in sigmas.items()
                if o != m
            }
            fm, _ = perturbation_samples(
                model, batch, {m: sigmas[m]}, gradients=False, offsets=frozen, **options
            )
            ent_sum += functional_entropy(fm.double()) / draws
            var_sum += variance(fm.double()) / draws
    return functional_entropy(f).cpu(), variance(f).cpu(), ent_sum.cpu(), var_sum.cpu()
