"""The training term of Gat et al. (NeurIPS 2020): maximise each modality's functional
entropy bound on the training batch, as an ``nn.Module`` that drops into any training loop.

The scores are computed by the audit's own code path (:func:`perturbation_samples` and
the estimators), so a regularizer score equals the audit's bound on the same batch, noise
and scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ..runtime._batch import Batch, OutputSpec, split_batch
from ..runtime._device import model_device
from ..measuring._downstream import DownstreamPlan
from ..measuring._perturbation import CleanPass, batch_std, perturbation_samples, representation_std
from ..errors import ConfigError, ModalityError
from ..measuring.estimators import DIVERGENCES, fisher_bound, poincare_bound
from ..measuring.modality import Modality, validate_modalities
from ..runtime.options import ESTIMATORS

__all__ = [
    "FunctionalEntropyRegularizer",
    "regularizer_term",
    "FORMS",
    "MAXIMISING_FORMS",
    "ESTIMATORS",
    "DEFAULT_FORM",
    "SCORE_FLOOR",
]

#: ``inverse``: the paper's ||(1/I_1, ..., 1/I_M)||_2.
#: ``log_inverse``: log ||(1/I_1, ..., 1/I_M)||_2 -- the same minimiser, scale-free.
#: ``mean_log``: -mean_m log I_m -- scale-free, every modality weighted equally.
#: ``log_share``: log ||(S/I_1, ..., S/I_M)||_2, S = sum_m I_m -- the shares' version.
#: ``min_log``: -log min_m I_m -- the weakest modality's log score only.
#: ``min_share``: -log min_m I_m / S -- the weakest modality's share.
#: ``min_dominant``: I_d, the dominant modality's score, *minimised* (the official code's
#: ``optim_method='min_ent'`` direction): the relied-upon modality is made less informative.
FORMS = ("inverse", "log_inverse", "mean_log", "log_share", "min_log", "min_share", "min_dominant")
#: The forms that maximise the weak modalities' scores (the paper's direction).
MAXIMISING_FORMS = FORMS[:-1]
#: The default form (benchmarks/study_fix.py; FixOptions.form reads the evidence too).
DEFAULT_FORM = "log_share"
#: Default relative floor eps: scores enter the term as I_m + eps * mean_m(I) (detached).
SCORE_FLOOR = 1e-3
# an absolute floor under the relative one, only for the all-zero case (every modality ignored)
_TINY = 1e-30


def regularizer_term(
    scores: Tensor, *, form: str = DEFAULT_FORM, eps: float = SCORE_FLOOR, dominant: int | None = None
) -> Tensor:
    """The term to *minimise* from the (M,) scores I_m >= 0.

    Scores enter with a relative floor, I_m + c with c = eps * mean_m(I_m) (detached), so a
    modality the model ignores (I_m = 0) gives a finite term whose size does not depend on
    the scale of the scores: ``inverse`` is at most sqrt(M)/c, the log forms log(1/c) + const.

    - ``inverse``: || (1/(I_1+c), ..., 1/(I_M+c)) ||_2 (the paper's term);
    - ``log_inverse``: log of that norm = 1/2 log sum_m (I_m+c)^-2: scale-free, a
      softmin-weighted sum of dI_m / I_m (it works on the weakest modality first);
    - ``mean_log``: -1/M sum_m log(I_m + c): scale-free, all modalities weighted equally;
    - ``log_share``: log || (S/(I_1+c), ..., S/(I_M+c)) ||_2, S = sum_m (I_m+c): the
      ``log_inverse`` form of the shares; invariant to scaling all scores (no gain from
      sharpening the logits), smallest (3/2 log M) at equal shares;
    - ``min_log``: -log(min_m I_m + c): only the weakest modality's score;
    - ``min_share``: -log((min_m I_m + c) / S): the weakest modality's share.
    - ``min_dominant``: I_d, the raw score of the dominant modality d (index ``dominant``;
      by default the largest score, chosen on the detached scores), to be made *smaller*:
      the opposite direction to the paper's, which moves decisions where maximising the
      weak modalities' scores moves mostly sensitivity (docs/benchmarks.md). Any M.
    """
    if form not in FORMS:
        raise ConfigError(f"Unknown regularizer form {form!r}; choose one of {', '.join(FORMS)}.")
    if form == "min_dominant":
        index = int(scores.detach().argmax()) if dominant is None else dominant
        return scores[index]
    floor = eps * scores.detach().mean() + _TINY
    floored = scores + floor
    if form == "inverse":
        return torch.linalg.vector_norm(1.0 / floored)
    log_inverse = 0.5 * torch.logsumexp(-2.0 * torch.log(floored), dim=0)
    if form == "log_inverse":
        return log_inverse
    if form == "log_share":
        return log_inverse + torch.log(floored.sum())
    if form == "min_log":
        return -torch.log(floored.min())
    if form == "min_share":
        return -torch.log(floored.min()) + torch.log(floored.sum())
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
    differentiable (the inner gradient is taken with ``create_graph=True``) when grad is on,
    through the perturbed *and* the clean prediction p(h) (the paper's objective; the official
    code does not detach p_clean) unless ``detach_clean``.

    Cost: per modality the model runs on K x n rows twice (clean and noisy) and the backward
    goes through the inner gradient: about 1.5 K M plain steps on n = the whole batch. The
    defaults bound it: ``term_examples`` rows per modality, every ``term_every``-th call
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
        estimator: ``"fisher"`` (log-Sobolev bound of the entropy) or ``"poincare"``.
        form: one of :data:`FORMS` (see :func:`regularizer_term`).
        samples: K, noise draws per example and modality.
        scale: s, the noise scale relative to sigma.
        divergence: ``"kl"`` or the official code's ``"official"`` BCE.
        sigmas: fixed per-feature noise scales by modality name; by default the per-feature
            std of the representation over the (sub-)batch, detached (the official choice).
        seed: seeds the generator of the noise and of the sub-batches.
        eps: the relative score floor: scores enter the term as I_m + eps * mean_m(I)
            (detached); the returned ``scores`` are the raw I_m.
        max_rows: rows per chunk of the expanded K x batch pass; with ``create_graph`` every
            chunk's graph is kept for the backward, so this does not cap training memory.
        eval_mode: run the perturbation passes in eval mode (dropout off, batch-norm on
            running statistics) so that f is exactly the effect of the noise.
        detach_clean: stop the gradient through the clean prediction (a different objective:
            the update then ignores how the weights move p(h)).
        term_examples: score each modality on at most this many examples of the batch, a
            fresh random subset per call (None: the whole batch).
        term_every: compute the term on every n-th call only; the other calls return a zero
            term and the last scores (detached), and the computed term is multiplied by n so
            that its mean over steps is unchanged. :meth:`compute` ignores it.
        dominant: with ``form="min_dominant"``, the modality whose score is minimised (an
            attribute a training loop may set later; None: the largest score of each batch).
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
        detach_clean: bool = False,
        term_examples: int | None = None,
        term_every: int = 1,
        dominant: str | None = None,
    ) -> None:
        super().__init__()
        for name, value, choices in (
            ("estimator", estimator, ESTIMATORS),
            ("form", form, FORMS),
            ("divergence", divergence, tuple(DIVERGENCES)),
        ):
            if value not in choices:
                raise ConfigError(f"Unknown {name} {value!r}; choose one of {', '.join(choices)}.")
        if samples < 2:
            raise ConfigError(f"samples must be at least 2 (got {samples}).")
        if not scale > 0 or not eps > 0:
            raise ConfigError(f"scale and eps must be positive (got scale={scale}, eps={eps}).")
        if term_examples is not None and term_examples < 2:
            raise ConfigError(f"term_examples must be at least 2 or None (got {term_examples}).")
        if term_every < 1:
            raise ConfigError(f"term_every must be at least 1 (got {term_every}).")
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
        self.eval_mode, self.detach_clean = eval_mode, bool(detach_clean)
        self.term_examples, self.term_every = term_examples, int(term_every)
        self.dominant = dominant
        self.calls = 0  # forward calls so far (term_every counts them)
        self._last_scores: dict[str, Tensor] = {}
        self.sigmas: dict[str, Tensor] | None = None
        if sigmas is not None:
            missing = [m.name for m in modalities if m.name not in sigmas]
            if missing:
                raise ModalityError(f"sigmas has no entry for modality {', '.join(missing)}.")
            # moved to the noise's device where used (perturbation_samples)
            self.sigmas = {
                m.name: torch.as_tensor(sigmas[m.name]).detach().float() for m in modalities
            }
        self._generator: torch.Generator | None = None
        self._validated = False
        self._downstream: DownstreamPlan | None = None

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
        """The generator's state, the call count and the last scores (for checkpoints, so that
        a resumed run equals an uninterrupted one); None before first use."""
        if self._generator is None:
            return None
        return {
            "device": str(self._generator.device),
            "state": self._generator.get_state(),
            "calls": self.calls,
            "last_scores": {k: v.cpu() for k, v in self._last_scores.items()},
        }

    def set_rng_state(self, state: Mapping[str, Any] | None) -> None:
        if state is None:
            self._generator, self.calls, self._last_scores = None, 0, {}
            return
        self.generator(state["device"]).set_state(state["state"].cpu())
        self.calls = int(state.get("calls", 0))
        device = self._generator.device if self._generator is not None else "cpu"
        self._last_scores = {k: v.to(device) for k, v in state.get("last_scores", {}).items()}

    # -- the scores and the term --------------------------------------------------------------

    def noise_scales(self, batch: Batch) -> dict[str, Tensor]:
        """sigma_m per modality: the fixed ones, or the per-feature std over ``batch`` (the
        audit's :func:`representation_std`, detached)."""
        if self.sigmas is not None:
            return dict(self.sigmas)
        return representation_std(self.model, [batch], self.modalities, self.output)

    def scores(self, batch: Any) -> dict[str, Tensor]:
        """I_m per modality (0-dim tensors, differentiable when grad is enabled), on at most
        ``term_examples`` examples of ``batch``."""
        model = self.model
        b = split_batch(batch, label_key=self.label_key).to(model_device(model))
        if not self._validated:
            validate_modalities(b, self.modalities)
            self._validated = True
        generator = self.generator(model_device(model))
        if self.term_examples is not None and b.size > self.term_examples:
            rows = torch.randperm(b.size, generator=generator, device=generator.device)
            b = b.select(rows[: self.term_examples])
        grad = torch.is_grad_enabled()
        out: dict[str, Tensor] = {}
        with _eval_mode(model, self.eval_mode):
            # one clean pass for every modality (with its graph unless detached)
            if self._downstream is None:  # checked once, in the mode the term runs in
                self._downstream = DownstreamPlan(model, self.modalities, self.output)
            clean = CleanPass(
                model, b, self.modalities, self.output, with_grad=grad and not self.detach_clean,
                downstream=self._downstream,
            )
            # the per-batch noise scale from that clean pass (no pass of its own)
            sigmas = dict(self.sigmas) if self.sigmas is not None else batch_std(clean.once()[1], self.modalities)
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
                    create_graph=grad,
                    clean=clean,
                    detach_clean=self.detach_clean,
                )
                q = q[m.name]
                per_example = (
                    fisher_bound(f, q) if self.estimator == "fisher" else poincare_bound(q)
                )
                out[m.name] = per_example.mean()
        return out

    def term(self, scores: Mapping[str, Tensor]) -> Tensor:
        names = [m.name for m in self.modalities]
        if self.dominant is not None and self.dominant not in names:
            raise ModalityError(f"dominant={self.dominant!r} is not a modality ({', '.join(names)}).")
        return regularizer_term(
            torch.stack([scores[n] for n in names]), form=self.form, eps=self.eps,
            dominant=None if self.dominant is None else names.index(self.dominant),
        )

    def compute(self, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """The term and scores on ``batch`` now (no ``term_every`` skipping or weighting)."""
        scores = self.scores(batch)
        self._last_scores = {k: v.detach() for k, v in scores.items()}
        return self.term(scores), scores

    def forward(self, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """(term, scores) on every ``term_every``-th call (the term times ``term_every``);
        on the others a zero term and the last scores, detached."""
        due = self.calls % self.term_every == 0
        self.calls += 1
        if not due:
            device = model_device(self.model)
            return torch.zeros((), device=device, dtype=torch.float64), dict(self._last_scores)
        term, scores = self.compute(batch)
        return (term * self.term_every if self.term_every > 1 else term), scores

    def extra_repr(self) -> str:
        names = ", ".join(m.name for m in self.modalities)
        return (
            f"modalities=[{names}], estimator={self.estimator}, form={self.form}, "
            f"samples={self.samples}, scale={self.scale}, divergence={self.divergence}, "
            f"detach_clean={self.detach_clean}, term_examples={self.term_examples}, "
            f"term_every={self.term_every}"
        )
