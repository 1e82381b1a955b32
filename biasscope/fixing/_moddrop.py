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

from ..runtime._batch import Batch, OutputSpec
from ..errors import ConfigError
from ..measuring.modality import Modality
from ..measuring.perception import AuditSet
from .regularizer import _eval_mode

__all__ = ["TIE_MARGIN", "ModDrop", "choose_target", "held_performance", "measure_reliance"]

#: Two reliances within this fraction of the larger one are a near-tie: which modality is the
#: shortcut is then not decided by the coin of the permutations; fix refuses and names
#: ``augment`` (benchmarks/near_tie.py: symmetric ModDrop did no better than leaving the model).
TIE_MARGIN = 0.2


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
        self, batch: Batch, target: str | Sequence[str], generator: torch.Generator
    ) -> dict[Modality, Any]:
        """``{modality: transform}`` for :func:`biasscope.measuring.modality.intervene` (empty when off).

        ``target``: one modality name, or several (symmetric ModDrop: each row, with
        probability ``dropout``, has one of them, drawn uniformly, permuted)."""
        if not self.active:
            return {}
        names = [target] if isinstance(target, str) else list(target)
        dropout, noise = self.dropout, self.noise
        dev, n = generator.device, batch.size
        mask = torch.rand(n, generator=generator, device=dev) < dropout
        perm = torch.randperm(n, generator=generator, device=dev)
        which = torch.randint(len(names), (n,), generator=generator, device=dev) if len(names) > 1 else None

        def transform_of(index: int):
            rows = mask if which is None else mask & (which == index)

            def transform(h: Tensor) -> Tensor:
                if dropout > 0:
                    swap = rows.to(h.device).view(-1, *([1] * (h.dim() - 1)))
                    h = torch.where(swap, h[perm.to(h.device)], h)
                if noise > 0:
                    sigma = h.detach().float().std(dim=0, unbiased=False)
                    z = torch.randn(h.shape, generator=generator, device=dev, dtype=torch.float32)
                    h = h + (noise * sigma * z.to(h.device)).to(h.dtype)
                return h

            return transform

        return {self.modalities[name]: transform_of(i) for i, name in enumerate(names)}


def choose_target(reliance: dict[str, float], augment: str, names: Sequence[str]) -> tuple[str | None, str]:
    """(modality, rule) for ModDrop from the held set's reliance and ``augment``:
    ``given`` (a modality name), ``all`` (symmetric ModDrop), ``sensitivity`` (per step;
    also when nothing is relied upon) or ``reliance`` (the largest). Refuses a near-tie (the
    two largest reliances within :data:`TIE_MARGIN`): the user names the target."""
    if augment in names:
        return augment, "given"
    if augment == "all":
        return None, "all"
    ranked = sorted(reliance.values(), reverse=True)
    if augment == "sensitivity" or not ranked[0] > 0:
        return None, "sensitivity"
    if len(ranked) > 1 and ranked[1] >= (1 - TIE_MARGIN) * ranked[0]:
        first, second = sorted(reliance, key=reliance.get, reverse=True)[:2]
        raise ConfigError(
            f"The model relies on {first} and {second} about equally (loss increase when permuted: "
            f"{reliance[first]:.3g} and {reliance[second]:.3g} nats, within {TIE_MARGIN:.0%}), so which "
            "one is the shortcut is a coin flip fix will not make. Name it: --augment "
            f"{first} (or augment='{first}') if {first} is the shortcut, --augment {second} if "
            f"{second} is; --augment all permutes every modality (symmetric ModDrop); shifted data "
            "(--shift-data) then checks the choice.", parameter="augment",
        )
    return max(reliance, key=reliance.get), "reliance"


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
