"""ModDrop for fix, and how its target is chosen.

ModDrop by permutation (Neverova, Wolf, Taylor & Nebout, "ModDrop: adaptive multi-modal
gesture recognition", IEEE TPAMI 2016): a fraction of the rows of one modality get another
example's representation in the cross-entropy pass, so that modality carries no label
information there and the others must. The target is the modality the model *relies* on:
the one whose permutation across a held set raises the loss most (perceptual score, Gat,
Schwartz & Schwing, NeurIPS 2021) -- not the most *sensitive* one, which can be a modality
the model reads but does not use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ._batch import Batch, OutputSpec
from .modality import Modality
from .perception import AuditSet
from .regularizer import _eval_mode

__all__ = ["ModDrop", "held_performance", "measure_reliance"]


class ModDrop:
    """Transforms of one modality for the cross-entropy pass: permutation of a ``dropout``
    fraction of the rows and/or Gaussian noise N(0, diag(noise^2 sigma^2)), sigma the
    per-feature std over the batch. Draws come from ``generator`` only."""

    def __init__(self, modalities: Sequence[Modality], *, dropout: float, noise: float) -> None:
        self.modalities = {m.name: m for m in modalities}
        self.dropout, self.noise = dropout, noise

    @property
    def active(self) -> bool:
        return self.dropout > 0 or self.noise > 0

    def transforms(
        self, batch: Batch, target: str, generator: torch.Generator
    ) -> dict[Modality, Any]:
        """``{modality: transform}`` for :func:`biasscope.modality.intervene` (empty when off)."""
        if not self.active:
            return {}
        dropout, noise = self.dropout, self.noise
        dev, n = generator.device, batch.size
        mask = torch.rand(n, generator=generator, device=dev) < dropout
        perm = torch.randperm(n, generator=generator, device=dev)

        def transform(h: Tensor) -> Tensor:
            if dropout > 0:
                swap = mask.to(h.device).view(-1, *([1] * (h.dim() - 1)))
                h = torch.where(swap, h[perm.to(h.device)], h)
            if noise > 0:
                sigma = h.detach().float().std(dim=0, unbiased=False)
                z = torch.randn(h.shape, generator=generator, device=dev, dtype=torch.float32)
                h = h + (noise * sigma * z.to(h.device)).to(h.dtype)
            return h

        return {self.modalities[target]: transform}


def measure_reliance(
    model: nn.Module,
    held: Sequence[Batch],
    modalities: Sequence[Modality],
    *,
    device: torch.device,
    output: OutputSpec,
    repeats: int,
    seed: int,
) -> dict[str, float]:
    """Per modality, the mean cross-entropy increase (nats) when it is permuted across the
    held examples (``repeats`` permutations from ``seed``, shared by the modalities)."""
    with _eval_mode(model, True), torch.no_grad():
        data = AuditSet(model, held, modalities, device, output)
        generator = torch.Generator().manual_seed(seed)
        perms = [torch.randperm(data.n, generator=generator) for _ in range(repeats)]
        clean = data.clean.log_likelihood
        return {
            m.name: sum(clean - data.evaluate(p, [m]).log_likelihood for p in perms) / repeats
            for m in modalities
        }


def held_performance(
    model: nn.Module,
    held: Sequence[Batch],
    modalities: Sequence[Modality],
    target: str,
    *,
    device: torch.device,
    output: OutputSpec,
    seed: int,
) -> dict[str, float]:
    """Validation loss and accuracy, and the decorrelated proxy: the accuracy with ``target``
    permuted across the examples (one fixed permutation from ``seed``, the same every call,
    so changes are the model's)."""
    with _eval_mode(model, True), torch.no_grad():
        data = AuditSet(model, held, modalities, device, output)
        perm = torch.randperm(data.n, generator=torch.Generator().manual_seed(seed))
        proxy = data.evaluate(perm, [m for m in modalities if m.name == target])
    return {
        "val_loss": -data.clean.log_likelihood,
        "val_accuracy": data.clean.accuracy,
        "val_proxy_accuracy": proxy.accuracy,
    }
