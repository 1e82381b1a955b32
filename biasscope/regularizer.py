"""The training term of Gat et al. (NeurIPS 2020): maximise each modality's functional
entropy bound on the training batch, as an ``nn.Module`` that drops into any training loop.

The scores are computed by the audit's own code path (:func:`perturbation_samples` and
the estimators), so a regularizer score equals the audit's bound on the same batch, noise
and scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._batch import Batch, OutputSpec, call_model, split_batch
from ._device import model_device
from ._perturbation import perturbation_samples, representation_std
from .errors import ConfigError, ModalityError
from .estimators import DIVERGENCES, fisher_bound, poincare_bound
from .modality import Modality, validate_modalities

__all__ = [
    "FunctionalEntropyRegularizer",
    "regularizer_term",
    "calibrate_lambda",
    "Calibration",
    "FORMS",
    "ESTIMATORS",
    "DEFAULT_FORM",
    "SCORE_FLOOR",
]

ESTIMATORS = ("fisher", "poincare")
#: ``inverse``: the paper's ||(1/I_1, ..., 1/I_M)||_2.
#: ``log_inverse``: log ||(1/I_1, ..., 1/I_M)||_2 -- the same minimiser, scale-free.
#: ``mean_log``: -mean_m log I_m -- scale-free, every modality weighted equally.
#: ``log_share``: log ||(S/I_1, ..., S/I_M)||_2, S = sum_m I_m -- the shares' version.
FORMS = ("inverse", "log_inverse", "mean_log", "log_share")
#: The default form: on the colored digits it was the only form that raised the
#: decorrelated accuracy over lambda in [0.1, 1] without collapse (benchmarks/study_fix.py).
DEFAULT_FORM = "log_share"
#: Default floor eps of the scores inside the term: I_m + eps (see ``regularizer_term``).
SCORE_FLOOR = 1e-8


def regularizer_term(
    scores: Tensor, *, form: str = DEFAULT_FORM, eps: float = SCORE_FLOOR
) -> Tensor:
    """The term to *minimise* from the (M,) scores I_m >= 0.

    Scores enter with a smooth floor, I_m + eps, so a vanishing score (a modality the model
    ignores, I_m = 0) gives a finite term and finite gradients: at most 1/eps per modality
    for ``inverse``, log(1/eps) for the log forms.

    - ``inverse``: || (1/(I_1+eps), ..., 1/(I_M+eps)) ||_2 (the paper's term);
    - ``log_inverse``: log of that norm = 1/2 log sum_m (I_m+eps)^-2. Scaling all I_m by c
      only shifts it by -log c, so lambda does not depend on the scale of I; its gradient is
      a softmin-weighted sum of dI_m / I_m (weights (I_m+eps)^-2 / sum), i.e. it works on the
      weakest modality first;
    - ``mean_log``: -1/M sum_m log(I_m + eps): scale-free, all modalities weighted equally;
    - ``log_share``: log || (S/(I_1+eps), ..., S/(I_M+eps)) ||_2 with S = sum_m (I_m+eps): the
      ``log_inverse`` form of the shares I_m / S. Invariant to scaling all scores, so the
      model gains nothing by sharpening its logits; smallest (3/2 log M) at equal shares, it
      raises the weakest modality *and* lowers the dominant one.
    """
    if form not in FORMS:
        raise ConfigError(f"Unknown regularizer form {form!r}; choose one of {', '.join(FORMS)}.")
    floored = scores + eps
    if form == "inverse":
        return torch.linalg.vector_norm(1.0 / floored)
    if form == "log_inverse":
        # log ||1/I||_2 = 1/2 logsumexp(-2 log I), computed stably
        return 0.5 * torch.logsumexp(-2.0 * torch.log(floored), dim=0)
    if form == "log_share":
        return 0.5 * torch.logsumexp(-2.0 * torch.log(floored), dim=0) + torch.log(floored.sum())
    return -torch.log(floored).mean()


@contextmanager
def _eval_mode(model: nn.Module, enabled: bool):
    was = model.training
    if enabled:
        model.eval()
    try:
        yield
    finally:
        model.train(was)


class FunctionalEntropyRegularizer(nn.Module):
    """Per-modality functional-entropy scores I_m on a batch, and the term that maximises them.

    ``reg(batch) -> (term, scores)``: ``scores[name]`` is the mean over the batch of the Fisher
    bound 1/2 E[<Sigma grad f, grad f>/f] (or the Poincare bound E[<Sigma grad f, grad f>]) of
    f(z) = D(p(h), p(h_m + z)), z ~ N(0, diag(s^2 sigma_m^2)), one modality at a time, with
    ``samples`` draws per example -- the audit's estimator, on this batch. ``term`` is
    :func:`regularizer_term` of the scores; add ``lambda * term`` to the loss. Both are
    differentiable (the inner gradient is taken with ``create_graph=True``) when grad is on.

    Cost: per modality the whole model runs on K x batch rows (a clean and a noisy pass), and
    the backward goes through that inner gradient; a step costs about 1.2 K M plain steps
    (benchmarks/bench_regularizer.py).

    Example (two steps on the bundled colored digits; ``reg(batch)`` takes the batch as the
    model does, the label under ``label_key``):

        >>> import torch
        >>> import torch.nn.functional as F
        >>> from biasscope import FunctionalEntropyRegularizer, Modality, calibrate_lambda
        >>> from biasscope.datasets import TwoModalityNet, colored_digits
        >>> from biasscope.demo import batches_of
        >>> model = TwoModalityNet(seed=0)
        >>> batches = batches_of(colored_digits("train", n=64), 32)
        >>> reg = FunctionalEntropyRegularizer(
        ...     model, [Modality("image", input="image"), Modality("color", input="color")], samples=2)
        >>> lam = calibrate_lambda(reg, batches[:1]).lambda_value
        >>> optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        >>> for batch in batches:
        ...     logits = model(batch["image"], batch["color"])
        ...     term, scores = reg(batch)
        ...     loss = F.cross_entropy(logits, batch["label"]) + lam * term
        ...     optimizer.zero_grad()
        ...     loss.backward()
        ...     optimizer.step()
        >>> sorted(scores), bool(lam > 0)
        (['color', 'image'], True)

    Args:
        model: the classifier being trained (held by reference, not registered as a child,
            so ``reg.parameters()`` and ``reg.state_dict()`` are empty).
        modalities: the :class:`Modality` specs, any M >= 1.
        estimator: ``"fisher"`` (log-Sobolev bound of the entropy) or ``"poincare"`` (bound
            of the variance).
        form: ``"log_share"`` (default), ``"log_inverse"``, ``"mean_log"`` or the paper's
            ``"inverse"`` (see :func:`regularizer_term`).
        samples: K, noise draws per example and modality.
        scale: s, the noise scale relative to sigma.
        divergence: ``"kl"`` or the official code's ``"official"`` BCE.
        sigmas: fixed per-feature noise scales by modality name; by default the per-feature
            std of the representation over each batch, detached (the official code's choice).
        seed: seeds the noise generator (created on the batch's device at first use).
        eps: the score floor: scores enter the term as I_m + eps (default 1e-8), so a
            modality the model ignores (I_m = 0 exactly) gives a finite term and finite, nan-free
            gradients; the returned ``scores`` are the raw I_m (see :func:`regularizer_term`).
        max_rows: rows per chunk of the expanded K x batch pass; with ``create_graph`` every
            chunk's graph is kept for the backward, so this does not cap training memory.
        eval_mode: run the perturbation passes with the model in eval mode (dropout off,
            batch-norm on running statistics) so that f is exactly the effect of the noise;
            the model's mode is restored after.
    """

    def __init__(
        self,
        model: nn.Module,
        modalities: Sequence[Modality],
        *,
        estimator: str = "fisher",
        form: str = DEFAULT_FORM,
        samples: int = 8,
        scale: float = 1.0,
        divergence: str = "kl",
        output: OutputSpec | None = None,
        label_key: str | None = "label",
        sigmas: Mapping[str, Tensor] | None = None,
        seed: int = 0,
        max_rows: int = 4096,
        eps: float = SCORE_FLOOR,
        eval_mode: bool = True,
    ) -> None:
        super().__init__()
        if estimator not in ESTIMATORS:
            raise ConfigError(
                f"Unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}."
            )
        if form not in FORMS:
            raise ConfigError(
                f"Unknown regularizer form {form!r}; choose one of {', '.join(FORMS)}."
            )
        if divergence not in DIVERGENCES:
            raise ConfigError(
                f"Unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}."
            )
        if samples < 2:
            raise ConfigError(f"samples must be at least 2 (got {samples}).")
        if not scale > 0 or not eps > 0:
            raise ConfigError(f"scale and eps must be positive (got scale={scale}, eps={eps}).")
        modalities = list(modalities)
        if not modalities:
            raise ModalityError("The regularizer needs at least one modality.")
        self._model = [model]  # a list keeps it out of the module tree
        self.modalities = modalities
        self.estimator, self.form = estimator, form
        self.samples, self.scale, self.divergence = int(samples), float(scale), divergence
        self.output = output or OutputSpec()
        self.label_key = label_key
        self.seed, self.max_rows, self.eps = int(seed), int(max_rows), float(eps)
        self.eval_mode = eval_mode
        self.sigmas: dict[str, Tensor] | None = None
        if sigmas is not None:
            missing = [m.name for m in modalities if m.name not in sigmas]
            if missing:
                raise ModalityError(f"sigmas has no entry for modality {', '.join(missing)}.")
            # moved to the noise's device where used (draw_noise, perturbation_samples)
            self.sigmas = {
                m.name: torch.as_tensor(sigmas[m.name]).detach().float() for m in modalities
            }
        self._generator: torch.Generator | None = None
        self._validated = False

    @property
    def model(self) -> nn.Module:
        return self._model[0]

    # -- the noise generator --------------------------------------------------------------

    def generator(self, device: torch.device | str) -> torch.Generator:
        """The noise generator on ``device`` (created from ``seed`` at first use; moving to a
        new device starts a fresh one from ``seed``)."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return self._generator

    def get_rng_state(self) -> dict[str, Any] | None:
        """The generator's state (for checkpoints); None before first use."""
        if self._generator is None:
            return None
        return {"device": str(self._generator.device), "state": self._generator.get_state()}

    def set_rng_state(self, state: Mapping[str, Any] | None) -> None:
        if state is None:
            self._generator = None
            return
        self.generator(state["device"]).set_state(state["state"].cpu())

    # -- the scores and the term --------------------------------------------------------------

    def noise_scales(self, batch: Batch) -> dict[str, Tensor]:
        """sigma_m per modality: the fixed ones, or the per-feature std over ``batch`` (the
        audit's :func:`representation_std`, detached)."""
        if self.sigmas is not None:
            return dict(self.sigmas)
        return representation_std(self.model, [batch], self.modalities, self.output)

    def scores(self, batch: Any) -> dict[str, Tensor]:
        """I_m per modality (0-dim tensors, differentiable when grad is enabled)."""
        model = self.model
        b = split_batch(batch, label_key=self.label_key).to(model_device(model))
        if not self._validated:
            validate_modalities(b, self.modalities)
            self._validated = True
        generator = self.generator(model_device(model))
        out: dict[str, Tensor] = {}
        with _eval_mode(model, self.eval_mode):
            sigmas = self.noise_scales(b)
            for m in self.modalities:  # one modality at a time, in order: as the audit does
                f, q = perturbation_samples(
                    model,
                    b,
                    {m: sigmas[m.name]},
                    samples=self.samples,
                    scale=self.scale,
                    generator=generator,
                    divergence=self.divergence,
                    output=self.output,
                    max_rows=self.max_rows,
                    gradients=True,
                    create_graph=torch.is_grad_enabled(),
                )
                q = q[m.name]
                per_example = (
                    fisher_bound(f, q) if self.estimator == "fisher" else poincare_bound(q)
                )
                out[m.name] = per_example.mean()
        return out

    def term(self, scores: Mapping[str, Tensor]) -> Tensor:
        return regularizer_term(
            torch.stack([scores[m.name] for m in self.modalities]), form=self.form, eps=self.eps
        )

    def forward(self, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        scores = self.scores(batch)
        return self.term(scores), scores

    def extra_repr(self) -> str:
        names = ", ".join(m.name for m in self.modalities)
        return (
            f"modalities=[{names}], estimator={self.estimator}, form={self.form}, "
            f"samples={self.samples}, scale={self.scale}, divergence={self.divergence}"
        )


# -- lambda calibration ---------------------------------------------------------------------


class Calibration:
    """The calibrated weight and what it was computed from.

    ``lambda_value = target_ratio * mean(CE measure) / mean(term measure)`` over the batches,
    the measure being the gradient norm w.r.t. the model's parameters (``criterion="gradient"``)
    or the absolute value (``criterion="value"``). ``ratios`` holds, per batch, the realised
    ratio lambda * measure(term) / measure(CE) under both criteria.
    """

    def __init__(
        self,
        lambda_value: float,
        *,
        criterion: str,
        target_ratio: float,
        ce: list[float],
        term: list[float],
        ce_grad: list[float],
        term_grad: list[float],
    ) -> None:
        self.lambda_value = lambda_value
        self.criterion = criterion
        self.target_ratio = target_ratio
        self.ce, self.term, self.ce_grad, self.term_grad = ce, term, ce_grad, term_grad

    @property
    def value_ratio(self) -> float:
        """lambda * mean|term| / mean CE over the calibration batches."""
        return self.lambda_value * _mean(map(abs, self.term)) / max(_mean(self.ce), 1e-30)

    @property
    def gradient_ratio(self) -> float:
        """lambda * mean ||grad term|| / mean ||grad CE|| over the calibration batches."""
        return self.lambda_value * _mean(self.term_grad) / max(_mean(self.ce_grad), 1e-30)

    def as_dict(self) -> dict[str, Any]:
        return {
            "lambda": self.lambda_value,
            "criterion": self.criterion,
            "target_ratio": self.target_ratio,
            "value_ratio": self.value_ratio,
            "gradient_ratio": self.gradient_ratio,
            "ce": self.ce,
            "term": self.term,
            "ce_grad_norm": self.ce_grad,
            "term_grad_norm": self.term_grad,
        }

    def __repr__(self) -> str:
        return (
            f"Calibration(lambda_value={self.lambda_value:.4g}, criterion={self.criterion!r}, "
            f"value_ratio={self.value_ratio:.3g}, gradient_ratio={self.gradient_ratio:.3g})"
        )


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / max(len(values), 1)


def _grad_norm(loss: Tensor, params: list[Tensor]) -> float:
    if not loss.requires_grad:
        return 0.0
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=False)
    total = sum(float(g.detach().double().square().sum()) for g in grads if g is not None)
    return math.sqrt(total)


def calibrate_lambda(
    regularizer: FunctionalEntropyRegularizer,
    batches: Iterable[Any],
    *,
    target_ratio: float = 1.0,
    criterion: str = "gradient",
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    autocast: Callable[[], Any] | None = None,
) -> Calibration:
    """Pick lambda from a few batches so that the term is ``target_ratio`` of the
    cross-entropy: lambda = target_ratio * mean CE-measure / mean term-measure.

    ``criterion="gradient"`` (default) compares gradient norms w.r.t. the model's trainable
    parameters -- what the optimiser sees, and meaningful for the log forms whose value has
    an arbitrary offset; ``"value"`` compares |term| with CE. The model's parameters are not
    changed; the regularizer's noise generator advances as in training.
    """
    if criterion not in ("gradient", "value"):
        raise ConfigError(f"criterion must be 'gradient' or 'value' (got {criterion!r}).")
    if not target_ratio > 0:
        raise ConfigError(f"target_ratio must be positive (got {target_ratio}).")
    model = regularizer.model
    params = [p for p in model.parameters() if p.requires_grad]
    device = model_device(model)
    ce_vals, term_vals, ce_grads, term_grads = [], [], [], []
    for raw in batches:
        b = split_batch(raw, label_key=regularizer.label_key).to(device)
        if b.label is None:
            raise ConfigError("Calibrating lambda needs labelled batches (the cross-entropy).")
        with autocast() if autocast is not None else nullcontext():
            ce = loss_fn(call_model(model, b, regularizer.output).float(), b.label)
            term, _ = regularizer(b)
        ce_vals.append(float(ce.detach()))
        term_vals.append(float(term.detach()))
        ce_grads.append(_grad_norm(ce, params))
        term_grads.append(_grad_norm(term, params))
    if not ce_vals:
        raise ConfigError("Calibrating lambda needs at least one batch.")
    if criterion == "gradient":
        num, den = _mean(ce_grads), _mean(term_grads)
    else:
        num, den = _mean(ce_vals), _mean(abs(t) for t in term_vals)
    if not den > 0 or not math.isfinite(den):
        raise ConfigError(
            f"Cannot calibrate lambda: the regularizer's {criterion} is {den} on the calibration "
            "batches (is every modality ignored, or the term non-finite?). Give the weight yourself: --lambda X (lambda_=X)."
        )
    return Calibration(
        target_ratio * num / den,
        criterion=criterion,
        target_ratio=target_ratio,
        ce=ce_vals,
        term=term_vals,
        ce_grad=ce_grads,
        term_grad=term_grads,
    )
