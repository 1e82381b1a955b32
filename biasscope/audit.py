"""The audit: per-modality functional entropy, Fisher bound, variance and Poincare bound
over a dataset, with 95% intervals, shares, per-class means, the joint (tensorization)
check, the performance-grounded checks and the verdict."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn

from . import __version__
from ._batch import Batch, OutputSpec, split_batch
from ._device import on_device, resolve_device
from ._perturbation import CleanPass, capture, draw_noise, perturbation_samples, representation_std
from .errors import DataLoadError, ModalityError
from .estimators import fisher_bound, functional_entropy, poincare_bound, variance
from .modality import Modality, validate_modalities
from .results import MEASURES, AuditResult, Estimate, JointCheck, ModalityResult
from .verdict import Thresholds, modality_verdicts, verdict_sentence

__all__ = ["audit", "mean_interval", "collect_batches"]

Progress = Callable[[str, int, int], None]


def mean_interval(values: np.ndarray, confidence: float = 0.95) -> Estimate:
    """Mean of ``values`` with a Student-t confidence interval (nan bounds for one value)."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    n = values.size
    if n < 2:
        return Estimate(mean, float("nan"), float("nan"))
    sem = float(values.std(ddof=1)) / np.sqrt(n)
    if sem == 0.0:
        return Estimate(mean, mean, mean)
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=sem)
    return Estimate(mean, float(low), float(high))


def collect_batches(
    data: Iterable[Any], *, label_key: str | None = "label", limit: int | None = None
) -> list[Batch]:
    """Materialise ``data`` (any iterable of dict or tuple batches) as :class:`Batch` es,
    keeping at most ``limit`` examples."""
    batches: list[Batch] = []
    seen = 0
    for raw in data:
        batch = split_batch(raw, label_key=label_key)
        if limit is not None and seen + batch.size > limit:
            batch = batch.select(torch.arange(limit - seen))
        if batch.size:
            batches.append(batch)
        seen += batch.size
        if limit is not None and seen >= limit:
            break
    if not batches:
        raise DataLoadError(
            "The dataset is empty: no batch holds an example. Check the data file or "
            "factory (and --limit)."
        )
    return batches


def _usable_labels(batches: Sequence[Batch]) -> bool:
    return all(
        b.label is not None and b.label.dim() == 1 and not b.label.is_floating_point()
        for b in batches
    )


def _tensorization(model, batch, sigmas, reps, options, *, draws: int = 1):
    """Per example: Ent and Var of f under the joint perturbation, and the tensorization
    sums sum_m E_{-m}[Ent_m f], sum_m E_{-m}[Var_m f] (the other modalities' noise frozen at
    ``draws`` random values per example: unbiased for the mean over examples)."""
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


def audit(
    model: nn.Module,
    data: Iterable[Any],
    modalities: Sequence[Modality],
    *,
    samples: int = 32,
    scale: float = 1.0,
    seed: int = 0,
    device: str | torch.device = "auto",
    divergence: str = "kl",
    label_key: str | None = "label",
    output: OutputSpec | None = None,
    limit: int | None = None,
    max_rows: int = 4096,
    thresholds: Thresholds | None = None,
    permutation_repeats: int = 10,
    shapley: bool = True,
    progress: Progress | None = None,
) -> AuditResult:
    """Audit how much ``model`` depends on each modality.

    Args:
        model: any ``nn.Module`` classifier; it is returned to its device and mode after.
        data: an iterable of batches: dicts (``model(**batch)``, label under ``label_key``)
            or tuples (``model(*batch[:-1])``, label last). A DataLoader works.
        modalities: the :class:`Modality` specs (1..M).
        samples: K, Gaussian samples per example and modality.
        scale: s, the noise is N(0, diag(s^2 sigma^2)) with sigma the per-feature std.
        divergence: ``"kl"`` (KL(clean || perturbed)) or ``"official"`` (the paper code's BCE).
        max_rows: the largest expanded batch (examples x samples) run at once: the memory knob.
        permutation_repeats: R shuffles per modality for the permutation score (needs labels).
        shapley: also compute exact modality Shapley values (needs labels).
        progress: optional callback ``(stage, done, total)`` for a progress display.
    """
    if samples < 2:
        raise ModalityError(f"samples must be at least 2 (got {samples}); the default is 32.")
    modalities = list(modalities)
    output = output or OutputSpec()
    thresholds = thresholds or Thresholds()
    report = progress or (lambda stage, done, total: None)
    dev = resolve_device(device)
    batches = collect_batches(data, label_key=label_key, limit=limit)
    validate_modalities(batches[0], modalities)
    labelled = _usable_labels(batches)

    with on_device(model, dev):
        report("scale", 0, 1)
        sigmas = representation_std(model, (b.to(dev) for b in batches), modalities, output)
        report("scale", 1, 1)
        by_mod = {m: sigmas[m.name] for m in modalities}
        generator = torch.Generator(device=dev).manual_seed(seed)
        values: dict[str, dict[str, list[torch.Tensor]]] = {
            m.name: {k: [] for k in MEASURES} for m in modalities
        }
        joint_ent: list[torch.Tensor] = []
        joint_var: list[torch.Tensor] = []
        cond_ent: list[torch.Tensor] = []
        cond_var: list[torch.Tensor] = []
        preds, labels = [], []
        for i, batch in enumerate(batches):
            b = batch.to(dev)
            options = dict(
                samples=samples, scale=scale, generator=generator, divergence=divergence,
                output=output, max_rows=max_rows, clean=CleanPass(model, b, modalities, output),
            )
            with torch.no_grad():
                logits, reps = capture(model, b, modalities, output)
            preds.append(logits.argmax(dim=1).cpu())
            if labelled:
                labels.append(b.label.cpu())
            for m in modalities:
                f, q = perturbation_samples(model, b, {m: by_mod[m]}, **options)
                f, q = f.detach().double(), q[m.name].detach().double()
                per = values[m.name]
                per["functional_entropy"].append(functional_entropy(f).cpu())
                per["fisher_bound"].append(fisher_bound(f, q).cpu())
                per["variance"].append(variance(f).cpu())
                per["poincare_bound"].append(poincare_bound(q).cpu())
            if len(modalities) > 1:
                ent, var, ent_sum, var_sum = _tensorization(model, b, by_mod, reps, options)
                joint_ent.append(ent)
                joint_var.append(var)
                cond_ent.append(ent_sum)
                cond_var.append(var_sum)
            report("entropy", i + 1, len(batches))

        pred = torch.cat(preds)
        label = torch.cat(labels) if labelled else None
        permutation, shapley_values = {}, []
        if labelled:
            from .perception import modality_shapley, permutation_scores

            permutation = permutation_scores(
                model, batches, modalities, repeats=permutation_repeats, seed=seed,
                device=dev, output=output, progress=report,
            )
            if shapley:
                shapley_values = modality_shapley(
                    model, batches, modalities, seed=seed, device=dev, output=output,
                    progress=report,
                )

    classes_of = label if label is not None else pred
    classes = sorted(int(c) for c in torch.unique(classes_of))
    results = []
    for m in modalities:
        per = {k: torch.cat(v).numpy() for k, v in values[m.name].items()}
        results.append(
            ModalityResult(
                name=m.name,
                site=m.site,
                share=0.0,
                per_class={
                    k: [float(v[(classes_of == c).numpy()].mean()) for c in classes]
                    for k, v in per.items()
                },
                per_example={k: v.tolist() for k, v in per.items()},
                permutation=permutation.get(m.name),
                **{k: mean_interval(v) for k, v in per.items()},
            )
        )
    total = sum(r.functional_entropy.mean for r in results)
    for r in results:
        r.share = r.functional_entropy.mean / total if total > 0 else 0.0
    verdicts = modality_verdicts(results, thresholds)
    for r in results:
        r.verdict = verdicts[r.name]

    joint = None
    if joint_ent:
        joint = JointCheck(
            functional_entropy=mean_interval(torch.cat(joint_ent).numpy()),
            variance=mean_interval(torch.cat(joint_var).numpy()),
            sum_functional_entropy=float(torch.cat(cond_ent).mean()),
            sum_variance=float(torch.cat(cond_var).mean()),
        )
    return AuditResult(
        modalities=results,
        joint=joint,
        classes=classes,
        class_source="label" if labelled else "prediction",
        n_examples=int(pred.numel()),
        accuracy=float((pred == label).double().mean()) if label is not None else None,
        settings={
            "samples": samples,
            "scale": scale,
            "seed": seed,
            "device": str(dev),
            "divergence": divergence,
            "max_rows": max_rows,
            "permutation_repeats": permutation_repeats if labelled else 0,
            "thresholds": asdict(thresholds),
            "modalities": {m.name: m.site for m in modalities},
        },
        shapley=shapley_values,
        sentence=verdict_sentence(verdicts),
        provenance={"versions": {"biasscope": __version__, "torch": torch.__version__}},
    )
