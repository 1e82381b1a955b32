"""``biasscope layers``: the module tree with output shapes, to choose modality layers."""

from pathlib import Path
from typing import Optional

from rich.table import Table


from . import _options as o
from ._common import console, guarded, load_inputs, pick, read_config, read_data
from .main import app


@app.command("layers")
def layers_command(
    model: Optional[str] = o.Model,
    data: Optional[str] = o.Data,
    factory: Optional[str] = o.Factory,
    kind: Optional[str] = o.Kind,
    trust_pickle: bool = o.TrustPickle,
    hf_class: Optional[str] = o.HfClass,
    label_key: Optional[str] = o.LabelKey,
    config: Optional[Path] = o.Config,
    debug: bool = o.Debug,
) -> None:
    """List MODEL's submodules with their output shapes on one batch of DATA; name one with
    --modality NAME=layer:PATH."""
    with guarded(debug):
        import torch
        from biasscope.layers import layer_table
        from biasscope.loading import ExportedModule
        cfg = read_config(config)
        inputs = load_inputs(
            model=model, config=cfg, factory=factory, kind=kind, trust_pickle=trust_pickle,
            hf_class=hf_class, modality=None, preset=None, label_key=label_key,
            output_key=None, output_index=None,
        )
        batches, _ = read_data(pick(data, cfg, "data"), label_key=inputs.label_key, batch_size=8, limit=8)
        table = Table(title="modules (name one with --modality NAME=layer:PATH, or layer:PATH#ELEMENT for one of several outputs)")
        table.add_column("path", overflow="fold")  # never cut: it is what --modality takes
        for col in ("type", "output shape", "dtype", "params"):
            table.add_column(col)
        for info in layer_table(inputs.loaded.module, batches[0], label_key=inputs.label_key):
            shape = "did not run" if info.output_shape is None else str(tuple(info.output_shape))
            if info.elements:  # several tensors: name one with layer:PATH#ELEMENT
                shape = "  ".join(f"#{k} {s}" for k, s in info.elements)
            table.add_row(info.path, info.type, shape, info.dtype or "", f"{info.n_params:,}")
        console.print(table)
        if isinstance(inputs.loaded.module, (torch.jit.ScriptModule, ExportedModule)):
            console.print(
                f"[yellow]note:[/] a {inputs.loaded.kind} model runs a compiled graph: its layers "
                "cannot be hooked, so perturb inputs (NAME=input:KEY), or load the state dict "
                "with --factory to name layers.", highlight=False,
            )
