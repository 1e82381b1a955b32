"""The audit: per-modality functional entropy, Fisher bound, variance and Poincare bound
over a dataset, with 95% intervals, shares, per-class means, the joint (tensorization)
check, the performance-grounded checks, the verdict, the agreement analysis and the
diagnostics.

The work is split in three: checks before any measuring (options, data, the output check),
the per-batch update (:class:`biasscope.auditing._state.EntropyState`) and the summary
(:func:`biasscope.auditing._summary.summarise`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, fields, replace
from typing import Any

import torch
from torch import Tensor, nn

from .. import __version__
from ._insight import check_sites, explain_step, probe_step
from ._shard import gather_check, gather_values, local_batches
from ._state import EntropyState, MeasuredValues
from ._summary import Evidence, summarise
from ..runtime._batch import Batch, OutputSpec, call_model, find_output, split_batch
from ..runtime._device import on_device, resolve_device, run_with_oom_retry
from ..runtime._distributed import (
    all_reduce_sum, is_distributed, join_group, is_writer, rank_device, shard, sync_point,
    world_size,
)
from ..measuring._perturbation import finish_std, representation_moments
from ..io.calling import default_modalities, describe_default
from .data_checks import data_checks
from .diagnostics import OutputCheck, output_problems, raise_output_problems
from ..errors import ConfigError, DataLoadError
from ..measuring.modality import Modality, validate_modalities
from ..runtime.options import AuditOptions, check_passes
from ..measuring.output_kinds import (
    DIVERGENCE_OF, SENSITIVITY_ONLY, detect_output_kind, label_kind, output_kind_diagnostic,
)
from ..measuring.perception import AuditSet, modality_shapley, permutation_scores
from ..results import AuditResult, Diagnostic
from ..measuring.shift import shift_accuracy, shift_batches
from .verdict import Thresholds

__all__ = ["audit", "collect_batches"]

Progress = Callable[[str, int, int, dict], None]


def collect_batches(
    data: Iterable[Any], *, label_key: str | None = "label", limit: int | None = None
) -> list[Batch]:
    """Materialise ``data`` (any iterable of dict or tuple batches) as :class:`Batch` es,
    keeping at most ``limit`` examples, each batch with its examples' global indices."""
    batches: list[Batch] = []
    seen = 0
    for raw in data:
        batch = split_batch(raw, label_key=label_key)
        if limit is not None and seen + batch.size > limit:
            batch = batch.select(torch.arange(limit - seen))
        batch = replace(batch, index=torch.arange(seen, seen + batch.size))
        if batch.size:
            batches.append(batch)
        seen += batch.size
        if limit is not None and seen >= limit:
            break
    if not batches:
        raise DataLoadError(
            "The dataset is empty: no batch holds an example. Check the data file or "
            "factory (and the `limit` parameter)."
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
                "converted); for unlabelled data pass label_key=None (on the command line "
                "`--label-key none`), and for a multi-label or regression output say so with "
                "`output_kind` (`--output-kind multilabel` or `regression`)."
            )
    return True


def _resolve_options(options: AuditOptions | None, overrides: dict[str, Any]) -> AuditOptions:
    if "profile" in overrides:  # the profile's options, then those set in options, then overrides
        profile, standard = overrides.pop("profile"), AuditOptions()
        given = {} if options is None else {k: v for k, v in options.as_dict().items() if getattr(standard, k) != v}
        options = AuditOptions.from_profile(profile, **given)
    options = options or AuditOptions()
    known = {f.name for f in fields(AuditOptions)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(
            f"Unknown audit option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.",
            parameter=unknown[0],
        )
    return options.replace(**overrides) if overrides else options


def _max_rows(options: AuditOptions, model: nn.Module, batch: Batch, dev: torch.device) -> int:
    if options.max_rows != "auto":
        return int(options.max_rows)
    from ..runtime._device import auto_max_rows

    per_example = sum(t[0].numel() for t in (*batch.args, *batch.kwargs.values()) if torch.is_tensor(t))
    return auto_max_rows(model, max(1, 64 * 4 * per_example), dev)


@torch.no_grad()
def _output_check(model, batches, output, dev, logits: list[Tensor]) -> OutputCheck:
    """What the output check needs from the clean ``logits`` of ``batches`` (kept from the
    noise-scale pass): every prediction, and the output's width at a second batch size."""
    first = batches[0].to(dev)
    other = first.select(torch.arange(first.size - 1)) if first.size >= 3 else first.repeat(2)
    other_width = call_model(model, other, output).shape[1]
    labels = [int(x) for b in batches for x in b.label.tolist()] if batches[0].label is not None else None
    pred = torch.cat([x.argmax(dim=1).cpu() for x in logits]).numpy()
    return OutputCheck(width=logits[0].shape[1], other_width=other_width, other_size=other.size,
                       size=first.size, predictions=pred.tolist(), labels=labels)


def _output_diagnostics(check: OutputCheck, enforce: bool) -> list[Diagnostic]:
    if enforce:
        raise_output_problems(check)
        return []
    problems = output_problems(check)
    if not problems:
        return []
    return [Diagnostic(
        "output_not_logits", "error",
        "The model's output does not look like the logits of the label classes: "
        + "; ".join(problems) + ". Every measure may be meaningless.",
        "Choose the logits with the `output_key` or `output_index` parameter.",
    )]


def _reliance(model, batches, modalities, options, dev, output, report) -> tuple[dict, list]:
    """Permutation scores and Shapley values (labelled data only)."""
    permutation, shapley = {}, []
    if not (options.permutation_repeats or options.shapley):
        return permutation, shapley
    forward = lambda stage, done, total, info=None: report(stage, done, total, info or {})  # noqa: E731
    shared = dict(seed=options.seed, device=dev, output=output, progress=forward,
                  data=AuditSet(model, batches, modalities, dev, output))
    if options.permutation_repeats:
        permutation = permutation_scores(model, batches, modalities, repeats=options.permutation_repeats, **shared)
    if options.shapley:
        shapley = modality_shapley(model, batches, modalities, **shared)
    return permutation, shapley


def _candidates(model, batch, modalities, output, label_key):
    """For a modality whose every measure is 0: the sites that reach the logits and carry it."""
    by_name = {m.name: m for m in modalities}

    def find(name: str) -> list[str]:
        try:
            from ..io.layers import reachable_layers

            return [s for s in reachable_layers(model, batch, label_key=label_key, output=output,
                                                 carrying=by_name[name]) if s != by_name[name].site]
        except Exception:  # the hint is optional: any failure leaves the generic advice
            return []

    return find


def audit(
    model: nn.Module,
    data: Iterable[Any],
    modalities: Sequence[Modality] | None = None,
    *,
    options: AuditOptions | None = None,
    output: OutputSpec | None = None,
    thresholds: Thresholds | None = None,
    progress: Progress | None = None,
    tokenizer: Any | None = None, shift_data: Iterable[Any] | None = None,
    **overrides: Any,
) -> AuditResult:
    """Audit how much ``model`` depends on each modality.

    Args:
        model: any ``nn.Module`` classifier; it is returned to its device and mode after.
        data: an iterable of batches: dicts (``model(**batch)``, label under ``label_key``)
            or tuples (``model(*batch[:-1])``, label last). A DataLoader works.
        modalities: the :class:`Modality` specs (1..M); None: the inputs the model's forward
            takes by name (dict batches) or position (tuple batches), see
            :func:`biasscope.io.calling.default_modalities`, with an info diagnostic saying so.
        options: an :class:`~biasscope.runtime.options.AuditOptions` (defaults and meaning of every
            option); ``overrides`` are its fields (``samples=8``) or ``profile="quick"``.
        output: which entry of the model's output holds the logits.
        thresholds: the verdict thresholds (:class:`~biasscope.auditing.verdict.Thresholds`).
        progress: ``progress(stage, done, total, info)`` for a progress display.
        tokenizer: decodes token ids in the attributions (``convert_ids_to_tokens`` or
            ``decode``); without it tokens are shown as ids.
        shift_data: labelled shifted data: the result's ``shift_accuracy`` (:mod:`biasscope.measuring.shift`).
    Raises:
        ModelOutputError: the output cannot be the logits of the label classes (its width
            changes with the batch size, is below the label range, or its accuracy is below
            chance by a margin) while ``check_output`` is on.
    """
    options = _resolve_options(options, overrides)
    output = output or OutputSpec()
    thresholds = thresholds or Thresholds()
    join_group(device=options.device)  # under torchrun: this process measures its share
    report = progress if progress is not None and is_writer() else (lambda stage, done, total, info: None)
    dev = rank_device(options.device) if is_distributed() else resolve_device(options.device)
    with sync_point("loading the data"):
        batches, modalities, label_kind_found, checked = _load(model, data, modalities, options)
        labelled = _usable_labels(batches)
        local = local_batches(batches, shard(sum(b.size for b in batches)))

    with on_device(model, dev):
        report("scale", 0, 1, {})  # also checks the sites (a layer that never runs, or twice)
        with sync_point("the noise scale"):
            output, divergence, kind_notes = _resolve_output(model, batches[0].to(dev), options, output, label_kind_found)
            logits: list[Tensor] = []
            moments = representation_moments(model, (b.to(dev) for b in local), modalities, output,
                                             on_logits=logits.append)
        sigmas = finish_std(moments, modalities, reduce=all_reduce_sum if is_distributed() else None)
        report("scale", 1, 1, {})
        checked += check_sites(sigmas, modalities)
        with sync_point("the clean predictions"):
            check = _output_check(model, local, output, dev, logits)
        early = [*kind_notes, *_output_diagnostics(gather_check(check), options.check_output)]
        values, notes, rows = _entropy(model, local, modalities, sigmas, options, output, dev, report,
                                       divergence=divergence)
        permutation, shapley = _reliance(model, batches, modalities, options, dev, output, report) if labelled else ({}, [])
        if any(d.code == "gradients_blocked" for d in notes):  # attributions need gradients too
            options = options.replace(explain=0)
        insight = dict(options=options, device=dev, output=output, report=report)
        probes = probe_step(model, batches, modalities, permutation=permutation, labelled=labelled, **insight)
        values = gather_values(values)
        attributions = explain_step(model, batches, modalities, {k: v["functional_entropy"] for k, v in values.per_modality.items()},
                                    tokenizer=tokenizer, **insight)
        labels = torch.cat([b.label for b in batches]).numpy() if labelled else None
        evidence = Evidence(
            labels=labels, permutation=permutation, shapley=shapley,
            settings={**_settings(options, dev, thresholds, modalities, labelled), "max_rows_used": rows,
                      "output_kind": output.kind, "divergence": divergence},
            provenance={"versions": {"biasscope": __version__, "torch": torch.__version__}},
            thresholds=thresholds, seed=options.seed, early_diagnostics=[*checked, *early, *notes],
            probes=probes, attributions=attributions,
        )
        candidates = _candidates(model, batches[0].to(dev), modalities, output, options.label_key)
        result = summarise(modalities, values, evidence, candidates=candidates)
        return _with_shift_accuracy(result, model, shift_data, options.label_key, output, dev)


def _with_shift_accuracy(result: AuditResult, model: nn.Module, shift_data: Iterable[Any] | None,
                         label_key: str | None, output: OutputSpec, dev: torch.device) -> AuditResult:
    """``result`` with the accuracy on the shifted data (unchanged without it)."""
    if shift_data is None:
        return result
    shifted = shift_batches(shift_data, label_key=label_key)
    return replace(result, shift_accuracy=shift_accuracy(model, shifted, output=output, device=dev))


def _without_unusable_labels(batches: list[Batch], requested: str) -> tuple[list[Batch], tuple[str, int] | None]:
    """The batches without their labels when these are multi-hot or real-valued (or the
    requested output kind says so): the reliance checks need one class per example. Also
    the labels' kind (:func:`biasscope.measuring.output_kinds.label_kind`) and width, if any."""
    found = label_kind([b.label for b in batches])
    if requested in SENSITIVITY_ONLY or (requested == "auto" and found is not None):
        label = batches[0].label
        width = 1 if label is None or label.dim() < 2 else int(label.shape[1])
        return [replace(b, label=None) for b in batches], None if found is None else (found, width)
    return batches, None


def _resolve_output(model, first: Batch, options: AuditOptions, output: OutputSpec,
                    found: tuple[str, int] | None) -> tuple[OutputSpec, str, list[Diagnostic]]:
    """The output spec with its kind (given, or detected on the first batch and the labels'
    kind ``found``), the divergence it calls for, and what the reader is told about it
    (:mod:`biasscope.measuring.output_kinds`)."""
    kind, detected = options.output_kind, options.output_kind == "auto"
    if detected:
        with torch.no_grad():
            raw = find_output(model, first, output)
        width = 1 if raw.dim() < 2 else int(raw[0].numel())
        if found is not None and found[1] != width:
            raise DataLoadError(
                f"The labels are neither class indices nor one target per output column ({found[0]} "
                f"labels of width {found[1]}, an output of width {width}). biasscope needs one integer "
                "class per example; for a multi-label or regression output, say so with `output_kind` "
                "(`--output-kind multilabel` or `regression`); for unlabelled data pass label_key=None "
                "(`--label-key none`)."
            )
        kind = found[0] if found is not None else detect_output_kind([raw], [])
    if kind in SENSITIVITY_ONLY and options.divergence == "official":
        raise ConfigError(
            f"The official divergence (softmax BCE) is not defined for a {kind} output; use "
            "divergence 'kl' (--divergence kl), which becomes the right one for it "
            f"({DIVERGENCE_OF[kind]}).", parameter="divergence",
        )
    divergence = DIVERGENCE_OF.get(kind, options.divergence)
    return replace(output, kind=kind), divergence, output_kind_diagnostic(kind, detected=detected)


def _load(model, data, given, options: AuditOptions):
    """The batches (without labels the reliance checks cannot use), the modalities, the labels'
    kind and the data checks' diagnostics."""
    batches = collect_batches(data, label_key=options.label_key, limit=options.limit)
    modalities, taken = _modalities(model, batches[0], given)
    check_passes(options.samples, len(modalities), tensorization=options.tensorization)
    validate_modalities(batches[0], modalities)
    batches, label_kind_found = _without_unusable_labels(batches, options.output_kind)
    return batches, modalities, label_kind_found, taken + data_checks(batches, modalities)


def _modalities(model, batch: Batch, given: Sequence[Modality] | None) -> tuple[list[Modality], list[Diagnostic]]:
    """The modalities given, or those the data's keys name (with a note saying so)."""
    if given is not None:
        return list(given), []
    found = default_modalities(model, batch)
    note = Diagnostic("modalities_from_data", "info", describe_default(found) + ".",
                      fix="Name them to choose: --modality NAME=input:KEY or Modality(name, input=key).")
    return found, [note]


def _entropy(model, local, modalities, sigmas, options, output, dev, report, *,
             divergence: str) -> tuple[MeasuredValues, list, int]:
    """The per-batch update over this process's examples (halving ``max_rows`` on out of
    memory, which does not change the numbers: the noise belongs to the example)."""
    rows = [_max_rows(options, model, local[0], dev)]
    notes: list[Diagnostic] = []

    def halved(old: int, new: int) -> None:
        rows[0] = new
        notes.append(Diagnostic("max_rows_halved", "info", f"Out of memory at max_rows {old}; continued at {new}.",
                                f"Pass max_rows={new} (or lower) to skip the retries."))
        report("memory", new, old, {"max_rows": new})

    state = EntropyState(
        model, modalities, sigmas, samples=options.samples, scale=options.scale,
        divergence=divergence, output=output, max_rows=rows[0],
        seed=options.seed, tensorization=options.tensorization, precision=options.precision,
    )
    with sync_point("the entropy measures"):
        for i, batch in enumerate(local):
            moved = batch.to(dev)
            run_with_oom_retry(lambda r: state.update(moved, max_rows=r), rows[0], halved)
            report("entropy", i + 1, len(local), {})
    if state.downstream.reason:
        notes.append(Diagnostic(
            "full_passes", "info",
            f"Every perturbed pass ran the whole model: {state.downstream.reason}.",
            "Nothing to change for the numbers; the audit is slower than it could be. Put the "
            "randomness or batch statistics out of the forward pass in eval mode to speed it up.",
        ))
    return state.values(), [*notes, *state.diagnostics()], rows[0]


def _settings(options: AuditOptions, dev, thresholds: Thresholds, modalities, labelled: bool) -> dict[str, Any]:
    settings = options.as_dict()
    settings.update(
        device=str(dev),
        processes=world_size(),
        permutation_repeats=options.permutation_repeats if labelled else 0,
        thresholds=asdict(thresholds),
        modalities={m.name: m.site for m in modalities},
    )
    return settings
