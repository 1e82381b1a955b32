"""Fine-tune a classifier so that it stops ignoring a modality: ModDrop on the modality the
model relies on (the default), optionally plus lambda times the functional-entropy
regularizer's term (Gat et al., NeurIPS 2020; ``lambda_="auto"`` calibrates lambda; off by
default, see docs/benchmarks.md), a guard against teaching it noise, validation
and early stopping, checkpoints (tensors + JSON, never a pickle) and exact resume, on CUDA
(optionally mixed precision) when there is one.

    result = fix(model, train_batches, [Modality("image", input="image"),
                                        Modality("color", input="color")], val_data=val_batches)
    result.model          # a fine-tuned copy; `model` itself is unchanged
"""

from __future__ import annotations

import copy
import io
from itertools import islice
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..runtime._batch import OutputSpec
from ._checkpoint import CHECKPOINT_NAME, CheckpointStore, content_sha256
from ._ddp import DistributedUpdate
from ..runtime._device import model_device, resolve_device
from ..runtime._distributed import (
    all_reduce_sum, is_distributed, is_writer, join_group, rank_device, sync_point, world_size,
)
from ._fixdata import TrainingData, with_last
from ._guard import reliance_swap, swap_message
from ._trainer import Trainer
from ..errors import ConfigError
from ..measuring.modality import Modality
from ..runtime.options import AUGMENT_RULES, FixOptions
from ..results import Diagnostic

__all__ = ["CHECKPOINT_NAME", "FixInterrupted", "FixResult", "check_fix_setup", "fix", "resolve_fix_options"]

Progress = Callable[[str, int, int, dict[str, Any]], None]
#: options that may change between a run and its resume (they do not change the steps taken)
_RESUMABLE = ("device", "checkpoint_every", "patience", "restore_best", "max_rows", "label_key")


@dataclass
class FixResult:
    """What :func:`fix` returns.

    ``model`` is a fine-tuned *copy* of the input (on the input's device, in eval mode): the
    last weights; the best validation weights with ``restore_best``; the guard's kept weights
    when it tripped. ``history`` holds one dict per optimisation step: ``step``, ``epoch``,
    ``loss``, ``ce``, ``reg``, ``lambda``, ``scores`` (per-modality I_m), ``augmented`` (the
    ModDrop target) and, on steps that ended with a validation pass, ``val_loss``,
    ``val_accuracy`` and ``val_proxy_accuracy`` (accuracy with the relied-upon modality
    permuted) and ``shift_accuracy`` (with shifted data). ``target``: the ModDrop target, the rule that chose it and the reliance
    (loss increase when permuted, nats) on the held set; ``guard``: the guard's numbers and
    whether it tripped (``guard["message"]`` says why); ``reliance_after``: reliance with
    the returned weights; ``assumption``: which modality the fix assumed to be the shortcut;
    ``swap``: without shifted data, the swap of reliance that makes the result a failure.
    """

    model: nn.Module
    history: list[dict[str, Any]]
    lambda_value: float
    best_step: int | None
    stopped_early: bool
    interrupted: bool = False
    steps: int = 0
    calibration: dict[str, Any] | None = None
    checkpoint: Path | None = None
    device: str = "cpu"
    settings: dict[str, Any] = field(default_factory=dict)
    target: dict[str, Any] | None = None
    guard: dict[str, Any] | None = None
    reliance_after: dict[str, float] | None = None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    assumption: str = ""
    swap: dict[str, Any] | None = None

    @property
    def guard_tripped(self) -> bool:
        return bool(self.guard and self.guard["tripped"])

    @property
    def failed(self) -> bool:
        """Whether the result is not a success: the guard tripped, or (without shifted data)
        the reliance swapped from one modality to another (``swap``)."""
        return self.guard_tripped or self.swap is not None


class FixInterrupted(KeyboardInterrupt):
    """Raised when :func:`fix` is interrupted (Ctrl-C): a ``KeyboardInterrupt`` that carries
    the partial :class:`FixResult` (``interrupted=True``) as ``.result``. The last
    checkpoint on disk is complete (written atomically); ``resume=True`` continues from it."""

    def __init__(self, result: FixResult) -> None:
        super().__init__("fix was interrupted")
        self.result = result


def _copy_model(model: nn.Module) -> nn.Module:
    """An independent copy of ``model``. TorchScript modules go through save/load:
    ``copy.deepcopy`` of a ScriptModule returns non-leaf parameters (torch 2.x), which an
    optimizer refuses."""
    if isinstance(model, torch.jit.ScriptModule):
        buffer = io.BytesIO()
        torch.jit.save(model, buffer)
        buffer.seek(0)
        return torch.jit.load(buffer, map_location=model_device(model))
    try:
        return copy.deepcopy(model)
    except Exception as exc:
        raise ConfigError(
            f"Cannot copy the {type(model).__name__} model ({exc}); fix never trains the "
            "caller's model in place, so the model must support copy.deepcopy."
        ) from None


def resolve_fix_options(options: FixOptions | None, overrides: dict[str, Any]) -> FixOptions:
    """``options`` (default :class:`FixOptions`) with ``overrides`` (FixOptions fields)."""
    if "device" in overrides and isinstance(overrides["device"], torch.device):
        overrides = {**overrides, "device": str(overrides["device"])}
    base = options or FixOptions()
    known = set(base.as_dict())
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(
            f"Unknown fix option(s) {', '.join(unknown)}; the FixOptions fields are "
            f"{', '.join(sorted(known))}."
        )
    return base.replace(**overrides) if overrides else base


def check_fix_setup(options: FixOptions, modalities: Sequence[Modality], checkpoint_dir, resume) -> torch.device:
    """Every check of a fix's options against its modalities and device, before any work;
    returns the device it trains on."""
    names = [m.name for m in modalities]
    if len(modalities) < 2:
        raise ConfigError(
            f"fix balances modalities, so it needs at least two (got {len(modalities)}): name "
            "every modality the model takes in modalities."
        )
    if options.augment not in (*AUGMENT_RULES, *names):
        raise ConfigError(
            f"augment must be {', '.join(map(repr, AUGMENT_RULES))} or a modality name "
            f"({', '.join(names)}); got {options.augment!r}.", parameter="augment",
        )
    if resume and checkpoint_dir is None:
        raise ConfigError("resume=True needs checkpoint_dir (where the checkpoint was written).")
    dev = rank_device(options.device) if is_distributed() else resolve_device(options.device)
    if dev.type == "cuda" and dev.index is None:  # one explicit device for models and generators
        dev = torch.device("cuda", torch.cuda.current_device())
    if options.amp and dev.type != "cuda":
        raise ConfigError(
            "amp=True needs a CUDA device (float16 autocast + GradScaler); use device='cuda' "
            "or amp=False."
        )
    return dev


def _settings(options: FixOptions, modalities: Sequence[Modality]) -> dict[str, Any]:
    return {**options.as_dict(), "modalities": {m.name: m.site for m in modalities}}


def _input_fingerprints(model: nn.Module, data: Any, val_data: Any) -> dict[str, str | None]:
    """The sha256 of the model's weights and of the training and validation batches (None for
    data given as a loader, which is not read twice): a checkpoint resumes only these."""
    def of(batches: Any) -> str | None:
        return content_sha256(list(batches)) if isinstance(batches, (list, tuple)) else None

    return {"model": content_sha256(model.state_dict()), "data": of(data), "val data": of(val_data)}


_INPUT_FLAGS = {"model": "the model", "data": "the training data (--data)", "val data": "the validation data (--val)"}


def _check_inputs(store: CheckpointStore, saved: dict[str, Any], now: dict[str, Any]) -> None:
    changed = [k for k in now if saved.get(k) != now[k]]
    if changed:
        what = "; ".join(
            f"{_INPUT_FLAGS[k]}: sha256 {str(saved.get(k))[:12]} in the checkpoint, {str(now[k])[:12]} now" for k in changed
        )
        raise ConfigError(
            f"The checkpoint in {store.folder} was written for other inputs ({what}). Resume "
            "with the model and data it was written for, or start afresh without resuming "
            f"(remove {store.folder})."
        )


def _resume(trainer: Trainer, store: CheckpointStore, settings: dict[str, Any], inputs: dict[str, Any]) -> None:
    state = store.load()
    _check_inputs(store, state.get("inputs") or {}, inputs)
    fixed = {k: v for k, v in settings.items() if k not in _RESUMABLE}
    saved = {k: v for k, v in state["settings"].items() if k not in _RESUMABLE}
    if saved != fixed:
        changed = sorted(k for k in set(fixed) | set(saved) if saved.get(k) != fixed.get(k))
        raise ConfigError(
            f"The checkpoint in {store.folder} was written with other settings "
            f"({', '.join(changed)}); resume with the same settings, or start afresh without "
            f"resuming (remove {store.folder})."
        )
    trainer.load_state_dict(state["trainer"])


def _found_checkpoint(store: CheckpointStore) -> bool:
    """Whether the checkpoint exists; under torchrun every rank must see it (it is read by
    every rank; rank 0 wrote it)."""
    found = store.exists()
    if is_distributed():
        seen = int(all_reduce_sum(torch.tensor([int(found)], dtype=torch.int64)))
        if 0 < seen < world_size():
            raise ConfigError(
                f"Only {seen} of the {world_size()} processes see the checkpoint in {store.folder}: "
                "with several machines, checkpoint_dir must be on storage every machine reads."
            )
        found = seen > 0
    return found


def _save(store: CheckpointStore | None, trainer: Trainer, settings: dict[str, Any], every: int, inputs: dict) -> None:
    """Write the checkpoint when due: rank 0 writes, every rank waits for it (an error on
    rank 0 surfaces on all)."""
    if store is None or trainer.step_count % every != 0:
        return
    with sync_point("checkpoint"):
        if is_writer():
            store.save({"settings": settings, "inputs": inputs, "trainer": trainer.state_dict()})


def _result(trainer: Trainer, settings, store, home, *, interrupted: bool) -> FixResult:
    best = trainer.best["step"] if trainer.shift is None or trainer.guard is None else trainer.guard.kept_step
    return FixResult(
        model=trainer.model.to(home).eval(),
        history=trainer.history,
        lambda_value=float(trainer.lam if trainer.lam is not None else float("nan")),
        best_step=best if best is not None else (trainer.step_count if trainer.history else None),
        stopped_early=trainer.stopped_early,
        interrupted=interrupted,
        steps=trainer.step_count,
        calibration=trainer.calibration,
        checkpoint=store.path if store is not None and store.exists() else None,
        device=str(trainer.device),
        settings=settings,
        target=trainer.target,
        guard=None if trainer.guard is None or not trainer.validated else trainer.guard.summary(),
    )


def _diagnostics(trainer: Trainer, result: FixResult, reliance: dict[str, float]) -> list[Diagnostic]:
    """A warning for each pushed modality that still looks uninformative: its reliance stays
    at zero while its sensitivity (score I_m) rose; the guard's message when it tripped."""
    out = []
    scored = [h["scores"] for h in trainer.history if h["scores"]]
    for name in trainer.guard.pushed if trainer.guard is not None else []:
        rose = len(scored) > 1 and scored[-1].get(name, 0.0) > scored[0].get(name, 0.0)
        if rose and reliance.get(name, 0.0) <= 1e-3:
            out.append(Diagnostic(
                "fix_pushed_uninformative", "warning",
                f"fix raised the model's sensitivity to {name} (score {scored[0][name]:.3g} -> "
                f"{scored[-1][name]:.3g}) but it still does not rely on it (loss increase when "
                f"permuted: {reliance.get(name, 0.0):.3g} nats): {name} may carry no label "
                "information, and pushing it teaches the model noise.",
                fix=f"Check that {name} predicts the label (a probe), or do not fix towards it.",
                modality=name,
            ))
    if not trainer.validated:
        out.append(Diagnostic(
            "fix_guard_off", "info",
            "fix ran without validation data, so no guard watched whether it taught the model "
            "noise (in-distribution vs decorrelated accuracy).",
            fix="Give val_data (held-out labelled batches drawn like the training data).",
        ))
    if result.guard_tripped:
        out.append(Diagnostic("fix_guard_tripped", "error", result.guard["message"],
                              modality=result.guard["modality"]))
    if result.swap is not None:
        out.append(Diagnostic("fix_swapped_reliance", "error", swap_message(result.swap),
                              fix="Pass --shift-data, or --augment the other modality.",
                              modality=result.swap["modality"]))
    return out


def fix(
    model: nn.Module,
    data: Iterable[Any],
    modalities: Sequence[Modality],
    *,
    val_data: Iterable[Any] | None = None,
    shift_data: Iterable[Any] | None = None,
    options: FixOptions | None = None,
    output: OutputSpec | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    **overrides: Any,
) -> FixResult:
    """Fine-tune a copy of ``model`` on CE + lambda * term (:class:`FunctionalEntropyRegularizer`),
    with ModDrop on the modality the model relies on and a guard on the validation data.

    The input model is never modified. Every random draw (shuffling, ModDrop, the
    regularizer's noise) derives from ``options.seed``; the caller's global RNG state is left
    as it was. Each option (its meaning and default) is a :class:`FixOptions` field; pass
    ``options`` and/or fields as keywords (``fix(m, data, mods, epochs=2)``).

    Args:
        data: labelled batches (dicts or tuples, as the audit reads them). A list of batches
            is reshuffled by example each epoch (re-split into batches of the first batch's
            size); any other iterable (a DataLoader) is iterated as given, and resume then
            skips the batches already seen (exact when its order is deterministic).
        val_data: labelled batches: validation loss and accuracy, early stopping, best
            weights, the held set of the ModDrop target's choice, and the guard.
        shift_data: labelled batches where the suspected shortcut is broken (or a later,
            other-source sample): validated with the rest, and fix returns the weights with
            the best accuracy on it (the input's when no step beat them: the guard trips).
        checkpoint_dir: write ``fix_checkpoint.safetensors`` (tensors + JSON, never a
            pickle) there every ``checkpoint_every`` steps.
        resume: continue from the checkpoint in ``checkpoint_dir`` (the same settings are
            required); the result equals an uninterrupted run. Without one it starts afresh.
        progress: ``progress("fix", step, total_steps, record)`` after each step.

    The ModDrop target and the guard: :class:`FixOptions` (``augment``, ``guard``); their
    numbers: ``result.target``, ``result.guard``.

    Raises:
        FixInterrupted: on Ctrl-C, carrying the partial result; the last checkpoint is usable.
    """
    opts = resolve_fix_options(options, overrides)
    join_group(device=opts.device)  # under torchrun: DDP over the group (a no-op otherwise)
    return _fix(model, data, list(modalities), val_data=val_data, shift_data=shift_data, opts=opts, output=output,
                checkpoint_dir=checkpoint_dir, resume=resume, progress=progress)


def _fix(model, data, modalities, *, val_data, shift_data, opts, output, checkpoint_dir, resume, progress) -> FixResult:
    """:func:`fix` with resolved options, inside the process group (if any)."""
    dev = check_fix_setup(opts, modalities, checkpoint_dir, resume)
    settings = _settings(opts, modalities)
    store = CheckpointStore(checkpoint_dir) if checkpoint_dir is not None else None
    inputs = _input_fingerprints(model, data, val_data) if store is not None else {}
    home = model_device(model)
    work = _copy_model(model).to(dev).train()
    trainer = Trainer(work, modalities, opts, device=dev, output=output or OutputSpec(), val_data=val_data,
                      shift_data=shift_data)
    batches = TrainingData(data, label_key=opts.label_key, seed=opts.seed, shuffle=opts.shuffle)
    total = opts.max_steps or opts.epochs * batches.steps_per_epoch
    report = progress if progress is not None and is_writer() else (lambda stage, done, total, info: None)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(opts.seed)
        first = list(islice(batches.epoch(0), opts.calibration_batches))
        if resume and _found_checkpoint(store):
            with sync_point("resume"):
                _resume(trainer, store, settings, inputs)
        try:
            if is_distributed():
                DistributedUpdate(trainer)
            with sync_point("calibration"):  # every rank on the whole batches: the same lambda
                trainer.calibrate(first)
            trainer.choose_target(first)  # permuted passes sharded and gathered; rank 0's reliance decides
            start_epoch, start_index = trainer.position
            for epoch in range(start_epoch, opts.epochs):
                if trainer.done:
                    break
                for index, batch, last in with_last(batches.epoch(epoch)):
                    if epoch == start_epoch and index < start_index:
                        continue
                    record = trainer.step(batch, epoch, index, last)
                    report("fix", record["step"], total, dict(record))
                    _save(store, trainer, settings, opts.checkpoint_every, inputs)
                    if trainer.done:
                        break
        except KeyboardInterrupt as exc:
            raise FixInterrupted(_result(trainer, settings, store, home, interrupted=True)) from exc
        trainer.final_weights()
        reliance = trainer.reliance_after()
    result = _result(trainer, settings, store, home, interrupted=False)
    result.reliance_after = reliance
    result.assumption = assumption(trainer.target, shifted=trainer.shift is not None)
    if trainer.shift is None and trainer.target["rule"] in ("reliance", "given", "sensitivity"):
        result.swap = reliance_swap(trainer.target, reliance)
    result.diagnostics = _diagnostics(trainer, result, reliance)
    return result


def assumption(target: dict[str, Any], *, shifted: bool) -> str:
    """The fix's assumption about which modality is the shortcut, in one sentence."""
    rule, m = target["rule"], target["modality"]
    if shifted:
        return "checked on the shifted data: fix kept the weights with the best accuracy there"
    if rule == "reliance":
        return f"assumes `{m}`, the modality the model relies on, is the shortcut"
    if rule == "given":
        return f"assumes `{m}` (--augment) is the shortcut"
    if rule == "all":
        return "assumes nothing about which modality is the shortcut: ModDrop permutes every modality"
    return "assumes the most sensitive modality at each step is the shortcut"
