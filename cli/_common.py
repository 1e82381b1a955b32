"""What the commands share: consoles, error-to-exit-code mapping, progress display, and
resolving model/data/modality options from flags and biasscope.toml.

No torch (nor any library module that imports it) at module level: ``biasscope --help``
must start fast. The library is imported inside the functions that need it."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

from biasscope.errors import BiasscopeError, ConfigError
from biasscope.runtime.options import AuditOptions
from biasscope.runtime.terminal_text import plain

from ._messages import error_text

console = Console()
err_console = Console(stderr=True)

EXIT_OK, EXIT_GATE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

#: what the command is doing now, to name user code that exits or crashes
_stage = {"now": "starting"}

def set_stage(text: str) -> None:
    """Record what the command runs now (named if user code exits or crashes there)."""
    _stage["now"] = text


def shown(value: object) -> str:
    """A value from the user, a file or a model (a path, a name) as printed through rich:
    markup escaped, terminal control characters made visible."""
    return escape(plain(value))


def _print_error(text: str) -> None:
    err_console.print(f"[bold red]error:[/] {shown(text)}", highlight=False)


#: when the last Ctrl-C arrived: under the launcher, a Ctrl-C at the terminal reaches this
#: process and the launcher, which forwards it; the copy within _TWIN_S is the same press
_last_interrupt = {"at": -1e9}
_TWIN_S = 0.5


def _twin_interrupt() -> bool:
    import time

    now = time.monotonic()
    twin = now - _last_interrupt["at"] < _TWIN_S
    if not twin:
        _last_interrupt["at"] = now
    return twin


def _raise_interrupt(signum: int, frame: Any) -> None:
    if not _twin_interrupt():
        raise KeyboardInterrupt


def _quiet_interrupt(signum: int, frame: Any) -> None:
    """Ctrl-C outside a command's body (start-up, imports): no traceback, exit 130."""
    if _twin_interrupt():
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 (a closed stream: nothing to flush)
            pass
    os.write(2, b"interrupted\n")
    os._exit(EXIT_INTERRUPTED)


def quiet_interrupts() -> None:
    """Install the start-up Ctrl-C handler (main thread only)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _quiet_interrupt)


@contextmanager
def _interrupts_raise() -> Iterator[None]:
    """Within a command's body Ctrl-C raises KeyboardInterrupt (so fix can checkpoint)."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    if main:
        signal.signal(signal.SIGINT, _raise_interrupt)
    try:
        yield
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGINT, previous)


@contextmanager
def guarded(debug: bool) -> Iterator[None]:
    """Map what ends a command to an exit code: a BiasscopeError to its message and 2
    (``--debug`` shows the traceback instead); SystemExit from user code to 2 (never a
    success); Ctrl-C to 130."""
    set_stage("starting")
    try:
        with _interrupts_raise():
            yield
    except BiasscopeError as exc:
        if debug:
            raise
        _print_error(error_text(exc))
        raise typer.Exit(EXIT_USAGE) from None
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (typer.Exit, typer.Abort):
        raise
    except SystemExit as exc:  # the CLI exits with typer.Exit: this came from user code
        _print_error(
            f"User code called sys.exit({exc.code!r}) while {_stage['now']}; biasscope stops "
            "here with no output. A factory must return its object, and a model's forward "
            "must not exit."
        )
        raise typer.Exit(EXIT_USAGE) from None
    except OSError as exc:  # a full disk, a vanished folder, a permission changed mid-run
        if debug:
            raise
        where = f" {shown(exc.filename)!r}" if exc.filename else ""
        _print_error(
            f"The system refused a file operation{where} while {_stage['now']}: "
            f"{exc.strerror or exc}. Nothing of this run was kept; free disk space or fix the "
            "permissions and run the command again."
        )
        raise typer.Exit(EXIT_USAGE) from None
    except Exception as exc:  # not foreseen: still a message, not a traceback
        if debug:
            raise
        _print_error(
            f"an unexpected {type(exc).__name__} while {_stage['now']}: {error_text(exc)}\n"
            "biasscope did not foresee this input. Rerun with --debug for the traceback, and "
            "please report it with the model's and data's shapes."
        )
        raise typer.Exit(EXIT_USAGE) from None


class ProgressDisplay:
    """A rich progress bar per stage, fed by the library's ``(stage, done, total, info)``
    callback; silent when ``quiet`` or when stderr is not a terminal."""

    LABELS = {
        "baseline": "training baseline + reference",
        "scale": "noise scale",
        "entropy": "functional entropy",
        "permutation": "permutation score",
        "shapley": "modality Shapley",
        "probe": "label probe per modality",
        "explain": "attributions (captum)",
        "warnings": "checks before fixing",
        "memory": "memory: chunk halved",
    }

    def __init__(self, quiet: bool) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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

    def __call__(self, stage: str, done: int, total: int, info: Optional[dict] = None) -> None:
        if not self.enabled:
            return
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(shown(self.LABELS.get(stage, stage)), total=total)
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

    config: Any  # biasscope.config.ProjectConfig
    loaded: Any  # biasscope.io.loading.LoadedModel
    modalities: list[Any]
    output: Any  # biasscope.OutputSpec
    label_key: Optional[str]
    provenance: dict[str, Any] = field(default_factory=dict)


def read_config(path: Optional[Path]) -> Any:
    from biasscope.config import ProjectConfig, find_config, load_config

    found = find_config(path)
    return load_config(found) if found is not None else ProjectConfig()


def pick(flag: Any, config: Any, key: str, default: Any = None, table: Optional[dict] = None) -> Any:
    """A flag's value if given, else the config's (in ``table`` first, then top level), else the default."""
    if flag is not None and flag != [] and flag != ():
        return flag
    if table is not None and key in table:
        return table[key]
    return config.get(key, default)


@contextmanager
def working_folder_importable() -> Iterator[None]:
    """While factories and pickled models load, ``package.module`` resolves from the working
    folder (as with ``python -m``); sys.path is restored after."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def resolve_modalities(
    flags: list[str], config: Any, preset: Optional[str], module: Any, *, required: bool = True,
) -> Optional[list[Any]]:
    """The modalities from the flags, a preset, or the config; None when none is named and
    they are not ``required`` (the audit then takes them from the data's keys)."""
    from biasscope import Modality
    from biasscope.io.presets import preset_modalities

    if flags:
        return [Modality.parse(spec) for spec in flags]
    if preset:  # a --preset flag beats the config file, as every flag does
        return preset_modalities(preset, module)
    if config.modalities:
        return list(config.modalities)
    if config.get("preset"):
        return preset_modalities(config.get("preset"), module)
    if not required:
        return None
    raise ConfigError(
        "No modalities given: pass --modality NAME=input:KEY_OR_INDEX or NAME=layer:dotted.path "
        "(repeat it for each modality), a --preset, or a [modalities] table in biasscope.toml. "
        "`biasscope layers MODEL --data DATA` lists the layers you can name."
    )


def model_source(model: Optional[str], config: Any) -> str:
    path = pick(model, config, "model")
    if path is None:
        raise ConfigError(
            "No model given: pass the model file as the first argument, or set model = "
            "\"path\" in biasscope.toml."
        )
    return path


def load_inputs(
    *,
    model: Optional[str],
    config: Any,
    factory: Optional[str],
    kind: Optional[str],
    trust_pickle: bool,
    hf_class: Optional[str],
    modality: Optional[list[str]],
    preset: Optional[str],
    label_key: Optional[str],
    output_key: Optional[str],
    output_index: Optional[int],
    call: Optional[str] = None,
    adapter: Optional[str] = None,
    modalities_from_data: bool = False,
) -> Inputs:
    """Load the model (called as ``call`` or through ``adapter``) and resolve the modalities
    and the output spec; with ``modalities_from_data``, no modality named means None."""
    from biasscope import OutputSpec
    from biasscope.io.loading import load_model

    path = model_source(model, config)
    factory = pick(factory, config, "factory")
    set_stage(f"loading the model {path!r}" + (f" with the factory {factory!r} (--factory)" if factory else ""))
    with working_folder_importable():
        loaded = load_model(
            path,
            factory=factory,
            kind=pick(kind, config, "kind"),
            trust_pickle=bool(trust_pickle),  # from the command line only, never a file
            hf_class=pick(hf_class, config, "hf_class"),
        )
        loaded = _called_as(loaded, pick(call, config, "call", "kwargs"), pick(adapter, config, "adapter"))
    modalities = [] if modality is None else resolve_modalities(
        modality, config, preset, loaded.module, required=not modalities_from_data,
    )
    key = pick(label_key, config, "label_key", AuditOptions().label_key)
    preset_name = preset or config.get("preset")
    if preset_name:  # a preset carries where its models' logits are; flags and config win
        from biasscope.io.presets import preset_output

        output = preset_output(
            preset_name, key=pick(output_key, config, "output_key"),
            index=pick(output_index, config, "output_index"),
        )
    else:
        output = OutputSpec(
            key=pick(output_key, config, "output_key", OutputSpec().key),
            index=pick(output_index, config, "output_index"),
        )
    provenance = {
        "model": {"path": str(path), "sha256": loaded.sha256, "kind": loaded.kind},
    }
    if factory:
        provenance["model"]["factory"] = str(factory)
    return Inputs(config, loaded, modalities, output, None if key is None or key.lower() in ("", "none") else key, provenance)


def _called_as(loaded: Any, call: str, adapter: Optional[str]) -> Any:
    """The loaded model, re-wired when it is called as ``call`` or through ``adapter``."""
    from dataclasses import replace

    from biasscope.io.calling import call_as, load_adapter

    if call == "kwargs" and adapter is None:
        return loaded
    set_stage(f"importing the adapter {adapter!r} (--adapter)" if adapter else "re-wiring the model's call")
    function = load_adapter(adapter) if adapter else None
    return replace(loaded, module=call_as(loaded.module, call=call, adapter=function))


def input_paths(*sources: Any) -> list[str]:
    """The files a run reads (model, data, config, and the file of a ``file.py:function``
    factory): no output may be written over one."""
    paths = []
    for source in sources:
        if not source:
            continue
        text = str(source)
        target, sep, attr = text.rpartition(":")
        paths.append(target if sep and target.endswith(".py") and attr.isidentifier() else text)
    return paths


#: batches of this many examples when neither --batch-size nor the config sets it
DEFAULT_BATCH_SIZE = 64


def batch_size_setting(flag: Optional[int], config: Any, table: Optional[dict]) -> int:
    """The batch size of a run (flag > the command's table > top level > DEFAULT_BATCH_SIZE),
    checked: an integer >= 1."""
    size = pick(flag, config, "batch_size", DEFAULT_BATCH_SIZE, table)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1 (got {size!r}).", parameter="batch_size")
    return size


def read_data(source: Optional[str], *, label_key: Optional[str], batch_size: int, limit: Optional[int], what: str = "data") -> tuple[list, dict]:
    from biasscope.io.data import load_data
    from biasscope.report import data_provenance

    if source is None:
        raise ConfigError(
            f"No {what} given: pass --{what} FILE_OR_FACTORY, or set {what} = \"path\" in biasscope.toml."
        )
    set_stage(f"loading the {what} {str(source)!r} (--{what})")
    with working_folder_importable():
        batches = load_data(source, label_key=label_key, batch_size=batch_size, limit=limit)
    set_stage("running the model")
    return batches, data_provenance(source)


def version_string() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from biasscope import __version__

    try:
        torch_version = version("torch")
    except PackageNotFoundError:  # pragma: no cover
        torch_version = "not installed"
    return f"biasscope {__version__} (torch {torch_version}, python {sys.version.split()[0]})"
