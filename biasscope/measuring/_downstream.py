"""Downstream-only recomputation: a perturbed pass takes from the clean pass every module
call whose inputs do not depend on the perturbed site, and recomputes only the rest.

The clean pass is *recorded*: every submodule call (keyed by module path and call index,
so a module called twice is two entries) keeps its output and the provenance of its inputs
(each tensor input is a batch input or an earlier call's output). A perturbed pass on the
batch repeated k times is *replayed*: a call whose inputs have the same provenance as in the
clean pass (so the same values, repeated) returns the clean output repeated k times along
its batch dimension, and its submodules do not run. The site's own module is one of them
(its inputs are clean); the perturbation hook then makes its output a new tensor, and every
call that reads a new tensor (or one computed outside a module) runs as usual.

:class:`DownstreamPlan` checks once, on a one-row and a two-row pass of the first example,
where each output's batch dimension is and that replaying gives the full pass's logits; a
model for which that cannot be established (randomness, batch-coupled or stateful modules,
outputs that are not tensors) runs full passes, and :attr:`DownstreamPlan.reason` says why.
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..runtime._batch import Batch, OutputSpec, call_model
from .modality import Modality, intervene

__all__ = ["DownstreamPlan", "Recording"]

_Key = tuple[str, int]  # (module path, call index)
_SIMPLE = (type(None), bool, int, float, str, torch.dtype, torch.device)


class _Unknown(Exception):
    """An input whose provenance is not known: the call must run."""


def _leaves(obj: Any, path: tuple = ()) -> Iterator[tuple[tuple, Tensor]]:
    """The tensors of a module output with their element paths; raises :class:`_Unknown` on
    a container it cannot rebuild."""
    if isinstance(obj, Tensor):
        yield path, obj
    elif isinstance(obj, (tuple, list)):
        for i, v in enumerate(obj):
            yield from _leaves(v, (*path, i))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, (*path, k))
    elif not isinstance(obj, _SIMPLE):
        raise _Unknown(type(obj).__name__)


def _rebuild(obj: Any, fn: Callable[[tuple, Tensor], Tensor], path: tuple = ()) -> Any:
    """``obj`` with ``fn(path, t)`` in place of each tensor (same container types)."""
    if isinstance(obj, Tensor):
        return fn(path, obj)
    if isinstance(obj, (tuple, list)):
        items = [_rebuild(v, fn, (*path, i)) for i, v in enumerate(obj)]
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    if isinstance(obj, dict):
        items = {k: _rebuild(v, fn, (*path, k)) for k, v in obj.items()}
        return type(obj)(**items) if hasattr(obj, "to_tuple") else type(obj)(items)  # HF ModelOutput
    return obj


class _Provenance:
    """Where each live tensor of a pass came from (weak references: no tensor is kept)."""

    def __init__(self) -> None:
        self._origin: dict[int, tuple[weakref.ref, int, tuple]] = {}

    def mark(self, t: Tensor, origin: tuple) -> None:
        self._origin[id(t)] = (weakref.ref(t), t._version, origin)

    def of(self, t: Tensor) -> tuple:
        found = self._origin.get(id(t))
        if found is None or found[0]() is not t or found[1] != t._version:  # unknown or changed in place
            raise _Unknown("tensor")
        return found[2]

    def signature(self, obj: Any) -> Any:
        """The provenance of every tensor in ``obj`` and the value of everything else."""
        if isinstance(obj, Tensor):
            return ("t", self.of(obj))
        if isinstance(obj, _SIMPLE):
            return (type(obj).__name__, obj)
        if isinstance(obj, (tuple, list)):
            return (type(obj).__name__, tuple(self.signature(v) for v in obj))
        if isinstance(obj, dict):
            return ("dict", tuple((k, self.signature(v)) for k, v in obj.items()))
        raise _Unknown(type(obj).__name__)

    def mark_batch(self, batch: Batch) -> None:
        for name, t in [*enumerate(batch.args), *batch.kwargs.items()]:
            if isinstance(t, Tensor):
                self.mark(t, ("input", name))


@dataclass
class _Call:
    """One recorded module call: its input signature (None: unknown), output, and how many
    times each submodule ran inside it."""

    signature: Any
    output: Any
    inner: Counter = field(default_factory=Counter)
    versions: tuple[int, ...] = ()


@dataclass
class Recording:
    """The module calls of one clean pass (B rows)."""

    calls: dict[_Key, _Call] = field(default_factory=dict)
    holds_site: set[_Key] = field(default_factory=set)  # calls during which a site ran
    size: int = 0


def _patched(model: nn.Module, make: Callable[[str, Callable], Callable]) -> Callable[[], None]:
    """Replace each submodule's ``forward`` by ``make(path, forward)``; returns the undo."""
    saved = []
    for path, module in model.named_modules():
        if not path or isinstance(module, torch.jit.ScriptModule):
            continue
        own = module.__dict__.get("forward")
        module.__dict__["forward"] = make(path, module.forward)
        saved.append((module, own))

    def undo() -> None:
        for module, own in saved:
            if own is None:
                del module.__dict__["forward"]
            else:
                module.__dict__["forward"] = own

    return undo


@contextmanager
def _recording(model: nn.Module, batch: Batch, sites: set[str], keep: set[_Key] | None) -> Iterator[Recording]:
    """Record the module calls of the passes run inside (``keep``: the calls whose output to
    hold, None for all)."""
    rec, prov = Recording(size=batch.size), _Provenance()
    prov.mark_batch(batch)
    counts: Counter = Counter()
    stack: list[_Key] = []

    def make(path: str, forward: Callable) -> Callable:
        def call(*args: Any, **kwargs: Any) -> Any:
            key = (path, counts[path])
            counts[path] += 1
            for outer in stack:
                rec.calls[outer].inner[path] += 1
            if path in sites:
                rec.holds_site.update(stack)
            try:
                signature = prov.signature((args, kwargs))
            except _Unknown:
                signature = None
            rec.calls[key] = entry = _Call(signature, None)
            stack.append(key)
            try:
                out = forward(*args, **kwargs)
            finally:
                stack.pop()
            try:
                leaves = list(_leaves(out))
                for elem, t in leaves:
                    prov.mark(t, (key, elem))
                if keep is None or key in keep:
                    # a copy of the containers: callers may set their fields after (HF does)
                    entry.output = _rebuild(out, lambda _elem, t: t)
                    entry.versions = tuple(t._version for _, t in leaves)
            except _Unknown:
                entry.signature = None
            return out

        return call

    undo = _patched(model, make)
    try:
        yield rec
    finally:
        undo()


@contextmanager
def _replaying(model: nn.Module, rec: Recording, rows: Batch, k: int, dims: dict, used: set[_Key]) -> Iterator[None]:
    """Within the context, a call with the clean pass's input provenance returns the clean
    output repeated k times (``rows``: the batch repeated k times, before any perturbation)."""
    prov, counts = _Provenance(), Counter()
    prov.mark_batch(rows)
    held: list[Tensor] = []  # keeps the repeated outputs' ids unique during the pass

    def repeated(key: _Key, elem: tuple, t: Tensor) -> Tensor:
        d = dims[(key[0], key[1], elem)]
        # a copy either way: the pass may change it in place, the recording must not change
        out = t.clone() if d is None else t.repeat(*[k if j == d else 1 for j in range(t.dim())])
        held.append(out)
        prov.mark(out, (key, elem))
        return out

    def make(path: str, forward: Callable) -> Callable:
        def call(*args: Any, **kwargs: Any) -> Any:
            key = (path, counts[path])
            counts[path] += 1
            entry = rec.calls.get(key)
            if entry is not None and entry.signature is not None and entry.output is not None \
                    and key not in rec.holds_site and _same(prov, (args, kwargs), entry.signature):
                counts.update(entry.inner)  # its submodules' calls are skipped with it
                used.add(key)
                return _rebuild(entry.output, lambda elem, t: repeated(key, elem, t))
            return forward(*args, **kwargs)

        return call

    undo = _patched(model, make)
    try:
        yield
    finally:
        undo()


def _same(prov: _Provenance, inputs: Any, signature: Any) -> bool:
    try:
        return prov.signature(inputs) == signature
    except _Unknown:
        return False


def _batch_dim(one: Tensor, two: Tensor) -> int | None | bool:
    """Where the batch is in a call's output, from its one-row and two-row (the same example
    twice) values: the dimension that doubles, None when the output does not depend on the
    batch (same in both), False when neither holds (the call must always run)."""
    if one.dim() != two.dim():
        return False
    if one.shape == two.shape:
        return None if _close(one, two) else False
    moved = [j for j in range(one.dim()) if one.shape[j] != two.shape[j]]
    if len(moved) != 1 or (one.shape[moved[0]], two.shape[moved[0]]) != (1, 2):
        return False
    d = moved[0]
    halves = two.unbind(d)
    return d if all(_close(one.squeeze(d), h) for h in halves) else False


def _close(a: Tensor, b: Tensor) -> bool:
    a, b = a.detach(), b.detach()
    if not (a.is_floating_point() or a.is_complex()):
        return torch.equal(a, b)
    return bool(torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5 * max(1.0, float(a.abs().max()) if a.numel() else 1.0)))


def _bump(h: Tensor) -> Tensor:
    """A fixed perturbation (the same in every pass) standing in for the noise."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(h.shape, generator=g, dtype=torch.float32).to(device=h.device, dtype=h.dtype)
    return h + z * (h.detach().float().std() if h.numel() > 1 else 1.0).to(h.dtype)


class DownstreamPlan:
    """Whether and how the perturbed passes of ``model`` at ``modalities`` recompute only
    what depends on the site: built once, checked on the first batch (:meth:`prepare`), then
    used per batch by :meth:`record` (the clean pass) and :meth:`replay` (each perturbed pass).

    ``reason`` is "" when replaying is on and says why otherwise; ``skipped`` counts the
    module calls taken from the clean pass (for benchmarks and tests)."""

    def __init__(self, model: nn.Module, modalities: Sequence[Modality], output: OutputSpec, *,
                 enabled: bool = True) -> None:
        self.model, self.modalities, self.output = model, list(modalities), output
        self.sites = {m.layer for m in self.modalities if m.layer is not None}
        self.reason = "" if enabled else "turned off"
        self.dims: dict[tuple, int | None] = {}
        self.keep: set[_Key] = set()
        self.prepared = not enabled
        self.skipped = 0

    @property
    def active(self) -> bool:
        return self.prepared and not self.reason

    def prepare(self, batch: Batch) -> None:
        """Find each output's batch dimension on the first example and check that a replayed
        pass gives the full pass's logits for a perturbation of every modality; on any failure
        replaying stays off, with the reason."""
        if self.prepared:
            return
        self.prepared = True
        if isinstance(self.model, torch.jit.ScriptModule):
            self.reason = "a TorchScript model's submodules cannot be replayed"
            return
        try:
            with torch.no_grad():
                self.reason = self._calibrate(batch.select(torch.arange(1)))
        except Exception as exc:  # any failure of the one-example check: full passes
            self.reason = f"the one-example check failed ({type(exc).__name__}: {exc})"

    def _calibrate(self, one: Batch) -> str:
        two = one.repeat(2)
        buffers = [b._version for b in self.model.buffers()]
        with _recording(self.model, two, self.sites, None) as second:
            call_model(self.model, two, self.output)
        if buffers != [b._version for b in self.model.buffers()]:
            return "a module changes its buffers in the forward pass (e.g. BatchNorm in training mode)"
        with _recording(self.model, one, self.sites, None) as first:
            call_model(self.model, one, self.output)
        for key, call in first.calls.items():
            other = second.calls.get(key)
            if call.output is None or other is None or other.output is None:
                continue
            pairs = dict(_leaves(other.output))
            for elem, t in _leaves(call.output):
                d = _batch_dim(t, pairs[elem]) if elem in pairs else False
                if d is not False:
                    self.dims[(key[0], key[1], elem)] = d
        _finish(first, self.dims)
        for m in self.modalities:
            with intervene(self.model, two, {m: _bump}) as b:
                full = call_model(self.model, b, self.output)
            with intervene(self.model, two, {m: _bump}) as b, _replaying(self.model, first, two, 2, self.dims, self.keep):
                replayed = call_model(self.model, b, self.output)
            if full.shape != replayed.shape or not _close(full, replayed):
                return f"a pass that reuses the clean values at {m.site} did not give the full pass's logits"
        return ""

    @contextmanager
    def record(self, batch: Batch, *, keep: bool = True) -> Iterator[Recording | None]:
        """Record the clean pass run inside (checking the plan on ``batch`` first, once);
        yields None when replaying is off or ``keep`` is False."""
        self.prepare(batch)
        if not (self.active and keep):
            yield None
            return
        with _recording(self.model, batch, self.sites, self.keep) as rec:
            yield rec
        _finish(rec, self.dims)

    @contextmanager
    def replay(self, rec: Recording | None, rows: Batch, k: int) -> Iterator[None]:
        """Replay ``rec`` in the pass run inside, on ``rows`` (the batch repeated k times,
        before the perturbation); a plain pass when ``rec`` is None."""
        if rec is None or not self.active:
            yield
            return
        used: set[_Key] = set()
        with _replaying(self.model, rec, rows, k, self.dims, used):
            yield
        self.skipped += len(used)


def _finish(rec: Recording, dims: dict) -> None:
    """Drop the outputs that cannot be replayed: changed in place after the call, or a tensor
    whose batch dimension is unknown or does not hold the batch."""
    for key, call in rec.calls.items():
        if call.output is None:
            continue
        leaves = list(_leaves(call.output))
        ok = tuple(t._version for _, t in leaves) == call.versions
        for elem, t in leaves:
            d = dims.get((key[0], key[1], elem), False)
            ok = ok and d is not False and (d is None or (d < t.dim() and t.shape[d] == rec.size))
        if not ok:
            call.output = None
