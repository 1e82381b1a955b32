"""Typer options shared by the commands that load a model and data."""

from pathlib import Path
from typing import List, Optional

import typer

from biasscope.presets import PRESETS

Model = typer.Argument(None, help="Model file or Hugging Face directory (default: model in biasscope.toml).", show_default=False)
Factory = typer.Option(None, "--factory", help="package.module:function or path/file.py:function that builds the module (state dicts, .ckpt).")
Kind = typer.Option(None, "--kind", help="Force the model format: torchscript, export, state_dict, pickle, hf.")
TrustPickle = typer.Option(False, "--trust-pickle", help="Allow loading a fully pickled module (runs code from the file).")
HfClass = typer.Option(None, "--hf-class", help="transformers class for a Hugging Face directory, e.g. ViltForQuestionAnswering.")
Modalities = typer.Option([], "--modality", "-m", help="NAME=input:KEY_OR_INDEX or NAME=layer:dotted.path (repeat per modality).")
Preset = typer.Option(None, "--preset", help=f"Fill the modality layers for a known architecture: {', '.join(PRESETS)} (instead of --modality).")
Data = typer.Option(None, "--data", "-d", help=".pt / .npz / .safetensors file, or package.module:function / file.py:function.")
LabelKey = typer.Option(None, "--label-key", help="Key of the label in dict batches \\[default: label]; 'none' for unlabelled data.")
BatchSize = typer.Option(None, "--batch-size", help="Batch size \\[default: 64].")
Limit = typer.Option(None, "--limit", help="Use at most N examples.")
OutputKey = typer.Option(None, "--output-key", help="Entry of a dict/ModelOutput that holds the logits \\[default: logits].")
OutputIndex = typer.Option(None, "--output-index", help="Element of a tuple output that holds the logits \\[default: 0].")
Device = typer.Option(None, "--device", help="auto (CUDA when available), cpu, cuda, cuda:N \\[default: auto].")
Seed = typer.Option(None, "--seed", help="Seed of every random draw \\[default: 0].")
Config = typer.Option(None, "--config", help="biasscope.toml to read (default: ./biasscope.toml when present).")
Quiet = typer.Option(False, "--quiet", "-q", help="No progress bars.")
Debug = typer.Option(False, "--debug", help="Show the traceback of errors.")

__all__ = ["Path", "List", "Optional"]
