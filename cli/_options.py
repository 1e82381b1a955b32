"""Typer options shared by the commands that load a model and data. Defaults shown in the
help come from :mod:`biasscope.runtime.options` (torch-free), never written here."""

from pathlib import Path
from typing import Any, List, Optional

import typer

from biasscope.runtime.options import AuditOptions

_AUDIT = AuditOptions()


def default(value: Any) -> str:
    """The ``[default: X]`` text of a help line (escaped for rich markup)."""
    return f"\\[default: {value}]"


Model = typer.Argument(None, help="Model file or Hugging Face directory (default: model in biasscope.toml).", show_default=False)
Factory = typer.Option(None, "--factory", help="package.module:function or path/file.py:function that builds the module (state dicts, .ckpt).")
Kind = typer.Option(None, "--kind", help="Force the model format: torchscript, export, state_dict, pickle, hf.")
TrustPickle = typer.Option(False, "--trust-pickle", help="Trust code in files: allow a pickled module, pickled .pt2 inputs or weights, and a Hugging Face auto_map (runs code from the file; never read from biasscope.toml).")
HfClass = typer.Option(None, "--hf-class", help="transformers class for a Hugging Face directory, e.g. ViltForQuestionAnswering.")
Modalities = typer.Option([], "--modality", "-m", help="NAME=input:KEY_OR_INDEX (a.b for nested dicts) or NAME=layer:dotted.path (repeat per modality; audit without it: the data's keys that the model's forward takes).")
Preset = typer.Option(None, "--preset", help="Fill the modality layers for a known architecture, e.g. vilt, visualbert, clip, lxmert (instead of --modality; an unknown name lists them).")
Call = typer.Option(None, "--call", help="How the model takes a batch: kwargs (model(**inputs); a tuple: model(*inputs)), positional (model(*inputs.values())) or batch (model(inputs)) \\[default: kwargs].")
Adapter = typer.Option(None, "--adapter", help="package.module:function or file.py:function; adapter(forward, inputs) calls the model on a batch's inputs any other way.")
Data = typer.Option(None, "--data", "-d", help=".pt / .npz / .safetensors file, or package.module:function / file.py:function.")
LabelKey = typer.Option(None, "--label-key", help=f"Key of the label in dict batches {default(_AUDIT.label_key)}; none (any case) for unlabelled data.")
BatchSize = typer.Option(None, "--batch-size", help="Batch size \\[default: 64].")
Limit = typer.Option(None, "--limit", help="Use at most N examples.")
OutputKey = typer.Option(None, "--output-key", help="Entry of a dict/ModelOutput that holds the logits \\[default: logits].")
OutputIndex = typer.Option(None, "--output-index", help="Element of a tuple output that holds the logits \\[default: 0].")
Device = typer.Option(None, "--device", help=f"auto (CUDA when available), cpu, cuda, cuda:N {default(_AUDIT.device)}.")
Seed = typer.Option(None, "--seed", help=f"Seed of every random draw {default(_AUDIT.seed)}.")
Config = typer.Option(None, "--config", help="biasscope.toml to read (default: ./biasscope.toml when present).")
Quiet = typer.Option(False, "--quiet", "-q", help="No progress bars.")
Debug = typer.Option(False, "--debug", help="Show the traceback of errors.")

__all__ = ["Path", "List", "Optional", "default"]
