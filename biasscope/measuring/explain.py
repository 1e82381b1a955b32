"""What inside a modality the model looks at: captum attributions, shown on the input.

For an example, the attribution is taken at the *input* that feeds the modality's audit site
when there is exactly one (a float input, or the output of the layer that embeds integer
token ids), so that it reads as pixels or words; else at the site itself. The representation
``h`` there is replaced by a variable and the model is run from it, so captum's
``IntegratedGradients`` on that variable is input IG or ``LayerIntegratedGradients`` at the
layer: attribution_i = (h_i - 0) * mean over the path of d logit_t / d h_i (Sundararajan, Taly
& Yan, ICML 2017), with a zero baseline and t the predicted class. ``saliency`` (|gradient|)
and ``input_x_gradient`` are offered by name; where gradients do not fit (integer sites such
as token ids given as an input), captum's ``FeatureAblation`` replaces each feature (group)
with 0 instead.

The result is shaped the way people read it: ``kind="image"`` (a (C, H, W) or (H, W) site: a
heatmap of |attribution| summed over channels, drawn over the picture at an input), ``kind=
"tokens"`` (a site carrying token ids: one signed score per token, summed over the embedding
dimension, decoded with a tokenizer when given), ``kind="vector"`` (one score per feature).
Everything is JSON-ready lists.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..runtime._batch import Batch, OutputSpec, call_model
from ..runtime._device import model_device
from ._perturbation import capture
from ..errors import ConfigError, DataLoadError
from ..results import Attribution
from .modality import Modality, intervene
from ..runtime.options import ATTRIBUTIONS

__all__ = ["KINDS", "Attribution", "choose_examples", "explain_examples", "input_site", "load_tokenizer"]

KINDS = ("image", "tokens", "vector")


def choose_examples(per_example: Mapping[str, Sequence[float]], n: int) -> list[tuple[int, str, str]]:
    """The ``n`` examples to explain: alternately the highest and the lowest summed
    functional entropy over modalities (distinct), each with the modality it depends on most.

    Args:
        per_example: modality name -> per-example functional entropy (audit order).
    Returns:
        ``(example index, modality name, "highest" | "lowest")`` triples, highest first.
    """
    names = list(per_example)
    if n <= 0 or not names:
        return []
    table = np.asarray([per_example[k] for k in names], dtype=np.float64)  # (M, N)
    table = np.where(np.isfinite(table), table, 0.0)
    order = np.argsort(-table.sum(0), kind="stable")
    picks: list[tuple[int, str]] = []
    top, bottom = 0, len(order) - 1
    while len(picks) < min(n, len(order)):
        if len(picks) % 2 == 0:
            picks.append((int(order[top]), "highest"))
            top += 1
        else:
            picks.append((int(order[bottom]), "lowest"))
            bottom -= 1
    return [(i, names[int(np.argmax(table[:, i]))], why) for i, why in picks]


def _locate(batches: Sequence[Batch], index: int) -> Batch:
    """The one-example batch of global example ``index``."""
    start = 0
    for batch in batches:
        if index < start + batch.size:
            return batch.select(torch.tensor([index - start]))
        start += batch.size
    raise DataLoadError(f"Example {index} is out of range: the audit set has {start} examples.")


def _token_ids(batch: Batch, h: Tensor) -> Tensor | None:
    """The integer input the site embeds: an integer (1, T) input matching h's (1, T, ...)."""
    if not h.is_floating_point():
        return h if h.dim() == 2 else None
    if h.dim() != 3:
        return None
    names = sorted(batch.input_names, key=lambda k: k != "input_ids")
    for key in names:
        v = batch.get_input(key)
        if isinstance(v, Tensor) and not v.is_floating_point() and tuple(v.shape) == tuple(h.shape[:2]):
            return v
    return None


def _kind(h: Tensor, ids: Tensor | None) -> str:
    feat = h.shape[1:]
    if ids is not None:
        return "tokens"
    if len(feat) in (2, 3) and min(feat[-2:]) >= 2:
        return "image"
    return "vector"


def _shape_values(kind: str, attr: Tensor) -> np.ndarray:
    """(*feat) attribution -> the array drawn for its kind."""
    a = attr.detach().double().cpu()
    if kind == "image":
        return (a.abs().sum(0) if a.dim() == 3 else a.abs()).numpy()
    if kind == "tokens":
        return (a.sum(dim=tuple(range(1, a.dim()))) if a.dim() > 1 else a).numpy()
    return a.reshape(-1).numpy()


def _feature_mask(kind: str, h: Tensor) -> Tensor:
    """Feature groups for ablation: per token, per image patch (an 8 x 8 grid), per feature."""
    feat = h.shape[1:]
    if kind == "tokens":
        pos = torch.arange(feat[0]).view(-1, *([1] * (len(feat) - 1)))
        return pos.expand(*feat)[None].contiguous()
    if kind == "image":
        hh, ww = feat[-2:]
        ph, pw = math.ceil(hh / 8), math.ceil(ww / 8)
        grid = (torch.arange(hh)[:, None] // ph) * 8 + torch.arange(ww)[None, :] // pw
        return grid.expand(*feat)[None].contiguous()
    return torch.arange(int(np.prod(feat))).view(1, *feat)


def _picture(h: Tensor) -> list[Any]:
    """One example's (C, H, W) or (H, W) input as H x W x 3 in [0, 1] (min-max scaled; one
    channel, or other than three, as grey), rounded for the JSON."""
    x = h[0].detach().double().cpu()
    if x.dim() == 3:
        x = x.permute(1, 2, 0) if x.shape[0] == 3 else x.mean(0, keepdim=True).permute(1, 2, 0).expand(-1, -1, 3)
    else:
        x = x[..., None].expand(-1, -1, 3)
    low, high = float(x.min()), float(x.max())
    x = (x - low) / (high - low) if high > low else torch.zeros_like(x)
    return np.round(x.numpy(), 3).tolist()


def _decode(ids: Tensor, tokenizer: Any | None) -> list[str]:
    values = [int(i) for i in ids.reshape(-1)]
    if tokenizer is None:
        return [str(i) for i in values]
    if hasattr(tokenizer, "convert_ids_to_tokens"):
        return [str(t) for t in tokenizer.convert_ids_to_tokens(values)]
    return [str(tokenizer.decode([i])) for i in values]


def _attribute(forward, h: Tensor, target: int, *, method: str, kind: str, steps: int):
    """captum on the site variable: (attribution shaped like h, convergence delta or None)."""
    from captum.attr import FeatureAblation, InputXGradient, IntegratedGradients, Saliency

    if method == "integrated_gradients":
        attr, delta = IntegratedGradients(forward).attribute(
            h, baselines=torch.zeros_like(h), target=target, n_steps=steps,
            internal_batch_size=steps, return_convergence_delta=True,
        )
        return attr[0], float(delta.abs().max())
    if method in ("saliency", "input_x_gradient"):
        x = h.detach().requires_grad_(True)
        if method == "saliency":
            return Saliency(forward).attribute(x, target=target, abs=True)[0], None
        return InputXGradient(forward).attribute(x, target=target)[0], None
    mask = _feature_mask(kind, h).to(h.device)
    attr = FeatureAblation(forward).attribute(h, baselines=0, target=target, feature_mask=mask)
    return attr[0], None


def load_tokenizer(name_or_path: str) -> Any:
    """A Hugging Face tokenizer from a local folder (or the local cache): nothing is downloaded."""
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise ConfigError(
            "Decoding token ids needs the optional dependency 'transformers': pip install biasscope[hf]."
        ) from exc
    # a name, not a folder: only a copy already in the local cache is used
    what = "no such folder" if not Path(name_or_path).is_dir() else ""
    try:
        return AutoTokenizer.from_pretrained(str(name_or_path), local_files_only=True)
    except Exception as exc:  # no tokenizer files, nothing cached
        what = what or f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        raise ConfigError(
            f"No tokenizer at {str(name_or_path)!r} ({what}). Give a folder written by "
            "tokenizer.save_pretrained(DIR) (biasscope downloads nothing), or none to show token ids."
        ) from exc


def input_site(model: nn.Module, batch: Batch, modality: Modality, output: OutputSpec = OutputSpec()) -> Modality:
    """The input that feeds ``modality``'s site, as a modality of the same name: a float input,
    or (for integer token ids) the layer that embeds them; the site itself when none or
    several inputs reach it, or the model takes no gradient."""
    if modality.input is not None:
        return modality
    from .modality import embedding_layer

    candidates = {}  # probe names of their own: a layer's hook counts its calls by name
    for i, key in enumerate(batch.input_names):
        value = batch.get_input(key)
        if not isinstance(value, Tensor) or value.dim() == 0 or value.shape[0] != batch.size:
            continue
        if value.is_floating_point():
            candidates[Modality(f"input {i}", input=key)] = value
        elif (layer := embedding_layer(model, batch, key)) is not None and layer != modality.layer:
            candidates[Modality(f"input {i}", layer=layer)] = None
    feeding = [m for m, grad in _reach(model, batch, modality, candidates, output).items() if grad]
    return replace(feeding[0], name=modality.name) if len(feeding) == 1 else modality


def _reach(model, batch, modality, candidates, output) -> dict[Modality, bool]:
    """Whether the site's representation has a nonzero gradient with respect to each candidate."""
    seen: dict[Modality, Tensor] = {}

    def keep(m: Modality):
        def fn(h: Tensor) -> Tensor:
            h = h.detach().requires_grad_(True) if h.is_floating_point() else h
            seen[m] = h
            return h

        return fn

    site: dict[str, Tensor] = {}
    transforms = {m: keep(m) for m in candidates}
    transforms[modality] = lambda h: site.setdefault("h", h)
    try:
        with torch.enable_grad(), intervene(model, batch, transforms) as b:
            call_model(model, b, output)
        h = site["h"]
        inputs = [seen[m] for m in candidates]
        grads = torch.autograd.grad(h.float().sum(), inputs, allow_unused=True) if h.requires_grad else [None] * len(inputs)
    except Exception:  # a site the hooks cannot pair with an input: attribute at the site
        return {}
    return {m: g is not None and bool(g.abs().sum() > 0) for m, g in zip(candidates, grads)}


def explain_examples(
    model: nn.Module,
    batches: Sequence[Batch],
    modality: Modality,
    examples: Sequence[int],
    *,
    output: OutputSpec = OutputSpec(),
    device: torch.device | str | None = None,
    method: str = "auto",
    steps: int = 32,
    tokenizer: Any | None = None,
    selected: Sequence[str | None] | None = None,
    on_input: bool = True,
) -> list[Attribution]:
    """Attribute the predicted class of each example in ``examples`` (indices over all
    batches, in order) to the features of ``modality``: at the input that feeds its site
    (:func:`input_site`) when ``on_input``, else at the site.

    Args:
        method: ``"auto"`` (integrated gradients, feature ablation at integer sites),
            ``"integrated_gradients"``, ``"saliency"``, ``"input_x_gradient"`` or
            ``"feature_ablation"``.
        steps: integration steps of integrated gradients.
        tokenizer: decodes token ids (``convert_ids_to_tokens`` or ``decode``); else ids.
        selected: per example, why it was chosen (stored in :attr:`Attribution.selected`).
    Returns:
        One :class:`Attribution` per example, in order.
    """
    if method not in ATTRIBUTIONS:
        raise ConfigError(f"method must be one of {', '.join(ATTRIBUTIONS)} (got {method!r}).")
    dev = torch.device(device) if device is not None else model_device(model)
    out = []
    reasons = list(selected) if selected is not None else [None] * len(examples)
    site, where = modality, (None if on_input else modality)
    for index, reason in zip(examples, reasons):
        batch = _locate(batches, int(index)).to(dev)
        modality = where = where or input_site(model, batch, site, output)  # one per modality
        with torch.no_grad():
            logits, reps = _capture_site(model, batch, modality, output)
        h = reps.detach()
        target = int(logits.argmax(dim=1)[0])
        ids = _token_ids(batch, h)
        kind = _kind(h, ids)
        how = method
        if how == "auto":
            how = "integrated_gradients" if h.is_floating_point() else "feature_ablation"
        if how != "feature_ablation" and not h.is_floating_point():
            raise ConfigError(
                f"Modality {modality.name!r}: {modality.site} holds integers, which take no "
                "gradient; use method='feature_ablation' or a layer site (the embeddings)."
            )

        def forward(x: Tensor, _batch: Batch = batch) -> Tensor:
            rows = _batch.repeat(x.shape[0])
            with intervene(model, rows, {modality: lambda _old, _x=x: _x}) as b:
                return call_model(model, b, output)

        attr, delta = _attribute(forward, h, target, method=how, kind=kind, steps=steps)
        out.append(
            Attribution(
                modality=modality.name, site=modality.site, example=int(index), target=target,
                method=how, kind=kind, values=_shape_values(kind, attr).tolist(),
                shape=list(h.shape[1:]), tokens=_decode(ids, tokenizer) if ids is not None else None,
                convergence_delta=delta, selected=reason,
                image=_picture(h) if kind == "image" and modality.input is not None else None,
            )
        )
    return out


def _capture_site(model: nn.Module, batch: Batch, modality: Modality, output: OutputSpec):
    """The logits and the modality's representation (integer inputs allowed)."""
    if modality.input is not None:
        return call_model(model, batch, output), batch.get_input(modality.input)
    logits, reps = capture(model, batch, [modality], output)
    return logits, reps[modality.name]
