"""``biasscope layers``: the module tree with output shapes, to choose modality layers."""

from pathlib import Path
from typing import Any, Optional

from . import _options as o
from ._common import console, guarded, load_inputs, pick, read_config, read_data, shown

_COLUMNS = ("type", "output shape", "dtype", "params", "can be a modality?")


def _verdict(tensor: Any) -> str:
    if tensor.perturbable:
        return "[green]yes[/]" + (f" (batch on dim {tensor.batch_dim})" if tensor.batch_dim else "")
    return f"[dim]no: {shown(tensor.problem)}[/]"


def _rows(table: list) -> list[tuple[str, ...]]:
    """One row per layer; a layer that returns several tensors gets one more row per tensor,
    its path written as --modality takes it (PATH#ELEMENT[@DIM])."""
    rows = []
    for info in table:
        params = f"{info.n_params:,}"
        if info.output_shape is None:
            rows.append((shown(info.path), shown(info.type), "did not run", "", params, "[dim]no: did not run[/]"))
        elif len(info.tensors) == 1:
            t = info.tensors[0]
            rows.append((shown(info.spec(t)), shown(info.type), shown(t.shape), shown(t.dtype), params, _verdict(t)))
        else:
            rows.append((shown(info.path), shown(info.type), f"{len(info.tensors)} tensors:", "", params, ""))
            rows.extend((shown(info.spec(t)), "", shown(t.shape), shown(t.dtype), "", _verdict(t)) for t in info.tensors)
    return rows


def layers_command(
    model: Optional[str] = o.Model,
    data: Optional[str] = o.Data,
    factory: Optional[str] = o.Factory,
    kind: Optional[str] = o.Kind,
    trust_pickle: bool = o.TrustPickle,
    hf_class: Optional[str] = o.HfClass,
    call: Optional[str] = o.Call,
    adapter: Optional[str] = o.Adapter,
    label_key: Optional[str] = o.LabelKey,
    output_key: Optional[str] = o.OutputKey,
    output_index: Optional[int] = o.OutputIndex,
    config: Optional[Path] = o.Config,
    debug: bool = o.Debug,
) -> None:
    """List MODEL's submodules with their output shapes on one batch of DATA, and which can be
    a modality (float, with a batch dimension, run once, reaching the logits); name one with
    --modality NAME=layer:PATH."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from biasscope.io.layers import layer_table
    from biasscope.measuring.modality import is_compiled

    with guarded(debug):
        cfg = read_config(config)
        inputs = load_inputs(
            model=model, config=cfg, factory=factory, kind=kind, trust_pickle=trust_pickle,
            hf_class=hf_class, modality=None, preset=None, label_key=label_key,
            output_key=output_key, output_index=output_index, call=call, adapter=adapter,
        )
        batches, _ = read_data(pick(data, cfg, "data"), label_key=inputs.label_key, batch_size=8, limit=8)
        info = layer_table(inputs.loaded.module, batches[0], label_key=inputs.label_key, output=inputs.output)
        rows = _rows(info)
        table = Table(title="modules (name one with --modality NAME=layer:PATH, as written in the path column)")
        # a path is what --modality takes: never wrapped nor cut; other columns give way
        width = max(Text.from_markup(r[0]).cell_len for r in rows)
        table.add_column("path", no_wrap=True, overflow="ignore", min_width=width)
        for col in _COLUMNS:
            table.add_column(col, overflow="fold")
        for row in rows:
            table.add_row(*row)
        # a terminal narrower than the table gets it whole, never a squeezed path column
        cells = [_COLUMNS, *(r[1:] for r in rows)]
        rest = sum(max(Text.from_markup(str(c[j])).cell_len for c in cells) + 3 for j in range(len(_COLUMNS)))
        Console(width=max(console.width, width + 4 + rest)).print(table, crop=False)
        if is_compiled(inputs.loaded.module):
            console.print(
                f"[yellow]note:[/] a {inputs.loaded.kind} model runs a compiled graph: its layers "
                "cannot be hooked, so perturb inputs (NAME=input:KEY), or load the state dict "
                "with --factory to name layers.", highlight=False,
            )
        elif all(r.reaches_output is None for r in info[1:]):
            console.print(
                "[yellow]note:[/] no logits found in the model's output, so whether each layer "
                "reaches them is unknown; pass --output-key or --output-index.", highlight=False,
            )
