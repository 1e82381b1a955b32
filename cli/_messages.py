"""Library messages as the command line shows them: parameter names as the flags that set
them (``max_steps`` -> ``--steps``), keyword settings as flags (``check_output=False`` ->
``--no-output-check``), quoted values (paths, names) never rewritten, a TorchScript trace cut
to its error line. A message about a file's keys (a biasscope.toml) is left as it is."""

from __future__ import annotations

import re

from biasscope.runtime.options import AuditOptions, FixOptions, flag_name

__all__ = ["error_text"]

#: parameter names (with an underscore, so never an English word) that library messages may
#: name; the CLI shows them as flags
_PARAMETERS = sorted(
    {n for cls in (AuditOptions, FixOptions) for n in cls.__dataclass_fields__ if "_" in n.strip("_")}
    | {"output_key", "output_index", "label_key", "trust_pickle", "hf_class", "batch_size",
       "fail_on", "min_share", "min_reliance_share", "max_drop_accuracy", "allow_different_data",
       "lambda_"},
    key=len, reverse=True,
)
_QUOTED = re.compile(r"""('[^'\s]*'|"[^"\s]*")""")  # a quoted path or name (an apostrophe is not a quote)
#: parameters whose command-line flag is not ``--`` + the name (``flag_name``)
_FLAGS = {"max_steps": "--steps", "check_output": "--no-output-check", "shapley": "--no-shapley",
          "probe": "--no-probe", "audit_samples": "--audit-samples"}


#: a Python keyword setting in a library message, as the command line says it
_SETTINGS = {"check_output=False": "--no-output-check", "guard=False": "--no-guard", "resume=False": "no --resume",
             "resume=True": "--resume", "amp=False": "no --amp", "amp=True": "--amp", "trust_pickle=True": "--trust-pickle",
             "shapley=False": "--no-shapley", "probe=False": "--no-probe"}


def _flag_spelling(name: str) -> str:
    return _FLAGS.get(name, flag_name(name))


_TS_TRACE = re.compile(r"\n?\s*Traceback of TorchScript.*?\n(?=[^\n]*\b\w+(Error|Exception)\b: )", re.S)


def error_text(exc: BaseException, *, debug: bool = False) -> str:
    """A library error's message with parameters shown as flags (``max_rows`` ->
    ``--max-rows``) and, unless ``debug``, a TorchScript interpreter trace cut to its error
    line."""
    text = str(exc)
    if getattr(exc, "source", None):  # about a file's keys (biasscope.toml): no flag names
        return text
    parameter = getattr(exc, "parameter", None)
    names = ([parameter] if parameter else []) + _PARAMETERS
    for setting, flag in _SETTINGS.items():
        text = re.sub(rf"`?(?<![\w-]){re.escape(setting)}`?", flag, text)
    parts = _QUOTED.split(text)  # quoted values (paths, names) are never rewritten
    for name in dict.fromkeys(names):
        pattern = re.compile(rf"(?<![\w\-/\\.]){re.escape(name)}(?![\w/\\])")
        parts = [p if i % 2 else pattern.sub(_flag_spelling(name), p) for i, p in enumerate(parts)]
    text = "".join(parts)
    if not debug and "Traceback of TorchScript" in text:
        text = _TS_TRACE.sub(" ", text)
        text = re.sub(r"\n\s*Traceback of TorchScript.*", " (rerun with --debug for the TorchScript trace)", text, flags=re.S)
    return text


