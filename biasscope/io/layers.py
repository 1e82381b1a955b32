"""The layer table: every submodule of a model with the tensors it returns on one batch, where
their batch dimension is, and whether they reach the logits, so a user can choose the
submodules whose outputs are the modality representations."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..runtime._batch import Batch, OutputSpec, logits_from_output, run_model, split_batch
from ..errors import BiasscopeError
from ..measuring.modality import Modality, tensor_elements

__all__ = ["LayerInfo", "TensorInfo", "layer_table", "reachable_layers"]

_Key = int | str | None


@dataclass(frozen=True)
class TensorInfo:
    """One tensor a layer returns (``element`` None: the layer returns just this tensor).

    Attributes:
        batch_dim: the dimension that follows the batch (0: batch-first), None when none does
            (e.g. position embeddings of shape (1, tokens, hidden)).
        reaches_output: whether the logits depend on it (a gradient that is not all zero),
            None when that could not be checked (integer values, no logits found).
        problem: why it cannot be a modality site, "" when it can.
    """

    element: _Key
    shape: tuple[int, ...]
    dtype: str
    batch_dim: int | None
    reaches_output: bool | None
    problem: str = ""

    @property
    def perturbable(self) -> bool:
        return not self.problem

    def spec(self, path: str) -> str:
        """What ``--modality NAME=layer:...`` takes for this tensor: ``path[#element][@dim]``."""
        element = f"#{self.element}" if self.element is not None else ""
        return f"{path}{element}" + (f"@{self.batch_dim}" if self.batch_dim else "")


@dataclass(frozen=True)
class LayerInfo:
    """One submodule: its dotted path (``""`` is the model itself), class name, output shape
    and dtype on the batch (None when it did not run), parameter count (its subtree), the
    tensors it returns (``tensors``; ``elements`` lists them when there are several) and how
    many times it ran in the forward pass."""

    path: str
    type: str
    output_shape: tuple[int, ...] | None
    dtype: str | None
    n_params: int
    elements: tuple[tuple[int | str, tuple[int, ...]], ...] = ()  # when it returns several tensors
    tensors: tuple[TensorInfo, ...] = ()
    runs: int = 0

    @property
    def reaches_output(self) -> bool | None:
        """True when any of its tensors reaches the logits, False when none does, None when
        that is unknown (it did not run, or no tensor could be checked)."""
        known = [t.reaches_output for t in self.tensors if t.reaches_output is not None]
        return any(known) if known else None

    @property
    def perturbable(self) -> bool:
        return any(t.perturbable for t in self.tensors)

    def spec(self, tensor: TensorInfo) -> str:
        """What ``--modality NAME=layer:...`` takes for one of its tensors: the path, with
        ``#element`` when the layer returns several and ``@dim`` when the batch is not first."""
        if len(self.tensors) == 1:
            return TensorInfo(None, tensor.shape, tensor.dtype, tensor.batch_dim, None).spec(self.path)
        return tensor.spec(self.path)


def _type_name(module: nn.Module) -> str:
    # TorchScript modules keep the scripted class name in original_name
    name = getattr(module, "original_name", None)
    return name if isinstance(name, str) and name else type(module).__name__


def _n_params(module: nn.Module) -> int:
    try:
        return sum(p.numel() for p in module.parameters())
    except Exception:  # some scripted containers cannot enumerate parameters
        return 0


@dataclass
class _Pass:
    """What one forward pass saw: each module's tensors (first call), its call count, the
    order of first calls, the zero probes added to float outputs, and the model's output."""

    outputs: dict[int, list[tuple[_Key, Tensor]]] = field(default_factory=dict)
    runs: dict[int, int] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)
    probes: dict[tuple[int, _Key], Tensor] = field(default_factory=dict)
    result: Any = None


def _with_probes(output: Any, add: Callable[[_Key, Tensor], Tensor]) -> Any:
    """``output`` with ``add(key, t)`` in place of each of its top-level float tensors."""
    if isinstance(output, Tensor):
        return add(None, output) if output.is_floating_point() else output
    if isinstance(output, (tuple, list)):
        items = [add(i, v) if isinstance(v, Tensor) and v.is_floating_point() else v for i, v in enumerate(output)]
        return type(output)(*items) if hasattr(output, "_fields") else type(output)(items)
    for key, value in tensor_elements(output):
        if value.is_floating_point():
            output[key] = add(key, value)
    return output


def _forward(modules: list[tuple[str, nn.Module]], model: nn.Module, batch: Batch, *, probe: bool) -> _Pass:
    """Run ``model`` once with a hook on every submodule; with ``probe``, each float output
    ``h`` becomes ``h + p`` for a zero ``p`` that requires grad (d logits / d p = d logits / d h)."""
    seen, handles = _Pass(), []

    def make_hook(i: int):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            seen.runs[i] = seen.runs.get(i, 0) + 1
            if i in seen.outputs:  # a module called twice reports its first call
                return None
            seen.order.append(i)
            if probe:
                def add(key: _Key, t: Tensor) -> Tensor:
                    p = seen.probes[(i, key)] = torch.zeros_like(t, requires_grad=True)
                    return t + p

                try:
                    output = _with_probes(output, add)
                except Exception:  # an output type that cannot be rebuilt: left unprobed
                    seen.probes = {k: v for k, v in seen.probes.items() if k[0] != i}
            seen.outputs[i] = tensor_elements(output)
            return output if probe else None

        return hook

    try:
        for i, (_, module) in enumerate(modules):
            if i == 0:
                continue  # the model's own output is read from the call itself
            try:
                handles.append(module.register_forward_hook(make_hook(i)))
            except Exception:  # TorchScript submodules do not take Python hooks
                pass
        with torch.set_grad_enabled(probe):
            seen.result = run_model(model, batch)
    finally:
        for h in handles:
            h.remove()
    seen.outputs[0] = tensor_elements(seen.result)
    seen.runs[0] = 1
    return seen


def _weighted_logits(result: Any, output: OutputSpec) -> Tensor | None:
    """A fixed random combination of the logits (a plain sum vanishes for centred logits);
    None when the output holds no logits at ``output``."""
    try:
        logits = logits_from_output(result, output)
    except BiasscopeError:
        return None
    weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(0), dtype=logits.dtype)
    return (logits * weights.to(logits.device)).sum()


def _reached(target: Tensor | None, probes: dict[tuple[int, _Key], Tensor]) -> dict[tuple[int, _Key], bool]:
    """Which probes ``target`` depends on (a gradient that is not None nor all zero)."""
    if target is None:
        return {}
    if not target.requires_grad:
        return dict.fromkeys(probes, False)
    keys = list(probes)
    try:
        grads = torch.autograd.grad(target, [probes[k] for k in keys], allow_unused=True, retain_graph=True)
    except RuntimeError:  # e.g. an in-place change of a saved tensor: unknown, not unreachable
        return {}
    return {k: g is not None and bool(g.ne(0).any()) for k, g in zip(keys, grads)}


def _batch_dims(modules: list[tuple[str, nn.Module]], model: nn.Module, batch: Batch, first: _Pass) -> dict[tuple[int, _Key], int | None]:
    """The batch dimension of every tensor: the one dimension that shrinks from B to B - 1 on
    a batch of B - 1 rows (the first dimension of size B when that pass cannot run)."""
    n = batch.size
    smaller: dict[tuple[int, _Key], tuple[int, ...]] = {}
    if n >= 2:
        try:
            with torch.no_grad():
                second = _forward(modules, model, batch.select(torch.arange(n - 1)), probe=False)
            smaller = {(i, k): tuple(t.shape) for i, found in second.outputs.items() for k, t in found}
        except Exception:  # a model that needs its full batch: fall back to sizes
            smaller = {}
    dims: dict[tuple[int, _Key], int | None] = {}
    for i, found in first.outputs.items():
        for key, t in found:
            shape, other = tuple(t.shape), smaller.get((i, key))
            if other is not None and len(other) == len(shape):
                moved = [d for d in range(len(shape)) if shape[d] == n and other[d] == n - 1]
            else:
                moved = [d for d in range(len(shape)) if shape[d] == n]
            dims[(i, key)] = moved[0] if moved else None
    return dims


def _problem(path: str, t: Tensor, batch_dim: int | None, runs: int, reaches: bool | None) -> str:
    if path == "":
        return "the model's output"
    if not t.is_floating_point():
        return f"{str(t.dtype).removeprefix('torch.')} values cannot take Gaussian noise"
    if batch_dim is None:
        return "no dimension follows the batch"
    if runs > 1:
        return f"runs {runs} times per forward pass"
    if reaches is False:
        return "does not reach the logits"
    return ""


def _analyse(model: nn.Module, batch: Batch, output: OutputSpec) -> tuple[list[LayerInfo], _Pass, list[tuple[str, nn.Module]]]:
    modules = list(model.named_modules())
    try:
        seen = _forward(modules, model, batch, probe=True)
    except BiasscopeError:  # a model that breaks on probed outputs (raises again on bad inputs)
        seen = _forward(modules, model, batch, probe=False)
    reached = _reached(_weighted_logits(seen.result, output), seen.probes)
    dims = _batch_dims(modules, model, batch, seen)
    table = []
    for i, (path, module) in enumerate(modules):
        found = seen.outputs.get(i) or []
        runs = seen.runs.get(i, 0)
        tensors = tuple(
            TensorInfo(
                element=key, shape=tuple(int(d) for d in t.shape),
                dtype=str(t.dtype).removeprefix("torch."), batch_dim=dims.get((i, key)),
                reaches_output=True if i == 0 else reached.get((i, key)),
                problem=_problem(path, t, dims.get((i, key)), runs, True if i == 0 else reached.get((i, key))),
            )
            for key, t in found
        )
        out = found[0][1] if found else None
        table.append(
            LayerInfo(
                path=path, type=_type_name(module),
                output_shape=tuple(int(d) for d in out.shape) if out is not None else None,
                dtype=str(out.dtype).removeprefix("torch.") if out is not None else None,
                n_params=_n_params(module),
                elements=tuple((k, tuple(int(d) for d in t.shape)) for k, t in found) if len(found) > 1 else (),
                tensors=tensors, runs=runs,
            )
        )
    return table, seen, modules


def layer_table(
    model: nn.Module, batch: Any, *, label_key: str | None = "label", output: OutputSpec | None = None
) -> list[LayerInfo]:
    """List every named submodule of ``model`` (``model.named_modules()`` order, the model
    itself first with path ``""``) with the tensors it returns on one batch.

    One forward and backward pass (zero probes on every output, the gradient of a fixed random
    combination of the logits) says which outputs reach the logits; a second forward pass on
    one row fewer says which dimension of each output is the batch.

    Args:
        model: the model (its train/eval mode is left as it is).
        batch: a dict batch, a tuple batch (label last) or a :class:`~biasscope.runtime._batch.Batch`.
        label_key: the label's key in a dict batch (None: the batch has no label).
        output: where the logits are in the model's output (default: ``OutputSpec()``); when
            none are found there, ``reaches_output`` is None.
    """
    return _analyse(model, split_batch(batch, label_key=label_key), output or OutputSpec())[0]


def _upstream(seen: _Pass, index: int, element: _Key) -> set[tuple[int, _Key]]:
    """The module outputs that output ``element`` of module ``index`` depends on."""
    found = dict(seen.outputs.get(index) or [])
    if element is None and len(found) == 1:
        element = next(iter(found))
    t = found.get(element)
    if t is None or not t.is_floating_point():
        return set()
    weights = torch.randn(t.shape, generator=torch.Generator().manual_seed(1), dtype=t.dtype)
    probes = {k: p for k, p in seen.probes.items() if k[0] != index}
    reached = _reached((t * weights.to(t.device)).sum(), probes)
    return {k for k, hit in reached.items() if hit}


def _downstream(modules: list[tuple[str, nn.Module]], model: nn.Module, batch: Batch, key: str | int, seen: _Pass) -> set[tuple[int, _Key]]:
    """The module outputs that change when input ``key`` changes (noise on a float input,
    its rows rolled by one otherwise)."""
    x = batch.get_input(key)
    if not isinstance(x, Tensor):
        return set()
    if x.is_floating_point():
        g = torch.Generator().manual_seed(0)
        noise = torch.randn(x.shape, generator=g, dtype=x.dtype).to(x.device)
        changed = x + noise * (x.detach().std() if x.numel() > 1 else 1.0).clamp_min(1e-3)
    else:
        changed = x.roll(1, 0)
    with torch.no_grad():
        other = _forward(modules, model, batch.with_input(key, changed), probe=False)
    moved = set()
    for i, found in seen.outputs.items():
        after = dict(other.outputs.get(i) or [])
        for k, t in found:
            u = after.get(k)
            if u is None or u.shape != t.shape or not torch.equal(u.detach(), t.detach()):
                moved.add((i, k))
    return moved


def reachable_layers(
    model: nn.Module,
    batch: Any,
    *,
    label_key: str | None = "label",
    output: OutputSpec | None = None,
    carrying: Modality | None = None,
) -> list[str]:
    """The layer sites a modality can be perturbed at whose output reaches the logits, as
    :attr:`Modality.site` writes them (``"layer:bert.encoder"``, ``"layer:rnn#1@1"``).

    Args:
        model, batch, label_key, output: as for :func:`layer_table`.
        carrying: keep only the sites that carry this modality: for a layer modality, the
            layers its output depends on, nearest first (e.g. for an unreachable
            ``bert.pooler``, the encoder layers before it); for an input modality, the
            layers whose output changes with that input, in the order they run.

    Returns:
        Site strings; model order without ``carrying``.
    """
    b = split_batch(batch, label_key=label_key)
    table, seen, modules = _analyse(model, b, output or OutputSpec())
    keep: set[tuple[int, _Key]] = set()
    if carrying is None:
        order: list[int] | range = range(len(table))
    elif carrying.layer is not None:
        index = next((i for i, (p, _) in enumerate(modules) if p == carrying.layer), None)
        keep = _upstream(seen, index, carrying.element) if index is not None else set()
        order = list(reversed(seen.order))
    else:
        keep = _downstream(modules, model, b, carrying.input, seen) if carrying.input in b.input_names else set()
        order = seen.order
    return [
        "layer:" + table[i].spec(t)
        for i in order
        for t in table[i].tensors
        if t.perturbable and t.reaches_output and (carrying is None or (i, t.element) in keep)
    ]
