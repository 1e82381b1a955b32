"""The options of each verb: one frozen dataclass per verb, the single source of every
default (the library signatures, the CLI help, the config schema and the README read them
from here) and of their validation. No torch import: the CLI reads defaults from this module
without paying for torch.

Errors name the *parameter* (``samples``), never a command-line flag; the CLI maps a
parameter to its flag (``--samples``) with :func:`flag_name`.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ..errors import ConfigError

__all__ = ["AUDIT_PROFILES", "AuditOptions", "FixOptions", "check_passes", "flag_name", "options_from_mapping",
           "profile_options"]

#: the largest number of model passes per example an audit may plan (samples x modalities),
#: the "stated budget" against which absurd sample counts are refused up front
MAX_PASSES_PER_EXAMPLE = 100_000
#: the most examples an audit attributes (each costs about ``steps`` backward passes)
MAX_EXPLAIN = 50
#: upper bounds of the other counts: far above any useful value, below a run that would
#: exhaust memory or never end (stated in the message when exceeded)
MAX_REPEATS = 1_000
MAX_COUNT = 1_000_000
MAX_STEPS = 1_000_000_000

DIVERGENCES = ("kl", "official")
PRECISIONS = ("fp32", "bf16", "fp16")
#: the captum methods an audit's attributions use, by name (``auto``: integrated gradients,
#: feature ablation where the site holds integers)
#: what a model's output holds (biasscope.measuring.output_kinds)
OUTPUT_KINDS = ("auto", "logits", "probs", "log_probs", "binary", "multilabel", "regression")
ATTRIBUTIONS = ("auto", "integrated_gradients", "saliency", "input_x_gradient", "feature_ablation")
OPTIMIZERS = ("adam", "adamw", "sgd")
MONITORS = ("val_loss", "val_accuracy")
ESTIMATORS = ("fisher", "poincare")
#: how fix picks the modality that ModDrop permutes (besides a modality name)
AUGMENT_RULES = ("reliance", "sensitivity", "all")


def flag_name(parameter: str) -> str:
    """The command-line flag of a parameter: ``max_rows`` -> ``--max-rows``.

    >>> flag_name("max_rows"), flag_name("lambda_")
    ('--max-rows', '--lambda')
    """
    return "--" + parameter.rstrip("_").replace("_", "-")


def _fail(name: str, value: Any, valid: str) -> ConfigError:
    return ConfigError(f"{name} must be {valid} (got {value!r}).", parameter=name)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(name: str, value: Any, *, low: int, high: int = MAX_STEPS, optional: bool = False) -> None:
    """``value`` an integer in [low, high] (None allowed when ``optional``)."""
    if optional and value is None:
        return
    if not _is_int(value) or value < low or value > high:
        bound = f"an integer in [{low}, {high}]"
        raise _fail(name, value, bound + (" or None" if optional else ""))


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    strict_low: bool = False,
    optional: bool = False,
) -> None:
    """``value`` a finite number within the bounds (None allowed when ``optional``)."""
    if optional and value is None:
        return
    ok = _is_number(value) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if strict_low else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        parts = ["a finite number"]
        if low is not None:
            parts.append(f"{'>' if strict_low else '>='} {low:g}")
        if high is not None:
            parts.append(f"<= {high:g}")
        raise _fail(name, value, " ".join(parts) + (" or None" if optional else ""))


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_passes(samples: int, modalities: int, *, tensorization: bool = False, parameter: str = "samples") -> None:
    """The model passes an audit plans per example, samples x modalities (x (M+1)/M more
    with the tensorization check), within :data:`MAX_PASSES_PER_EXAMPLE`."""
    passes = samples * (2 * modalities + 1 if tensorization else modalities)
    if passes > MAX_PASSES_PER_EXAMPLE:
        most = MAX_PASSES_PER_EXAMPLE // (2 * modalities + 1 if tensorization else max(modalities, 1))
        raise ConfigError(
            f"{parameter} = {samples} with {modalities} modalities plans {passes:,} model passes per "
            f"example, over the budget of {MAX_PASSES_PER_EXAMPLE:,}: give {parameter} <= {most:,}.",
            parameter=parameter,
        )


def check_device(name: str, value: Any) -> None:
    """``value`` a device string torch can run on (``auto``, ``cpu``, ``mps``, ``cuda``,
    ``cuda:N``) or a ``torch.device`` object."""
    if isinstance(value, str) and _DEVICE.fullmatch(value):
        return
    if type(value).__name__ == "device" and type(value).__module__ == "torch":
        return
    raise _fail(name, value, "'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:N' or 'mps'")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise _fail(name, value, "one of " + ", ".join(choices))


@dataclass(frozen=True)
class AuditOptions:
    """Every option of :func:`biasscope.audit` with its default.

    >>> options = AuditOptions(samples=8)
    >>> options.samples, options.replace(seed=1).seed
    (8, 1)
    >>> AuditOptions(samples=1)
    Traceback (most recent call last):
    ...
    biasscope.errors.ConfigError: samples must be an integer in [2, 100000] (got 1).

    Attributes:
        samples: K, Gaussian samples per example and modality.
        scale: s; the noise is N(0, diag(s^2 sigma^2)), sigma the per-feature std over the data.
        seed: seed of every random draw.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        divergence: ``"kl"`` (KL(clean || perturbed)) or ``"official"`` (the paper code's BCE).
        label_key: key of the label in dict batches; None for unlabelled data.
        limit: use at most this many examples.
        max_rows: the largest expanded batch (examples x samples) run at once, or ``"auto"``.
        permutation_repeats: R shuffles per modality for the permutation score (0 skips; at least
            2; below the default the verdict often reports ``reliance_undecided``).
        shapley: also compute exact modality Shapley values (needs labels).
        tensorization: also run the joint-perturbation (tensorization) check (off by default:
            it adds (M+1)K gradient-free passes per example; its cost: docs/benchmarks.md).
        check_output: refuse outputs that cannot be logits of the label classes.
        precision: forward-pass precision on CUDA (divergences stay in float64).
        probe: probe each modality's representation for the label (information available vs
            used; needs labels, skipped without them).
        explain: attribute this many examples inside the modality each depends on most
            (highest and lowest functional entropy, alternately; 0 skips).
        output_kind: what the output holds (:mod:`biasscope.measuring.output_kinds`): ``"auto"``
            (detected), ``"logits"``, ``"probs"``, ``"log_probs"``, ``"binary"``,
            ``"multilabel"`` or ``"regression"``.
        attribution: the captum method: ``"auto"`` (integrated gradients; feature ablation
            at integer sites), ``"integrated_gradients"``, ``"saliency"``,
            ``"input_x_gradient"`` or ``"feature_ablation"``.
    """

    samples: int = 32
    scale: float = 1.0
    seed: int = 0
    device: str = "auto"
    divergence: str = "kl"
    label_key: str | None = "label"
    limit: int | None = None
    max_rows: int | str = 4096
    permutation_repeats: int = 10
    shapley: bool = True
    tensorization: bool = False
    check_output: bool = True
    precision: str = "fp32"
    probe: bool = True
    explain: int = 3
    output_kind: str = "auto"
    attribution: str = "auto"

    def __post_init__(self) -> None:
        check_int("samples", self.samples, low=2, high=MAX_PASSES_PER_EXAMPLE)
        check_number("scale", self.scale, low=0.0, strict_low=True)
        check_int("seed", self.seed, low=0, high=2**63 - 1)
        check_device("device", self.device)
        check_choice("divergence", self.divergence, DIVERGENCES)
        if self.label_key is not None and not isinstance(self.label_key, str):
            raise _fail("label_key", self.label_key, "a string or None")
        check_int("limit", self.limit, low=1, optional=True)
        if self.max_rows != "auto":
            check_int("max_rows", self.max_rows, low=1, high=MAX_COUNT * 10)
        repeats = self.permutation_repeats
        if not _is_int(repeats) or repeats < 0 or repeats == 1 or repeats > MAX_REPEATS:
            raise _fail("permutation_repeats", repeats, f"0 (skip) or an integer >= 2 and <= {MAX_REPEATS}")
        check_choice("precision", self.precision, PRECISIONS)
        if not isinstance(self.probe, bool):
            raise _fail("probe", self.probe, "True or False")
        check_int("explain", self.explain, low=0, high=MAX_EXPLAIN)
        check_choice("output_kind", self.output_kind, OUTPUT_KINDS)
        check_choice("attribution", self.attribution, ATTRIBUTIONS)

    @classmethod
    def from_profile(cls, profile: str, **changes: Any) -> AuditOptions:
        """The options of ``profile`` (``quick``, ``standard``, ``thorough``: see
        ``AUDIT_PROFILES``) with ``changes`` on top.

        >>> AuditOptions.from_profile("quick").samples, AuditOptions.from_profile("quick", seed=1).seed
        (8, 1)
        """
        return cls(**profile_options(profile, changes))

    def replace(self, **changes: Any) -> AuditOptions:
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


#: the audit's profiles: the options each sets (``standard`` is AuditOptions' defaults).
#: quick is for CI and monitoring (every pull request), thorough for a report to rely on.
AUDIT_PROFILES: dict[str, dict[str, Any]] = {
    "quick": dict(samples=8, permutation_repeats=5, shapley=False, probe=False, explain=0),
    "standard": {},
    "thorough": dict(samples=128, permutation_repeats=30, tensorization=True),
}


def profile_options(profile: Any, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` on top of the profile's options (the values given win).

    >>> profile_options("quick", {"samples": 16})["samples"], profile_options("quick", {})["samples"]
    (16, 8)
    """
    check_choice("profile", profile, tuple(AUDIT_PROFILES))
    return {**AUDIT_PROFILES[profile], **values}


def options_from_mapping(cls: type, values: dict[str, Any]) -> Any:
    """Build ``cls`` from a mapping, refusing unknown keys with the list of known ones. For
    AuditOptions, a ``profile`` key (quick, standard, thorough) sets the options not given."""
    if cls is AuditOptions and "profile" in values:
        values = profile_options(values["profile"], {k: v for k, v in values.items() if k != "profile"})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"Unknown {cls.__name__} option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}."
        )
    return cls(**values)


@dataclass(frozen=True)
class FixOptions:
    """Every option of :func:`biasscope.fix` with its default (see its docstring for the
    meaning of each; the regularizer's own options mirror :class:`FunctionalEntropyRegularizer`).

    The regularizer's cost and gradient (issue 12): ``detach_clean`` stops the term's gradient
    through the clean prediction (off: the paper's objective); ``term_examples`` scores each
    modality on at most that many examples of the batch (None: all), ``term_every`` computes
    the term on every n-th step only (weighted by n) -- the regularizer takes every FixOptions
    field of the same name.

    The target and the guard (issue-level summary; details in :func:`biasscope.fix`):
        augment: the modality ModDrop permutes: ``"reliance"`` (the one whose permutation
            raises the loss most on a held batch, chosen once), ``"sensitivity"`` (the largest
            score I_m at each step) or a modality name.
        reliance_examples, reliance_repeats: the held batch (examples of the validation data,
            else of the first training batches) and the permutations averaged to measure reliance.
        guard: on the validation data, stop when the in-distribution accuracy falls by more
            than ``guard_tolerance`` while the decorrelated proxy (accuracy with the target
            permuted across examples) does not rise by more than ``guard_tolerance``.
        max_drop_accuracy: a hard bound on the in-distribution accuracy drop (None: none).
        from_scratch: re-initialise every layer (``reset_parameters``) after the target and
            the guard's start are measured on the input, then train: for users who can retrain.
            The proxy rule of ``guard`` is off then (training starts at chance); shifted data
            and ``max_drop_accuracy`` still guard it.
    """

    epochs: int = 20
    max_steps: int | None = None
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    lambda_: float | str = 0.0
    target_ratio: float = 1.0
    calibration: str = "gradient"
    calibration_batches: int = 4
    estimator: str = "fisher"
    form: str = "log_share"
    samples: int = 4
    scale: float = 1.0
    divergence: str = "kl"
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    max_grad_norm: float | None = None
    patience: int | None = None
    monitor: str = "val_loss"
    eval_every: int | None = None
    restore_best: bool = False
    checkpoint_every: int = 50
    shuffle: bool = True
    max_rows: int = 4096
    modality_dropout: float = 0.5
    modality_noise: float = 0.0
    augment: str = "reliance"
    reliance_examples: int = 512
    reliance_repeats: int = 3
    guard: bool = True
    guard_tolerance: float = 0.03
    max_drop_accuracy: float | None = None
    lambda_warmup: int = 0
    label_key: str | None = "label"
    detach_clean: bool = False
    term_examples: int | None = 16
    term_every: int = 2
    from_scratch: bool = False

    def __post_init__(self) -> None:
        check_int("epochs", self.epochs, low=1, high=MAX_COUNT)
        check_int("max_steps", self.max_steps, low=1, optional=True)
        check_number("lr", self.lr, low=0.0)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_number("weight_decay", self.weight_decay, low=0.0)
        if self.lambda_ != "auto":
            check_number("lambda_", self.lambda_, low=0.0)
        check_number("target_ratio", self.target_ratio, low=0.0, strict_low=True)
        check_choice("calibration", self.calibration, ("gradient", "value"))
        check_int("calibration_batches", self.calibration_batches, low=1, high=MAX_REPEATS)
        check_choice("estimator", self.estimator, ESTIMATORS)
        check_int("samples", self.samples, low=2, high=MAX_PASSES_PER_EXAMPLE)
        check_number("scale", self.scale, low=0.0, strict_low=True)
        check_choice("divergence", self.divergence, DIVERGENCES)
        check_int("seed", self.seed, low=0, high=2**63 - 1)
        check_device("device", self.device)
        check_number("max_grad_norm", self.max_grad_norm, low=0.0, strict_low=True, optional=True)
        check_int("patience", self.patience, low=1, high=MAX_COUNT, optional=True)
        check_choice("monitor", self.monitor, MONITORS)
        check_int("eval_every", self.eval_every, low=1, optional=True)
        check_int("checkpoint_every", self.checkpoint_every, low=1)
        check_int("max_rows", self.max_rows, low=1, high=MAX_COUNT * 10)
        check_number("modality_dropout", self.modality_dropout, low=0.0, high=1.0)
        check_number("modality_noise", self.modality_noise, low=0.0)
        if not isinstance(self.augment, str) or not self.augment:
            raise _fail("augment", self.augment, f"{' or '.join(AUGMENT_RULES)} or a modality name")
        check_int("reliance_examples", self.reliance_examples, low=2, high=MAX_COUNT)
        check_int("reliance_repeats", self.reliance_repeats, low=1, high=1000)
        check_number("guard_tolerance", self.guard_tolerance, low=0.0, high=1.0)
        check_number("max_drop_accuracy", self.max_drop_accuracy, low=0.0, high=1.0, optional=True)
        check_int("lambda_warmup", self.lambda_warmup, low=0)
        if not isinstance(self.detach_clean, bool):
            raise _fail("detach_clean", self.detach_clean, "True or False")
        check_int("term_examples", self.term_examples, low=2, high=MAX_COUNT, optional=True)
        check_int("term_every", self.term_every, low=1)
        if not isinstance(self.from_scratch, bool):
            raise _fail("from_scratch", self.from_scratch, "True or False")
        if self.label_key is not None and not isinstance(self.label_key, str):
            raise _fail("label_key", self.label_key, "a string or None")

    def replace(self, **changes: Any) -> FixOptions:
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
