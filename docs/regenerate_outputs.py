"""Run the code blocks of README.md and docs/*.md, and write what they print into the pages.

A page shows a block's printed output in a ```text block right after the comment
``<!-- output -->`` (or ``<!-- output: exit=1 head=8 slow -->``): it is what the preceding
```python or ```bash block printed. Options: ``exit=N`` the exit code the command ends with
(default 0), ``head=N`` only the first N lines (then ``...``), ``slow`` regenerated here but
not compared by the test suite (a long command). Python blocks run as tests/test_readme.py
describes (one namespace per page, ``save-as`` / ``not-run`` markers); a ```bash block runs
only when an output block follows it, each ``biasscope ...`` / ``python ...`` command in a
fresh process with ``COLUMNS=100``, in the page's working folder.

    python docs/regenerate_outputs.py                 # rewrite every page's output blocks
    python docs/regenerate_outputs.py README.md       # only these pages
    python docs/regenerate_outputs.py --skip-slow     # keep the ``slow`` blocks as they are
    python docs/regenerate_outputs.py --check         # exit 1 when an output's words are stale

tests/test_readme.py runs the same blocks and compares each output block with the run, with
numbers and box-drawing lines normalised (:func:`normalise`).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import runpy
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COLUMNS = "100"

_BLOCK = re.compile(r"^```(python|bash|text)[^\n]*\n(.*?)^```[^\n]*\n", re.S | re.M)
_MARK = re.compile(r"<!--\s*(save-as|not-run|output)\s*:?\s*([^>]*?)\s*-->\s*$")
_NUMBER = re.compile(r"[-+]?\d[\d,]*(\.\d+)?([eE][-+]?\d+)?")
_BOX = re.compile(r"[─━│┃┄┈╭╮╰╯┏┓┗┛┡┩╇╈┳┻╋┼├┤┬┴═║╞╡╪]+")


@dataclass
class Block:
    """One fenced block of a page: its language, code, the marker before it, where it is."""

    lang: str
    code: str
    mark: str | None
    arg: str
    start: int  # offsets of the code inside the page text
    end: int
    line: int


@dataclass
class Output:
    """What a run printed for an output block, and what the page says it prints."""

    block: Block
    expected: str
    got: str = ""
    options: dict[str, str] = field(default_factory=dict)


def blocks(text: str) -> list[Block]:
    out = []
    for m in _BLOCK.finditer(text):
        before = [x for x in text[: m.start()].splitlines() if x.strip()]
        mark = _MARK.search(before[-1]) if before else None
        out.append(Block(m.group(1), m.group(2), *(mark.groups() if mark else (None, "")),
                         m.start(2), m.end(2), text.count("\n", 0, m.start()) + 1))
    return out


def output_options(arg: str) -> dict[str, str]:
    """``exit=1 head=8 slow`` -> {"exit": "1", "head": "8", "slow": ""}."""
    return dict((w.split("=", 1) + [""])[:2] for w in arg.split())


def normalise(text: str) -> str:
    """The words of an output: numbers as N, box-drawing runs and spacing collapsed."""
    text = _NUMBER.sub("N", _BOX.sub(" ", text))
    return " ".join(text.split())


def _commands(code: str) -> list[str]:
    joined = re.sub(r"\s*\\\n\s*", " ", code)
    return [c.strip() for c in joined.splitlines() if c.strip().startswith(("biasscope ", "python "))]


def run_bash(code: str, cwd: Path) -> tuple[str, int]:
    """Run each ``biasscope`` / ``python`` command of a bash block: (stdout + stderr, exit code)."""
    env = {**os.environ, "COLUMNS": COLUMNS, "PYTHONPATH": str(cwd), "NO_COLOR": "1", "TERM": "dumb",
           "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}
    printed, code_out = [], 0
    for command in _commands(code):
        argv = shlex.split(command)
        if argv[0] == "biasscope":
            argv = [sys.executable, "-m", "biasscope", *argv[1:]]
        elif argv[0] == "python":
            argv[0] = sys.executable
        done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        printed.append((done.stdout + done.stderr).replace(f"{cwd}{os.sep}", ""))
        code_out = done.returncode or code_out
    return "".join(printed), code_out


def run_page(page: Path, cwd: Path, *, skip_slow: bool = False) -> list[Output]:
    """Run the page's blocks in order in ``cwd``; return its output blocks with what ran."""
    text = page.read_text(encoding="utf-8")
    found = blocks(text)
    namespace: dict = {"__name__": "__readme__"}
    outputs: list[Output] = []
    last = ""
    for i, b in enumerate(found):
        where = f"{page.name}:{b.line}"
        follows = i + 1 < len(found) and found[i + 1].mark == "output"
        if b.lang == "text" and b.mark == "output":
            opts = output_options(b.arg)
            skipped = skip_slow and "slow" in opts
            outputs.append(Output(b, b.code, "" if skipped else _shape(last, opts), opts))
            continue
        if b.mark == "not-run":
            assert b.arg, f"{where}: say why a block does not run (<!-- not-run: why -->)"
            continue
        if b.lang == "text":
            continue
        if b.lang == "bash":
            if follows and not (skip_slow and "slow" in output_options(found[i + 1].arg)):
                last, status = run_bash(b.code, cwd)
                want = int(output_options(found[i + 1].arg).get("exit", "0"))
                if status != want:
                    raise AssertionError(f"{where}: exit {status}, the page says {want}:\n{last}")
            continue
        last = _run_python(b, cwd, namespace, where)
    return outputs


def _run_python(b: Block, cwd: Path, namespace: dict, where: str) -> str:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        if b.mark == "save-as":
            (cwd / b.arg).write_text(b.code, encoding="utf-8")
            if b.arg.endswith(".py"):
                argv = sys.argv
                sys.argv = [b.arg]
                try:
                    runpy.run_path(str(cwd / b.arg), run_name="__main__")
                finally:
                    sys.argv = argv
        else:
            exec(compile(b.code, where, "exec"), namespace)  # noqa: S102
    return buffer.getvalue()


def _shape(printed: str, opts: dict[str, str]) -> str:
    lines = [x.rstrip() for x in printed.rstrip("\n").splitlines()]
    if "head" in opts and len(lines) > int(opts["head"]):
        lines = lines[: int(opts["head"])] + ["..."]
    return "\n".join(lines) + "\n"


def rewrite(page: Path, outputs: list[Output]) -> bool:
    """Write what ran into the page's output blocks; whether the page changed."""
    text = page.read_text(encoding="utf-8")
    new = text
    for o in sorted(outputs, key=lambda o: o.block.start, reverse=True):
        if "slow" in o.options and not o.got.strip():
            continue
        new = new[: o.block.start] + o.got + new[o.block.end:]
    if new != text:
        page.write_text(new, encoding="utf-8")
    return new != text


def main(argv: list[str]) -> int:
    check, skip_slow = "--check" in argv, "--skip-slow" in argv
    names = [a for a in argv if not a.startswith("--")]
    stale = []
    for page in PAGES:
        if names and page.name not in names:
            continue
        if not any(b.mark == "output" for b in blocks(page.read_text(encoding="utf-8"))):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            here = os.getcwd()
            os.chdir(tmp)
            sys.path.insert(0, tmp)
            try:
                outputs = run_page(page, Path(tmp), skip_slow=skip_slow)
            finally:
                sys.path.remove(tmp)
                os.chdir(here)
        differs = (lambda o: normalise(o.got) != normalise(o.expected)) if check else (lambda o: o.got != o.expected)
        changed = [o for o in outputs if differs(o) and not (skip_slow and "slow" in o.options)]
        if changed and check:
            stale.append(page.name)
        elif changed:
            rewrite(page, outputs)
        print(f"{page.relative_to(ROOT)}: {len(outputs)} output block(s), {len(changed)} {'stale' if check else 'rewritten'}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
