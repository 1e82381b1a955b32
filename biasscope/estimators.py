"""Pure estimators over K Gaussian perturbation samples (Gat et al., NeurIPS 2020).

Every function reduces over dim 0 (the K samples) of ``f`` (the divergence f(z) >= 0 per
sample and example) and ``q`` (the quadratic form <Sigma grad f, grad f> per sample and
example), so a (K, B) input gives B per-example values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "kl_divergence",
    "official_divergence",
    "quadratic_form",
    "functional_entropy",
    "fisher_bound",
    "variance",
    "poincare_bound",
    "DIVERGENCES",
]


def kl_divergence(clean_logits: Tensor, perturbed_logits: Tensor, *, detach: bool = True) -> Tensor:
    """KL(p_clean || p_perturbed) per row; 0 when the logits are equal, never negative.

    ``detach`` stops the gradient through the clean reference (the audit's measure); the
    regularizer passes False so that its term is differentiated through p_clean as well.
    """
    log_p = F.log_softmax(clean_logits.detach() if detach else clean_logits, dim=-1)
    log_q = F.log_softmax(perturbed_logits, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
    return kl.clamp_min(0.0)


def official_divergence(
    clean_logits: Tensor, perturbed_logits: Tensor, *, detach: bool = True
) -> Tensor:
    """The official code's f: binary cross-entropy with logits of the perturbed logits
    against the clean probabilities, averaged over classes.

    Unlike KL it is not zero at z = 0 (it includes the clean prediction's own binary
    entropy) and treats each class as an independent Bernoulli; kept for comparability.
    ``detach`` as in :func:`kl_divergence`.
    """
    target = F.softmax(clean_logits.detach() if detach else clean_logits, dim=-1)
    bce = F.binary_cross_entropy_with_logits(perturbed_logits, target, reduction="none")
    return bce.mean(dim=-1)


DIVERGENCES = {"kl": kl_divergence, "official": official_divergence}


def quadratic_form(grad: Tensor, sigma2: Tensor) -> Tensor:
    """<Sigma grad, grad> per row, Sigma = diag(sigma2). ``grad``: (N, *feat); ``sigma2``
    broadcasts against ``feat``. Returns (N,)."""
    return (grad.square() * sigma2).flatten(start_dim=1).sum(dim=1)


def functional_entropy(f: Tensor) -> Tensor:
    """Ent(f) = E[f log f] - E[f] log E[f] over dim 0, with 0 log 0 = 0."""
    mean = f.mean(dim=0)
    return (torch.special.xlogy(f, f).mean(dim=0) - torch.special.xlogy(mean, mean)).clamp_min(0.0)


def fisher_bound(f: Tensor, q: Tensor) -> Tensor:
    """Log-Sobolev (Fisher) bound 1/2 E[<Sigma grad f, grad f> / f] over dim 0; terms with
    f = 0 contribute 0 (there f is at its minimum and its gradient vanishes)."""
    ratio = torch.where(f > 0, q / torch.where(f > 0, f, torch.ones_like(f)), torch.zeros_like(q))
    return 0.5 * ratio.mean(dim=0)


def variance(f: Tensor) -> Tensor:
    """Var(f) over dim 0 (the population variance of the K samples)."""
    return f.var(dim=0, unbiased=False)


def poincare_bound(q: Tensor) -> Tensor:
    """Poincare bound E[<Sigma grad f, grad f>] over dim 0."""
    return q.mean(dim=0)
