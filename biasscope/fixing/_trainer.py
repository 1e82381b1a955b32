"""The training state of one fix run and its steps: calibrate lambda, choose the ModDrop
target from reliance, take a step (CE on the ModDrop-augmented batch + lambda * term),
validate (loss, accuracy, the guard's decorrelated proxy), and state_dict/load_state_dict
for exact resume."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..runtime._batch import Batch, OutputSpec, call_model, split_batch
from ._fixdata import first_examples
from ._guard import Guard
from ._moddrop import ModDrop, choose_target, held_performance, measure_reliance
from ..errors import ConfigError, DataLoadError
from ..measuring.modality import Modality, intervene
from ..runtime.options import FixOptions
from .calibration import calibrate_lambda
from .regularizer import FunctionalEntropyRegularizer
from ..measuring.shift import shift_accuracy, shift_batches

__all__ = ["Trainer"]

_NOT_REGULARIZER = {"self", "model", "modalities", "output", "sigmas"}


def _regularizer(model: nn.Module, mods: Sequence[Modality], o: FixOptions, output: OutputSpec):
    """The regularizer with every FixOptions field it takes (by parameter name)."""
    params = inspect.signature(FunctionalEntropyRegularizer).parameters
    values = o.as_dict()
    kwargs = {k: values[k] for k in params if k in values and k not in _NOT_REGULARIZER}
    return FunctionalEntropyRegularizer(model, mods, output=output, **kwargs)


def _optimizer(o: FixOptions, params: list[Tensor]) -> torch.optim.Optimizer:
    if o.optimizer == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    if o.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=0.9, weight_decay=o.weight_decay)


def reinitialise(model: nn.Module) -> None:
    """Draw fresh weights for every layer with ``reset_parameters`` (from the global RNG,
    which fix seeds)."""
    layers = [m for m in model.modules() if callable(getattr(m, "reset_parameters", None))]
    if not layers:
        raise ConfigError(
            f"from_scratch (--from-scratch) re-initialises layers with reset_parameters, and the "
            f"{type(model).__name__} model has none (a TorchScript or exported model?): give the "
            "model as an nn.Module (a state dict with --factory), or fine-tune without it."
        )
    for layer in layers:
        layer.reset_parameters()


def _cpu_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


class Trainer:
    """One fix run: the model being trained (a copy, on ``device``), its optimizer, the
    regularizer, ModDrop, the guard and the history."""

    def __init__(
        self,
        model: nn.Module,
        modalities: Sequence[Modality],
        options: FixOptions,
        *,
        device: torch.device,
        output: OutputSpec,
        val_data: Any = None,
        shift_data: Any = None,
    ) -> None:
        o = self.options = options
        self.model, self.modalities, self.device, self.output = model, list(modalities), device, output
        self.reg = _regularizer(model, self.modalities, o, output)
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ConfigError("The model has no trainable parameters (requires_grad=False everywhere).")
        self.optimizer = _optimizer(o, self.params)
        self.scaler = torch.amp.GradScaler("cuda", enabled=o.amp)
        self.moddrop = ModDrop(self.modalities, dropout=o.modality_dropout, noise=o.modality_noise)
        self.aug_generator = torch.Generator(device=device).manual_seed(o.seed + 1)
        self.val = None if val_data is None else [split_batch(b, label_key=o.label_key) for b in val_data]
        if self.val is not None and any(b.label is None for b in self.val):
            raise DataLoadError("The validation data has no labels; fix needs labelled val_data.")
        if self.val is not None and not any(b.size for b in self.val):
            raise DataLoadError("The validation data is empty.")
        self.shift = None if shift_data is None else shift_batches(shift_data, label_key=o.label_key)
        self.step_count, self.position = 0, (0, 0)  # steps taken; (epoch, batch index) next
        self.lam: float | None = None if o.lambda_ == "auto" else float(o.lambda_)
        self.calibration: dict[str, Any] | None = None
        self.target: dict[str, Any] | None = None
        self.guard: Guard | None = None
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"step": None, "metric": None, "state": None, "waited": 0}
        self.stopped_early = False
        self.held: list[Batch] = []
        # under torchrun (world size > 1): the step's update and the ranks' agreement on
        # numbers that steer the run (set by biasscope.fixing._ddp.DistributedUpdate)
        self.distributed: Any = None
        self.agree: Callable[[dict[str, float]], dict[str, float]] | None = None
        self.agree_scores: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None

    @property
    def validated(self) -> bool:
        """Whether there are validations (validation and/or shifted data)."""
        return self.val is not None or self.shift is not None

    def autocast(self):
        if self.options.amp:
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return nullcontext()

    # -- before the first step ------------------------------------------------------------

    def calibrate(self, batches: Sequence[Batch]) -> None:
        """Lambda from the first batches when ``lambda_="auto"`` and not yet calibrated."""
        if self.lam is not None:
            return
        o = self.options
        cal = calibrate_lambda(
            self.reg, [b.to(self.device) for b in batches], target_ratio=o.target_ratio,
            criterion=o.calibration, autocast=self.autocast,
        )
        self.lam, self.calibration = cal.lambda_value, cal.as_dict()

    def choose_target(self, training: Sequence[Batch]) -> None:
        """The held set (validation data, else the first training batches), the reliance on
        each modality there, the ModDrop target and the guard (skipped when resumed)."""
        o = self.options
        source = "validation" if self.val is not None else "training"
        held = first_examples(self.val if self.val is not None else training, o.reliance_examples)
        self.held = [b.to(self.device) for b in held]
        if self.target is not None:
            return
        reliance = self._reliance()
        if self.agree is not None:  # the same target on every rank
            reliance = self.agree(reliance)
        modality, rule = choose_target(reliance, o.augment, [m.name for m in self.modalities])
        self.target = {
            "modality": modality, "rule": rule, "reliance": reliance,
            "relied_upon": max(reliance, key=reliance.get),
            "held": {"source": source, "examples": sum(b.size for b in self.held)},
        }
        self._make_guard()
        if self.validated:
            self.guard.begin(self._agreed(self._measure()), lambda: _cpu_state(self.model))
        if o.from_scratch:  # after the input's reliance and guard numbers
            reinitialise(self.model)

    def _reliance(self) -> dict[str, float]:
        """Reliance on each modality over the held set (the same permutations every call)."""
        o = self.options
        return measure_reliance(
            self.model, self.held, self.modalities, device=self.device, output=self.output,
            repeats=o.reliance_repeats, seed=o.seed + 2,
        )

    def _make_guard(self) -> None:
        o, t = self.options, self.target
        watched = t["modality"] or t["relied_upon"]
        self.reg.dominant = watched  # the modality the min_dominant form penalises
        self.guard = Guard(
            modality=watched, pushed=[m.name for m in self.modalities if m.name != watched],
            # from scratch the accuracy starts at chance: the input's numbers are no yardstick
            # for the proxy rule (shifted data and max_drop_accuracy still are)
            enabled=o.guard and not o.from_scratch, tolerance=o.guard_tolerance, max_drop_accuracy=o.max_drop_accuracy,
            shifted=self.shift is not None,
        )

    # -- a step -----------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        o = self.options
        ends = o.max_steps is not None and self.step_count >= o.max_steps
        return self.stopped_early or ends or (self.guard is not None and self.guard.trip is not None)

    def _forward(self, b: Batch) -> tuple[Tensor, Tensor, dict[str, Tensor], str | None, float]:
        o, per_step = self.options, self.target["rule"] == "sensitivity"
        if self.lam > 0:
            term, scores = self.reg(b)
        elif per_step and self.moddrop.active:  # the scores only pick the target
            with torch.no_grad():
                term, scores = self.reg(b)
        else:
            term, scores = torch.zeros((), device=self.device), {}
        target = self.target["modality"]
        if self.target["rule"] == "all":  # symmetric ModDrop
            target = [m.name for m in self.modalities]
        elif self.moddrop.active and per_step:
            ranked = scores if self.agree_scores is None else self.agree_scores(scores)
            target = max(ranked, key=lambda k: float(ranked[k].detach()))
        transforms = self.moddrop.transforms(b, target, self.aug_generator) if target else {}
        with intervene(self.model, b, transforms) as bb:
            ce = F.cross_entropy(call_model(self.model, bb, self.output).float(), b.label)
        warm = min(1.0, (self.step_count + 1) / o.lambda_warmup) if o.lambda_warmup else 1.0
        lam_now = self.lam * warm
        if not transforms:
            target = None
        elif not isinstance(target, str):
            target = "all"
        return ce, term, scores, target, lam_now

    def step(self, batch: Batch, epoch: int, index: int, last: bool) -> dict[str, Any]:
        """One optimisation step on ``batch``, then validation when due; returns its record.
        Under torchrun ``batch`` is the global batch and each rank trains on its shard."""
        o = self.options
        if batch.label is None:
            raise DataLoadError("The training data has no labels; fix needs labelled batches.")
        if self.distributed is not None:
            record = self.distributed.update(batch)
            record = {"step": record.pop("step"), "epoch": epoch, **record}
        else:
            record = self._update(batch, epoch)
        self.step_count += 1
        self.position = (epoch + 1, 0) if last else (epoch, index + 1)
        due = o.eval_every is not None and self.step_count % o.eval_every == 0
        ends = o.max_steps is not None and self.step_count >= o.max_steps
        checked = due or (o.eval_every is None and (last or ends))
        if not record["scores"] and self.distributed is None and (self.step_count == 1 or checked):
            record["scores"] = self._scores(batch)  # the first step's and each validation's
        if self.validated and checked:
            record.update(self.validate())
        self.history.append(record)
        return record

    def _update(self, batch: Batch, epoch: int) -> dict[str, Any]:
        """Forward, backward and optimizer step on ``batch`` in one process; its record."""
        b = batch.to(self.device)
        with self.autocast():
            ce, term, scores, target, lam_now = self._forward(b)
            loss = ce + lam_now * term.float()
        self.optimizer.zero_grad(set_to_none=True)
        record: dict[str, Any] = {
            "step": self.step_count + 1, "epoch": epoch, "loss": float(loss.detach().cpu()),
            "ce": float(ce.detach().cpu()), "reg": float(term.detach().cpu()), "lambda": lam_now,
            "scores": {k: float(v.detach().cpu()) for k, v in scores.items()},
        }
        if target is not None:
            record["augmented"] = target
        if torch.isfinite(loss):
            self.apply_gradients(loss)
        else:
            record["skipped"] = True  # a non-finite loss: no update
        return record

    def _scores(self, batch: Batch) -> dict[str, float]:
        """The regularizer's scores I_m on ``batch`` (``term_examples`` of its rows), without
        a graph: the history's ``scores`` when the term is off."""
        with torch.no_grad():
            _, scores = self.reg.compute(batch.to(self.device))
        return {k: float(v) for k, v in scores.items()}

    def apply_gradients(self, loss: Tensor) -> None:
        """Backward through ``loss`` (under DDP the gradients are all-reduced there), then
        unscale and clip when ``max_grad_norm`` is set, the optimizer step and the scaler
        update."""
        self.scaler.scale(loss).backward()
        if self.options.max_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.options.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    # -- validation -----------------------------------------------------------------------

    def _measure(self) -> dict[str, float]:
        """The validation numbers (held_performance) and the shifted accuracy, where given."""
        metrics = {} if self.val is None else held_performance(
            self.model, self.val, self.modalities, self.guard.modality, device=self.device,
            output=self.output, seed=self.options.seed + 3,
        )
        if self.shift is not None:
            metrics["shift_accuracy"] = shift_accuracy(self.model, self.shift, output=self.output, device=self.device)
        return metrics

    def _agreed(self, metrics: dict[str, float]) -> dict[str, float]:
        """Rank 0's metrics on every rank under torchrun (the same decisions everywhere)."""
        return metrics if self.agree is None else self.agree(metrics)

    def validate(self) -> dict[str, float]:
        """Validation loss, accuracy and decorrelated proxy; updates the best weights, early
        stopping and the guard."""
        o = self.options
        metrics = self._agreed(self._measure())
        monitor = "shift_accuracy" if self.shift is not None else o.monitor
        best, value = self.best, metrics[monitor]
        if best["metric"] is None:
            better = True
        else:
            better = value < best["metric"] if monitor == "val_loss" else value > best["metric"]
        # one CPU copy of the weights, taken when first asked for, shared by the best state
        # and the guard's kept state
        snapshot = functools.cache(lambda: _cpu_state(self.model))
        if better:
            state = snapshot() if o.restore_best else None
            best.update(step=self.step_count, metric=value, waited=0, state=state)
        else:
            best["waited"] += 1
            self.stopped_early = o.patience is not None and best["waited"] >= o.patience
        self.guard.check(self.step_count, metrics, snapshot)
        return metrics

    # -- the end --------------------------------------------------------------------------

    def final_weights(self) -> None:
        """Load the weights fix returns: the guard's kept ones when it tripped or with shifted
        data (the best shifted accuracy), else the best validation weights with
        ``restore_best``, else the last."""
        if self.guard is not None and self.guard.trip is None and self.shift is not None:
            self.guard.finish(self.step_count)
        kept = self.guard is not None and (self.guard.trip is not None or self.shift is not None)
        if kept and self.guard.kept_state is not None:
            self.model.load_state_dict(self.guard.kept_state)
        elif self.val is not None and self.options.restore_best and self.best["state"] is not None:
            self.model.load_state_dict(self.best["state"])

    def reliance_after(self) -> dict[str, float]:
        """Reliance on each modality over the held set, with the current weights."""
        return self._reliance()

    # -- checkpoints ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        rng["regularizer"] = self.reg.get_rng_state()
        rng["augment"] = self.aug_generator.get_state()
        return {
            "step": self.step_count, "position": list(self.position), "model": _cpu_state(self.model),
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "lambda": self.lam, "calibration": self.calibration, "target": self.target,
            "guard": None if self.guard is None else self.guard.state_dict(),
            "history": self.history, "best": self.best, "stopped_early": self.stopped_early, "rng": rng,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step_count, self.position = state["step"], tuple(state["position"])
        self.lam, self.calibration, self.target = state["lambda"], state["calibration"], state["target"]
        self.history, self.best, self.stopped_early = state["history"], state["best"], state["stopped_early"]
        if self.target is not None:
            self._make_guard()
            if state["guard"] is not None:
                self.guard.load_state_dict(state["guard"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        if self.device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"].cpu(), self.device)
        self.reg.set_rng_state(rng["regularizer"])
        self.aug_generator.set_state(rng["augment"])
