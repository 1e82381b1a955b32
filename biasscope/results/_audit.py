"""Result types of an audit and their JSON form (with a schema version)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..runtime._files import read_json_object, write_atomic
from ..errors import DataLoadError
from ._migrations import SCHEMA_VERSION, migrate_audit

from ._estimate import Estimate
from ._insight import Attribution, ProbeResult, attribution_from_dict, probe_from_dict

__all__ = [
    "SCHEMA_VERSION",
    "MEASURES",
    "Estimate",
    "PermutationScore",
    "ShapleyValues",
    "ModalityResult",
    "JointCheck",
    "AuditResult",
    "Diagnostic",
    "SEVERITIES",
    "VERDICTS",
    "NOT_USED",
    "Ranking",
    "ShareComparison",
    "Agreement",
]

MEASURES = ("functional_entropy", "fisher_bound", "variance", "poincare_bound")
VERDICTS = ("ignored", "unused", "weak", "ok", "dominant")
#: the verdicts of a modality the model does not use for its predictions (``AuditResult.ignored``)
NOT_USED = ("ignored", "unused")


SEVERITIES = ("info", "warning", "error")


@dataclass(frozen=True)
class Diagnostic:
    """Something the reader of an audit must know before trusting it (a data check, a site
    that never reaches the output, reliance that cannot be measured...).

    ``code`` is a stable snake_case identifier (e.g. ``reliance_unmeasurable``), ``severity``
    one of :data:`SEVERITIES`, ``message`` one sentence of what was found, ``fix`` one line
    of what to do, ``modality`` the modality concerned (None for the whole audit).
    """

    code: str
    severity: str
    message: str
    fix: str = ""
    modality: str | None = None


@dataclass(frozen=True)
class PermutationScore:
    """Performance lost when a modality is permuted across the audit set (R repeats)."""

    accuracy_drop: Estimate
    relative_accuracy_drop: Estimate  # accuracy_drop / clean accuracy
    loss_increase: Estimate  # cross-entropy increase (nats)
    repeats: int
    scope: str = "global"  # or "within_batch": representation shapes varied between batches
    flip_rate: Estimate | None = None  # share of predictions that change (None: older files)
    confidence_change: Estimate | None = None  # mean |change| of the clean top class's probability


@dataclass(frozen=True)
class ShapleyValues:
    """Modality Shapley values of one performance metric (absent modalities permuted)."""

    metric: str  # "accuracy" or "log_likelihood"
    values: dict[str, float]
    full: float  # v(all modalities)
    empty: float  # v(no modality)
    interaction: float  # v(all) - v(none) - sum_m [v({m}) - v(none)]
    exact: bool


@dataclass
class ModalityResult:
    """Everything measured for one modality."""

    name: str
    site: str
    functional_entropy: Estimate
    fisher_bound: Estimate
    variance: Estimate
    poincare_bound: Estimate
    share: float  # of the summed mean functional entropy
    per_class: dict[str, list[float]]  # measure -> mean per class (order of AuditResult.classes)
    per_example: dict[str, list[float]]  # measure -> value per example
    permutation: PermutationScore | None = None
    verdict: str = "ok"
    reliance_share: float | None = None  # of the summed permutation loss increase
    accuracy_share: float | None = None  # of the summed permutation accuracy drop

    def measure(self, name: str) -> Estimate:
        return getattr(self, name)


@dataclass(frozen=True)
class JointCheck:
    """Joint perturbation of all modalities versus the tensorization sums
    (Ent(f) <= sum_m E[Ent_m(f)], Var(f) <= sum_m E[Var_m(f)] (Efron-Stein), where the m-th
    term perturbs modality m with the others' noise drawn and frozen). The gaps are the
    paired per-example differences sum - joint; the inequality holds unless a gap's whole
    interval lies below zero."""

    functional_entropy: Estimate
    variance: Estimate
    sum_functional_entropy: Estimate
    sum_variance: Estimate
    entropy_gap: Estimate
    variance_gap: Estimate

    @property
    def entropy_ratio(self) -> float:
        return _ratio(self.functional_entropy.mean, self.sum_functional_entropy.mean)

    @property
    def variance_ratio(self) -> float:
        return _ratio(self.variance.mean, self.sum_variance.mean)

    @property
    def holds(self) -> bool:
        return not (self.entropy_gap.ci_high < 0 or self.variance_gap.ci_high < 0)


@dataclass(frozen=True)
class Ranking:
    """The order of modalities under one measure, most important first; ties grouped."""

    measure: str
    values: dict[str, float]
    groups: tuple[tuple[str, ...], ...]

    @property
    def top(self) -> tuple[str, ...]:
        return self.groups[0] if self.groups else ()

    @property
    def order_text(self) -> str:
        return " > ".join(" = ".join(g) for g in self.groups)

    @property
    def key(self) -> tuple[frozenset[str], ...]:
        return tuple(frozenset(g) for g in self.groups)


@dataclass(frozen=True)
class ShareComparison:
    """One modality's share of the sensitivity (functional entropy) and of the reliance
    (permutation loss increase), and whether they disagree in size."""

    modality: str
    sensitivity: float
    reliance: float
    disagree: bool


@dataclass(frozen=True)
class Agreement:
    """Do the measures agree? The order under each measure, and the sizes of the
    sensitivity and reliance shares side by side (``shares`` empty without reliance)."""

    rankings: tuple[Ranking, ...]
    same_order: bool
    same_top: bool
    shares: tuple[ShareComparison, ...]
    text: str

    @property
    def sizes_agree(self) -> bool:
        return not any(s.disagree for s in self.shares)

    @property
    def agree(self) -> bool:
        return self.same_order and self.sizes_agree


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else (0.0 if a == 0 else math.inf)


@dataclass
class AuditResult:
    """The outcome of :func:`biasscope.audit`: per-modality measures, shares, verdicts."""

    modalities: list[ModalityResult]
    joint: JointCheck | None
    classes: list[int]
    class_source: str  # "label" or "prediction"
    n_examples: int
    accuracy: float | None
    settings: dict[str, Any]
    shapley: list[ShapleyValues] = field(default_factory=list)
    sentence: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    reliance_measurable: bool | None = None  # None: no labels or no permutation score
    chance_accuracy: float | None = None  # the majority-class rate of the labels
    agreement: Agreement | None = None
    probes: list[ProbeResult] = field(default_factory=list)  # label information per modality
    attributions: list[Attribution] = field(default_factory=list)  # inside a modality (captum)
    example_ids: list[int | str] = field(default_factory=list)  # of per_example's values (positions)
    shift_accuracy: float | None = None  # accuracy on the shifted data (audit's shift_data)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not self.example_ids:
            self.example_ids = list(range(self.n_examples))

    def __getitem__(self, name: str) -> ModalityResult:
        for m in self.modalities:
            if m.name == name:
                return m
        raise KeyError(f"no modality {name!r}; have {[m.name for m in self.modalities]}")

    names = property(lambda self: [m.name for m in self.modalities], doc="The modality names.")

    @property
    def ignored(self) -> list[str]:
        """The modalities the model does not use for its predictions: ``ignored`` (the output
        does not depend on it) or ``unused`` (noise there moves the output, shuffling it
        costs nothing); each modality's ``verdict`` says which."""
        return [m.name for m in self.modalities if m.verdict in NOT_USED]

    def failing(self, fail_on: str) -> list[str]:
        """The modalities that fail a ``fail_on`` gate: ``"ignored"`` (ignored or unused) or
        ``"weak"`` (also weak)."""
        levels = {"ignored": NOT_USED, "weak": (*NOT_USED, "weak")}
        if fail_on not in levels:
            from ..errors import ConfigError

            raise ConfigError(
                f"fail_on must be one of {', '.join(levels)} (got {fail_on!r}).", parameter="fail_on"
            )
        return [m.name for m in self.modalities if m.verdict in levels[fail_on]]

    @property
    def shares(self) -> dict[str, float]:
        return {m.name: m.share for m in self.modalities}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data = {"schema_version": self.schema_version, "ignored": self.ignored, **data}
        data["verdicts"] = {m.name: m.verdict for m in self.modalities}
        for m, d in zip(self.modalities, data["modalities"]):  # a bound without a gradient: null
            d["unavailable"] = [k for k in MEASURES if not math.isfinite(m.measure(k).mean)]
        if self.agreement is not None:
            data["agreement"]["sizes_agree"] = self.agreement.sizes_agree
            data["agreement"]["agree"] = self.agreement.agree
        for p, d in zip(self.probes, data["probes"]):  # derived, for JSON readers
            d.update(informative=p.informative, available=p.available, used=p.used)
        if self.joint is not None:
            data["joint"]["entropy_ratio"] = self.joint.entropy_ratio
            data["joint"]["variance_ratio"] = self.joint.variance_ratio
            data["joint"]["holds"] = self.joint.holds
        return _finite(data)

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON atomically (temp file, then rename)."""
        return write_atomic(Path(path), self.to_json())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditResult:
        """Read the JSON form of any readable schema version (older ones migrated first)."""

        data = migrate_audit(data)
        joint = data.get("joint")
        return cls(
            modalities=[_modality_from_dict(m) for m in data["modalities"]],
            joint=None if joint is None else JointCheck(**{k: Estimate.from_dict(joint[k]) for k in _JOINT_FIELDS}),
            classes=list(data["classes"]),
            class_source=data["class_source"],
            n_examples=int(data["n_examples"]),
            accuracy=data.get("accuracy"),
            settings=dict(data.get("settings", {})),
            shapley=[ShapleyValues(**s) for s in data.get("shapley", [])],
            sentence=data.get("sentence", ""),
            provenance=dict(data.get("provenance", {})),
            diagnostics=[Diagnostic(**d) for d in data.get("diagnostics", [])],
            reliance_measurable=data.get("reliance_measurable"),
            chance_accuracy=data.get("chance_accuracy"),
            agreement=_agreement_from_dict(data.get("agreement")),
            probes=[probe_from_dict(p) for p in data.get("probes") or []],
            attributions=[attribution_from_dict(a) for a in data.get("attributions") or []],
            example_ids=list(data["example_ids"]),
            shift_accuracy=data.get("shift_accuracy"),
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> AuditResult:
        """Read an audit.json (every malformed file is a DataLoadError naming it)."""
        data = read_json_object(path, what="audit JSON", file_name="audit.json", made_by="biasscope audit",
                                error=DataLoadError)
        try:
            return cls.from_dict(data)
        except DataLoadError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError, OverflowError) as exc:
            raise DataLoadError(f"{path} is not a biasscope audit result ({type(exc).__name__}: {str(exc)[:160]}); "
                                "give an audit.json written by `biasscope audit`.") from None


_JOINT_FIELDS = ("functional_entropy", "variance", "sum_functional_entropy", "sum_variance", "entropy_gap",
                 "variance_gap")


def _num(x: Any) -> float:
    return math.nan if x is None else float(x)


def _modality_from_dict(d: dict[str, Any]) -> ModalityResult:
    perm = d.get("permutation")
    return ModalityResult(
        name=d["name"],
        site=d["site"],
        share=_num(d["share"]),
        per_class={k: [_num(x) for x in v] for k, v in d.get("per_class", {}).items()},
        per_example={k: [_num(x) for x in v] for k, v in d.get("per_example", {}).items()},
        permutation=None
        if perm is None
        else PermutationScore(
            accuracy_drop=Estimate.from_dict(perm["accuracy_drop"]),
            relative_accuracy_drop=Estimate.from_dict(perm["relative_accuracy_drop"]),
            loss_increase=Estimate.from_dict(perm["loss_increase"]),
            repeats=int(perm["repeats"]),
            scope=perm.get("scope", "global"),
            **{k: Estimate.from_dict(perm[k]) for k in ("flip_rate", "confidence_change") if perm.get(k) is not None},
        ),
        verdict=d.get("verdict", "ok"),
        reliance_share=d.get("reliance_share"),
        accuracy_share=d.get("accuracy_share"),
        **{m: Estimate.from_dict(d[m]) for m in MEASURES},
    )


def _agreement_from_dict(d: dict[str, Any] | None) -> Agreement | None:
    if d is None:
        return None
    return Agreement(
        rankings=tuple(
            Ranking(r["measure"], {k: _num(v) for k, v in r["values"].items()},
                    tuple(tuple(g) for g in r["groups"]))
            for r in d["rankings"]
        ),
        same_order=bool(d["same_order"]),
        same_top=bool(d["same_top"]),
        shares=tuple(ShareComparison(**s) for s in d.get("shares", [])),
        text=d.get("text", ""),
    )


def _finite(x: Any) -> Any:
    """Replace nan/inf by None so the JSON is standard."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x
