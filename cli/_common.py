"""What the commands share: consoles, error-to-exit-code mapping, progress display, and
resolving model/data/modality options from flags and biasscope.toml."""

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from biasscope import BiasscopeError, Modality, OutputSpec
from biasscope.config import ProjectConfig, find_config, load_config
from biasscope.errors import ConfigError
from biasscope._sources import fingerprint
from biasscope.data import load_data
from biasscope.loading import LoadedModel, load_model

console = Console()
err_console = Console(stderr=True)

EXIT_OK, EXIT_GATE, EXIT_USAGE = 0, 1, 2


@contextmanager
def guarded(debug: bool) -> Iterator[None]:
    """Turn a BiasscopeError into a one-paragraph message and exit code 2 (``--debug``
    shows the traceback instead); Ctrl-C exits 130."""
    try:
        yield
    except BiasscopeError as exc:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(EXIT_USAGE) from None
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:  # not foreseen: still a message, not a traceback
        if debug:
            raise
        err_console.print(
            f"[bold red]error:[/] an unexpected {type(exc).__name__}: {escape(str(exc))}\n"
            "biasscope did not foresee this input. Rerun with --debug for the traceback, and "
            "please report it with the model's and data's shapes.",
            highlight=False,
        )
        raise typer.Exit(EXIT_USAGE) from None


class ProgressDisplay:
    """A rich progress bar per stage, fed by the library's ``(stage, done, total)`` callback;
    silent when ``quiet`` or when stderr is not a terminal."""

    LABELS = {
        "baseline": "training baseline + reference",
        "scale": "noise scale",
        "entropy": "functional entropy",
        "permutation": "permutation score",
        "shapley": "modality Shapley",
    }

    def __init__(self, quiet: bool) -> None:
        self.enabled = not quiet and err_console.is_terminal
        self.progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        )
        self.tasks: dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(self.LABELS.get(stage, stage), total=total)
        self.progress.update(self.tasks[stage], completed=done, total=total)

    def __enter__(self) -> "ProgressDisplay":
        if self.enabled:
            self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.progress.stop()


@dataclass
class Inputs:
    """The resolved inputs of a command: the model, data and modalities to use."""

    config: ProjectConfig
    loaded: LoadedModel
    modalities: list[Modality]
    output: OutputSpec
    label_key: Optional[str]
    provenance: dict[str, Any] = field(default_factory=dict)


def read_config(path: Optional[Path]) -> ProjectConfig:
    found = find_config(path)
    return load_config(found) if found is not None else ProjectConfig()


def pick(flag: Any, config: ProjectConfig, key: str, default: Any = None, table: Optional[dict] = None) -> Any:
    """A flag's value if given, else the config's (in ``table`` first, then top level), else the default."""
    if flag is not None and flag != [] and flag != ():
        return flag
    if table is not None and key in table:
        return table[key]
    return config.get(key, default)


def resolve_modalities(flags: list[str], config: ProjectConfig, preset: Optional[str], module: Any) -> list[Modality]:
    from biasscope.presets import preset_modalities

    if flags:
        return [Modality.parse(spec) for spec in flags]
    if preset:  # a --preset flag beats the config file, as every flag does
        return preset_modalities(preset, module)
    if config.modalities:
        return list(config.modalities)
    if config.get("preset"):
        return preset_modalities(config.get("preset"), module)
    raise ConfigError(
        "No modalities given: pass --modality NAME=input:KEY_OR_INDEX or NAME=layer:dotted.path "
        "(repeat it for each modality), a --preset, or a [modalities] table in biasscope.toml. "
        "`biasscope layers MODEL --data DATA` lists the layers you can name."
    )


def load_inputs(
    *,
    model: Optional[str],
    config: ProjectConfig,
    factory: Optional[str],
    kind: Optional[str],
    trust_pickle: bool,
    hf_class: Optional[str],
    modality: Optional[list[str]],
    preset: Optional[str],
    label_key: Optional[str],
    output_key: Optional[str],
    output_index: Optional[int],
) -> Inputs:
    path = pick(model, config, "model")
    if path is None:
        raise ConfigError(
            "No model given: pass the model file as the first argument, or set model = "
            "\"path\" in biasscope.toml."
        )
    loaded = load_model(
        path,
        factory=pick(factory, config, "factory"),
        kind=pick(kind, config, "kind"),
        trust_pickle=bool(trust_pickle or config.get("trust_pickle", False)),
        hf_class=pick(hf_class, config, "hf_class"),
    )
    modalities = [] if modality is None else resolve_modalities(modality, config, preset, loaded.module)
    key = pick(label_key, config, "label_key", "label")
    preset_name = preset or config.get("preset")
    if preset_name:  # a preset carries where its models' logits are; flags and config win
        from biasscope.presets import preset_output

        output = preset_output(
            preset_name, key=pick(output_key, config, "output_key"),
            index=pick(output_index, config, "output_index"),
        )
    else:
        output = OutputSpec(
            key=pick(output_key, config, "output_key", "logits"),
            index=pick(output_index, config, "output_index"),
        )
    provenance = {
        "model": {"path": str(path), "sha256": loaded.sha256, "kind": loaded.kind},
    }
    return Inputs(config, loaded, modalities, output, None if key in ("", "none") else key, provenance)


def read_data(source: Optional[str], *, label_key: Optional[str], batch_size: int, limit: Optional[int], what: str = "data") -> tuple[list, dict]:
    if source is None:
        raise ConfigError(
            f"No {what} given: pass --{what} FILE_OR_FACTORY, or set {what} = \"path\" in biasscope.toml."
        )
    batches = load_data(source, label_key=label_key, batch_size=batch_size, limit=limit)
    info = {"path": str(source)}
    if Path(source).exists():
        info["sha256"] = fingerprint(source)
    return batches, info


def version_string() -> str:
    import torch

    from biasscope import __version__

    return f"biasscope {__version__} (torch {torch.__version__}, python {sys.version.split()[0]})"
