"""The audit's steps of issue #14, called from :func:`biasscope.audit`: the data checks
before any measuring, the probe (label information available vs used) and the
attributions inside a modality (captum). The logic lives in :mod:`biasscope.auditing.data_checks`,
:mod:`biasscope.measuring.probe` and :mod:`biasscope.measuring.explain`; this module decides when each runs."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..runtime._batch import Batch, OutputSpec
from .data_checks import std_checks
from ..measuring.explain import choose_examples, explain_examples
from ..results import Attribution, ProbeResult
from ..measuring.modality import Modality
from ..runtime.options import AuditOptions
from ..measuring.probe import probe_modalities
from ..results import Diagnostic, PermutationScore

__all__ = ["check_sites", "probe_step", "explain_step"]

Report = Callable[[str, int, int, dict], None]


def check_sites(sigmas: Mapping[str, Tensor], modalities: Sequence[Modality]) -> list[Diagnostic]:
    """The constant-feature checks of layer sites (input sites were checked on the batches)."""
    return std_checks({m.name: sigmas[m.name] for m in modalities if m.layer is not None})


def probe_step(
    model: nn.Module,
    batches: Sequence[Batch],
    modalities: Sequence[Modality],
    *,
    options: AuditOptions,
    device: torch.device,
    output: OutputSpec,
    permutation: Mapping[str, PermutationScore],
    labelled: bool,
    report: Report,
) -> list[ProbeResult]:
    """The probe per modality when labels exist and ``options.probe`` is on (else ``[]``);
    the permuted accuracy comes from the audit's permutation scores when there are some."""
    if not (labelled and options.probe):
        return []
    report("probe", 0, 1, {})
    probes = probe_modalities(model, batches, modalities, output=output, device=device,
                              seed=options.seed, permutation=permutation or None)
    report("probe", 1, 1, {})
    return probes


def explain_step(
    model: nn.Module,
    batches: Sequence[Batch],
    modalities: Sequence[Modality],
    functional_entropy: Mapping[str, np.ndarray],
    *,
    options: AuditOptions,
    device: torch.device,
    output: OutputSpec,
    tokenizer: Any | None,
    report: Report,
) -> list[Attribution]:
    """Attributions of ``options.explain`` examples (alternately the highest and lowest
    functional entropy), each over the modality it depends on most, at the audit's site."""
    picks = choose_examples({k: list(v) for k, v in functional_entropy.items()}, options.explain)
    by_name = {m.name: m for m in modalities}
    out: list[Attribution] = []
    for j, (index, name, why) in enumerate(picks):
        out += explain_examples(model, batches, by_name[name], [index], output=output, device=device,
                                method=options.attribution, tokenizer=tokenizer, selected=[why])
        report("explain", j + 1, len(picks), {})
    return out
