"""Information available versus information used, per modality.

*Available*: a linear probe on the modality's representation at its audit site (the
representation the audit perturbs) predicts the label. The representation is flattened
(pooled where very wide), standardised, reduced with PCA to at most ``max_dims``
components, and a multinomial logistic regression is scored by stratified k-fold
cross-validation (out-of-fold predictions; scaler and PCA fitted inside each fold). The
accuracy has a Wilson 95% interval over the pooled out-of-fold predictions; chance is the
majority-class rate. A linear probe is a lower bound on the information present.

*Used*: the model's own accuracy with the modality permuted across the examples (its
information destroyed, its marginal kept), as in the permutation score.

Cost is bounded: at most ``max_examples`` examples (seeded subsample) and ``max_dims``
features reach the classifier; the representations come from one clean pass, shared with
the audit's permutation checks when an :class:`~biasscope.measuring.perception.AuditSet` is given.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..runtime._batch import Batch, OutputSpec
from ..runtime._device import model_device
from ._perturbation import capture
from ._stats import mean_interval
from ..errors import DataLoadError, ModalityError
from ..results import ProbeResult
from .modality import Modality
from .perception import AuditSet
from ..results import Diagnostic, Estimate, PermutationScore

__all__ = [
    "MAX_EXAMPLES",
    "MAX_DIMS",
    "ProbeResult",
    "probe_modalities",
    "probe_diagnostics",
    "probe_clauses",
    "uninformative_warnings",
    "wilson_interval",
]

#: at most this many examples reach the probe (a seeded subsample beyond it)
MAX_EXAMPLES = 2000
#: PCA components kept when a representation is wider
MAX_DIMS = 64
#: flattened representations wider than this are pooled (spatial / sequence) first
MAX_RAW_FEATURES = 4096
#: levels of the verdict under which a modality counts as not used by the model
NOT_USED = ("ignored", "unused")


def wilson_interval(successes: int, n: int, *, z: float = 1.959964) -> Estimate:
    """The proportion successes / n with its Wilson score interval (95% by default)."""
    if n <= 0:
        return Estimate(math.nan, math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # the closed form can miss p by a rounding error at k = 0 or k = n
    return Estimate(p, min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)))


def _pool(h: Tensor, *, max_features: int, generator: torch.Generator) -> Tensor:
    """(N, *feat) -> (N, D) with D <= max_features: flattened when narrow enough; else
    image-like (N, C, H, W) average-pooled spatially, sequences averaged over positions,
    and anything still too wide reduced by a seeded Gaussian random projection."""
    h = h.detach().float().cpu()
    if h.dim() == 1:
        return h[:, None]
    if h[0].numel() <= max_features:
        return h.reshape(h.shape[0], -1)
    if h.dim() == 4 and h.shape[1] <= max_features:
        side = max(1, int(math.sqrt(max_features // h.shape[1])))
        h = nn.functional.adaptive_avg_pool2d(h, (side, side))
    elif h.dim() >= 3:
        h = h.mean(dim=tuple(range(1, h.dim() - 1)))
    h = h.reshape(h.shape[0], -1)
    if h.shape[1] > max_features:
        proj = torch.randn(h.shape[1], max_features, generator=generator) / math.sqrt(max_features)
        h = h @ proj
    return h


def _representation(
    model: nn.Module, batches: Sequence[Batch], modality: Modality, data: AuditSet,
    output: OutputSpec, rows: Tensor, generator: torch.Generator,
) -> Tensor:
    """The (n, D) features of examples ``rows`` at the modality's site."""
    pool = data.pool.get(modality.name)
    if pool is not None:
        return _pool(pool[rows], max_features=MAX_RAW_FEATURES, generator=generator)
    # shapes vary between batches (e.g. sequence length): average each batch over the
    # positions, keeping the last (channel) dimension
    parts = []
    with torch.no_grad():
        for batch in batches:
            b = batch.to(data.device)
            if modality.layer is not None:
                h = capture(model, b, [modality], output)[1][modality.name]
            else:
                h = b.get_input(modality.input)
            h = h.detach().float().cpu()
            parts.append(h.mean(dim=tuple(range(1, h.dim() - 1))) if h.dim() > 2 else h.reshape(h.shape[0], -1))
    widths = {p.shape[1] for p in parts}
    if len(widths) > 1:
        raise ModalityError(
            f"Modality {modality.name!r}: {modality.site} has a last dimension that varies between "
            f"batches ({sorted(widths)}), so no fixed-width probe can read it; choose a layer "
            "with a fixed feature width."
        )
    return _pool(torch.cat(parts)[rows], max_features=MAX_RAW_FEATURES, generator=generator)


def _cross_validated(
    features: np.ndarray, labels: np.ndarray, *, folds: int, max_dims: int, seed: int
) -> tuple[int, int, int]:
    """Out-of-fold correct predictions, folds used and features given to the classifier."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    counts = np.unique(labels, return_counts=True)[1]
    k = int(min(folds, max(2, counts.min())))
    train_size = len(labels) - math.ceil(len(labels) / k)
    dims = int(min(max_dims, features.shape[1], max(1, train_size - 1)))
    steps = [StandardScaler()]
    if features.shape[1] > dims:
        steps.append(PCA(n_components=dims, svd_solver="randomized", random_state=seed))
    steps.append(LogisticRegression(C=1.0, max_iter=500))
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small classes, lbfgs iteration notices
        predicted = cross_val_predict(make_pipeline(*steps), features, labels, cv=splitter)
    return int((predicted == labels).sum()), k, dims


def _permuted_accuracy(
    data: AuditSet, modality: Modality, score: PermutationScore | None, *, repeats: int, seed: int
) -> Estimate:
    """The model's accuracy with the modality permuted: from its permutation score when
    given (no extra pass), else ``repeats`` seeded shuffles of the audit set."""
    clean = data.clean.accuracy
    if score is not None:
        d = score.accuracy_drop
        return Estimate(clean - d.mean, clean - d.ci_high, clean - d.ci_low)
    generator = torch.Generator().manual_seed(seed)
    accs = [
        data.evaluate(torch.randperm(data.n, generator=generator), [modality]).accuracy
        for _ in range(repeats)
    ]
    return mean_interval(np.array(accs))


def _crossable(rows: Tensor, y: np.ndarray, keep: np.ndarray) -> tuple[Tensor, np.ndarray]:
    """The examples of the classes in ``keep`` (those with at least two examples)."""
    mask = np.isin(y, keep)
    return rows[torch.from_numpy(mask)], y[mask]


@torch.no_grad()
def probe_modalities(
    model: nn.Module,
    batches: Sequence[Batch],
    modalities: Sequence[Modality],
    *,
    output: OutputSpec = OutputSpec(),
    device: torch.device | str | None = None,
    seed: int = 0,
    folds: int = 5,
    max_examples: int = MAX_EXAMPLES,
    max_dims: int = MAX_DIMS,
    permutation_repeats: int = 5,
    permutation: Mapping[str, PermutationScore] | None = None,
    data: AuditSet | None = None,
) -> list[ProbeResult]:
    """Probe each modality's representation for the label, beside the model's accuracy
    with that modality permuted (see the module docstring).

    Args:
        batches: labelled :class:`Batch` es (integer class labels); the model is on ``device``
            in eval mode (default: where its parameters are).
        permutation: the audit's permutation scores, reused for the permuted accuracy.
        data: the audit's :class:`AuditSet` of these batches and modalities (shares its pass).
    Returns:
        One :class:`ProbeResult` per modality, in order; classes with a single example are
        left out (no stratified fold can hold them), and nothing is returned when fewer
        than two classes have two examples.
    """
    if any(b.label is None or b.label.is_floating_point() for b in batches):
        raise DataLoadError(
            "The probe needs integer class labels, one per example (label_key names them); "
            "for unlabelled data turn the probe off (probe=False)."
        )
    dev = torch.device(device) if device is not None else model_device(model)
    data = data or AuditSet(model, batches, modalities, dev, output)
    generator = torch.Generator().manual_seed(seed)
    labels = torch.cat([b.label.cpu() for b in batches])
    rows = torch.arange(data.n)
    if data.n > max_examples:
        rows = torch.randperm(data.n, generator=generator)[:max_examples].sort().values
    y = labels[rows].numpy()
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) > 1 and counts.min() < 2:  # stratified folds need two of each class
        rows, y = _crossable(rows, y, classes[counts >= 2])
        if len(np.unique(y)) < 2:
            return []  # no two classes with two examples each: nothing to cross-validate
    chance = float(np.unique(y, return_counts=True)[1].max() / len(y))
    out = []
    for m in modalities:
        x = _representation(model, batches, m, data, output, rows, generator).double().numpy()
        if len(np.unique(y)) < 2:
            correct, k, dims = len(y), 0, x.shape[1]
        else:
            correct, k, dims = _cross_validated(x, y, folds=folds, max_dims=max_dims, seed=seed)
        score = (permutation or {}).get(m.name)
        out.append(
            ProbeResult(
                modality=m.name, site=m.site, accuracy=wilson_interval(correct, len(y)),
                chance=chance, folds=k, n_examples=len(y), dims=dims, raw_dims=x.shape[1],
                model_accuracy=data.clean.accuracy,
                model_accuracy_permuted=_permuted_accuracy(
                    data, m, score, repeats=permutation_repeats, seed=seed
                ),
            )
        )
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _probe_text(p: ProbeResult) -> str:
    return (
        f"probe {_pct(p.accuracy.mean)}, 95% CI {_pct(p.accuracy.ci_low)}-"
        f"{_pct(p.accuracy.ci_high)}; chance {_pct(p.chance)}"
    )


def probe_diagnostics(probes: Sequence[ProbeResult], verdicts: Mapping[str, str]) -> list[Diagnostic]:
    """The sentences that say whether ignoring (or barely using) a modality is right.

    Codes: ``information_unused`` (ignored/unused, the probe beats chance: the bias this
    tool exists to find), ``ignoring_is_right`` (ignored/unused, probe at chance),
    ``information_underused`` (weak, the probe beats chance).
    """
    out = []
    for p in probes:
        verdict = verdicts.get(p.modality)
        name = f"`{p.modality}`"
        if verdict in NOT_USED and p.informative:
            out.append(Diagnostic(
                "information_unused", "warning",
                f"The model ignores {name}, which alone predicts the label at {_pct(p.accuracy.mean)} "
                f"({_probe_text(p)}): information left unused.",
                f"Retrain or run `fix` so that the model uses {name} (e.g. modality dropout on the "
                "dominant modality); check that the shortcut it uses instead holds at deployment.",
                p.modality,
            ))
        elif verdict in NOT_USED:
            out.append(Diagnostic(
                "ignoring_is_right", "info",
                f"The model ignores {name}, which carries no label information ({_probe_text(p)}, "
                "probe at chance): ignoring it is right.",
                f"Nothing to fix; check the data of {name} if it should carry the label, or drop it.",
                p.modality,
            ))
        elif verdict == "weak" and p.informative and p.available > 2 * p.used:
            out.append(Diagnostic(
                "information_underused", "info",
                f"The model barely uses {name}, which alone predicts the label at "
                f"{_pct(p.accuracy.mean)} ({_probe_text(p)}).",
                f"Consider `fix` to make the model use more of {name}.",
                p.modality,
            ))
    return out


def probe_clauses(probes: Sequence[ProbeResult], verdicts: Mapping[str, str]) -> dict[str, str]:
    """For the verdict sentence: per modality the model does not use, what its probe says,
    as a predicate ("alone predicts the label at 85% (chance 25%): information left unused"
    or "carries no label information (probe at chance): ignoring it is right")."""
    out = {}
    for p in probes:
        if verdicts.get(p.modality) not in NOT_USED:
            continue
        if p.informative:
            out[p.modality] = (f"alone predicts the label at {_pct(p.accuracy.mean)} (chance "
                               f"{_pct(p.chance)}): information left unused")
        else:
            out[p.modality] = "carries no label information (probe at chance): ignoring it is right"
    return out


def uninformative_warnings(probes: Sequence[ProbeResult]) -> list[Diagnostic]:
    """For ``fix``: a warning for each modality whose probe is at chance, before the
    regularizer pushes the model to depend on it (code ``push_uninformative``)."""
    return [
        Diagnostic(
            "push_uninformative", "warning",
            f"`{p.modality}` carries no label information ({_probe_text(p)}): pushing the model "
            "to depend on it can only add noise to its predictions.",
            f"Leave `{p.modality}` out of the modalities given to fix, or check its data.",
            p.modality,
        )
        for p in probes
        if not p.informative
    ]
