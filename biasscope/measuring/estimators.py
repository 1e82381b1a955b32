"""Pure estimators over K Gaussian perturbation samples (Gat et al., NeurIPS 2020).

Every function reduces over dim 0 (the K samples) of ``f`` (the divergence f(z) >= 0 per
sample and example) and ``q`` (the quadratic form <Sigma grad f, grad f> per sample and
example), so a (K, B) input gives B per-example values.

The per-example functional entropy and variance are bias-corrected: the plug-in entropy is
biased low at small K (0.82-0.87 of the truth at K = 8 on f = exp(a.z)), so
:func:`functional_entropy` is the delete-one jackknife of the plug-in estimator and
:func:`variance` the K/(K-1) (unbiased) sample variance. Both are exactly 0 when f is
constant over the K samples. Divergences are computed in float64 from the logits (KL values
of 1e-7 are common at small noise, where float32 rounding would dominate).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "kl_divergence",
    "official_divergence",
    "bernoulli_divergence",
    "gaussian_divergence",
    "quadratic_form",
    "plugin_entropy",
    "functional_entropy",
    "fisher_bound",
    "variance",
    "poincare_bound",
    "DIVERGENCES",
]

_JACKKNIFE_ELEMENTS = 1 << 22  # elements of one (rows, K, B) block of the delete-one pass
_PAIRWISE_MAX_K = 512  # above this K, the O(K B) delete-one form (its O(1/K) term is tiny)


def kl_divergence(clean_logits: Tensor, perturbed_logits: Tensor, *, detach: bool = True) -> Tensor:
    """KL(p_clean || p_perturbed) per row, in float64; 0 when the logits are equal, never
    negative.

    ``detach`` stops the gradient through the clean reference (the audit's measure); the
    regularizer passes False so that its term is differentiated through p_clean as well.
    """
    clean = clean_logits.detach() if detach else clean_logits
    log_p = F.log_softmax(clean.double(), dim=-1)
    log_q = F.log_softmax(perturbed_logits.double(), dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
    return kl.clamp_min(0.0)


def official_divergence(
    clean_logits: Tensor, perturbed_logits: Tensor, *, detach: bool = True
) -> Tensor:
    """The official code's f, in float64: binary cross-entropy with logits of the perturbed
    logits against the clean probabilities, averaged over classes.

    Unlike KL it is not zero at z = 0 (it includes the clean prediction's own binary
    entropy, a constant offset per example) and treats each class as an independent
    Bernoulli; kept for comparability. ``detach`` as in :func:`kl_divergence`.
    """
    clean = clean_logits.detach() if detach else clean_logits
    target = F.softmax(clean.double(), dim=-1)
    bce = F.binary_cross_entropy_with_logits(perturbed_logits.double(), target, reduction="none")
    return bce.mean(dim=-1)


def bernoulli_divergence(clean_logits: Tensor, perturbed_logits: Tensor, *, detach: bool = True) -> Tensor:
    """The sum over columns of KL(Bernoulli(sigmoid(clean)) || Bernoulli(sigmoid(perturbed))),
    in float64: the divergence of a multi-label (sigmoid) head. ``detach`` as in
    :func:`kl_divergence`."""
    clean = (clean_logits.detach() if detach else clean_logits).double()
    pert = perturbed_logits.double()
    p = torch.sigmoid(clean)
    kl = p * (F.logsigmoid(clean) - F.logsigmoid(pert)) + (1 - p) * (F.logsigmoid(-clean) - F.logsigmoid(-pert))
    return kl.sum(dim=-1).clamp_min(0.0)


def gaussian_divergence(clean_logits: Tensor, perturbed_logits: Tensor, *, detach: bool = True) -> Tensor:
    """1/2 sum_j (y_j - y'_j)^2 in float64: the KL between unit-variance Gaussians centred on
    the clean and perturbed outputs (a regression output). ``detach`` as above."""
    clean = (clean_logits.detach() if detach else clean_logits).double()
    return 0.5 * (clean - perturbed_logits.double()).square().sum(dim=-1)


DIVERGENCES = {"kl": kl_divergence, "official": official_divergence, "bernoulli": bernoulli_divergence,
               "gaussian": gaussian_divergence}


def quadratic_form(grad: Tensor, sigma2: Tensor) -> Tensor:
    """<Sigma grad, grad> per row, Sigma = diag(sigma2). ``grad``: (N, *feat); ``sigma2``
    broadcasts against ``feat``. Returns (N,)."""
    return (grad.square() * sigma2).flatten(start_dim=1).sum(dim=1)


def _phi(r: Tensor) -> Tensor:
    """r log r - r + 1 >= 0 (0 at r = 1), written to keep its digits near r = 1."""
    return torch.special.xlogy(r, r) - (r - 1.0)


def _constant(f: Tensor) -> Tensor:
    """Per column: whether every sample equals the first (f constant over dim 0)."""
    return (f == f[:1]).all(dim=0)


def plugin_entropy(f: Tensor) -> Tensor:
    """The plug-in Ent(f) = E[f log f] - E[f] log E[f] over dim 0, computed as
    m * mean(r log r - r + 1) with m = E[f], r = f / m (no cancellation; 0 log 0 = 0);
    exactly 0 for a constant f."""
    mean = f.mean(dim=0)
    safe = torch.where(mean > 0, mean, torch.ones_like(mean))
    ent = mean * _phi(f / safe).mean(dim=0)
    return torch.where(_constant(f) | (mean <= 0), torch.zeros_like(ent), ent)


def _leave_one_out_entropy(f: Tensor) -> Tensor:
    """Ent of the K - 1 samples left when sample i is deleted, for every i: (K, *rest)."""
    k = f.shape[0]
    total = f.sum(dim=0)
    if k > _PAIRWISE_MAX_K:  # Ent_{-i} = T_{-i} / (K - 1) - m_{-i} log m_{-i}, T = sum f log f
        flogf = torch.special.xlogy(f, f)
        mean = (total - f) / (k - 1)
        return (flogf.sum(dim=0) - flogf) / (k - 1) - torch.special.xlogy(mean, mean)
    rows = max(1, _JACKKNIFE_ELEMENTS // max(1, f.numel()))
    out = []
    for start in range(0, k, rows):
        idx = torch.arange(start, min(k, start + rows), device=f.device)
        mean = (total - f[idx]) / (k - 1)  # (r, *rest): the mean without sample i
        safe = torch.where(mean > 0, mean, torch.ones_like(mean))
        terms = _phi(f.unsqueeze(0) / safe.unsqueeze(1))  # (r, K, *rest)
        keep = torch.ones(len(idx), k, dtype=torch.bool, device=f.device)
        keep[torch.arange(len(idx)), idx] = False
        keep = keep.view(len(idx), k, *([1] * (f.dim() - 1)))
        ent = mean * (terms * keep).sum(dim=1) / (k - 1)
        out.append(torch.where(mean > 0, ent, torch.zeros_like(ent)))
    return torch.cat(out, dim=0)


def functional_entropy(f: Tensor) -> Tensor:
    """Bias-corrected Ent(f) over dim 0: the delete-one jackknife
    K Ent_K - (K - 1) mean_i Ent_{K-1, -i} of the plug-in estimator (:func:`plugin_entropy`).

    It removes the O(1/K) bias of the plug-in estimator (whose expectation is below the
    truth); a single value can be slightly negative when the truth is near 0. Exactly 0 for
    a constant f (f = 0, or the ``official`` divergence's constant offset).
    """
    k = f.shape[0]
    if k < 2:
        return torch.zeros_like(f[0]) if k else f.sum(dim=0)
    full = plugin_entropy(f)
    jack = k * full - (k - 1) * _leave_one_out_entropy(f).mean(dim=0)
    return torch.where(_constant(f), torch.zeros_like(jack), jack)


def fisher_bound(f: Tensor, q: Tensor) -> Tensor:
    """Log-Sobolev (Fisher) bound 1/2 E[<Sigma grad f, grad f> / f] over dim 0; terms with
    f = 0 contribute 0 (there f is at its minimum and its gradient vanishes)."""
    ratio = torch.where(f > 0, q / torch.where(f > 0, f, torch.ones_like(f)), torch.zeros_like(q))
    return 0.5 * ratio.mean(dim=0)


def variance(f: Tensor) -> Tensor:
    """Unbiased Var(f) over dim 0 (the K/(K-1) sample variance); exactly 0 for a constant f."""
    if f.shape[0] < 2:
        return torch.zeros_like(f.sum(dim=0))
    var = f.var(dim=0, unbiased=True)
    return torch.where(_constant(f), torch.zeros_like(var), var)


def poincare_bound(q: Tensor) -> Tensor:
    """Poincare bound E[<Sigma grad f, grad f>] over dim 0."""
    return q.mean(dim=0)
