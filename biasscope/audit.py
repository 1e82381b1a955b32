"""The audit: per-modality functional entropy, Fisher bound, variance and Poincare bound
over a dataset, with 95% intervals, shares, per-class means, the joint (tensorization)
check, the performance-grounded checks and the verdict."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from . import __version__
from ._batch import Batch, OutputSpec, split_batch
from ._device import on_device, resolve_device
from ._stats import mean_interval
from ._perturbation import CleanPass, capture, draw_noise, perturbation_samples, representation_std
from .errors import ConfigError, DataLoadError
from .estimators import DIVERGENCES, fisher_bound, functional_entropy, poincare_bound, variance
from .modality import Modality, validate_modalities
from .perception import AuditSet, modality_shapley, permutation_scores
from .results import MEASURES, AuditResult, JointCheck, ModalityResult
from .verdict import Thresholds, modality_verdicts, verdict_sentence

__all__ = ["audit", "collect_batches"]

Progress = Callable[[str, int, int], None]


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
    """True when every batch has class-index labels, False when none has a label."""
    if all(b.label is None for b in batches):
        return False
    for b in batches:
        if b.label is None or b.label.dim() != 1 or b.label.is_floating_point():
            shape = None if b.label is None else (tuple(b.label.shape), str(b.label.dtype))
            raise DataLoadError(
                f"The labels are not class indices (found {shape or 'a batch without a label'}). "
                "biasscope needs one integer class per example (one-hot and (N, 1) labels are "
                "converted); for unlabelled data pass --label-key none (label_key=None)."
            )
    return True


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


def _check_options(*, samples, scale, max_rows, divergence, permutation_repeats) -> None:
    problems = []
    if not isinstance(samples, int) or samples < 2:
        problems.append(f"samples must be an integer >= 2 (got {samples!r}; default 32)")
    if not isinstance(scale, (int, float)) or not scale > 0:
        problems.append(f"scale must be a number > 0 (got {scale!r}; default 1.0)")
    if not isinstance(max_rows, int) or max_rows < 1:
        problems.append(f"max_rows must be a positive integer (got {max_rows!r}; default 4096)")
    if divergence not in DIVERGENCES:
        problems.append(f"divergence must be one of {', '.join(DIVERGENCES)} (got {divergence!r})")
    if not isinstance(permutation_repeats, int) or permutation_repeats == 1 or permutation_repeats < 0:
        problems.append(
            f"permutation_repeats must be 0 (skip) or >= 2 for an interval (got {permutation_repeats!r})"
        )
    if problems:
        raise ConfigError("Invalid audit options: " + "; ".join(problems) + ".")


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
    _check_options(samples=samples, scale=scale, max_rows=max_rows, divergence=divergence,
                   permutation_repeats=permutation_repeats)
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
        if labelled and (permutation_repeats or shapley):
            shared = dict(seed=seed, device=dev, output=output, progress=report,
                          data=AuditSet(model, batches, modalities, dev, output))
            if permutation_repeats:
                permutation = permutation_scores(
                    model, batches, modalities, repeats=permutation_repeats, **shared
                )
            if shapley:
                shapley_values = modality_shapley(model, batches, modalities, **shared)

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
                **{k: mean_interval(v, method="bootstrap", seed=seed) for k, v in per.items()},
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
        ent, var = torch.cat(joint_ent).numpy(), torch.cat(joint_var).numpy()
        ent_sum, var_sum = torch.cat(cond_ent).numpy(), torch.cat(cond_var).numpy()
        interval = lambda v: mean_interval(v, method="bootstrap", seed=seed)  # noqa: E731
        joint = JointCheck(
            functional_entropy=interval(ent), variance=interval(var),
            sum_functional_entropy=interval(ent_sum), sum_variance=interval(var_sum),
            entropy_gap=interval(ent_sum - ent), variance_gap=interval(var_sum - var),
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
