"""The documentation runs and says what the code does.

- Every ```python block of README.md and docs/*.md runs. The blocks of one page share one
  namespace and run in order, in a temporary working folder. A block right after a line
  ``<!-- save-as: NAME.py -->`` is written to that file and run as a script (``python NAME.py``,
  as the page tells the reader to); one right after ``<!-- not-run: why -->`` is skipped.
  A ```text block right after ``<!-- output -->`` is what the block before it prints (a
  ```bash block's commands then run too), compared with numbers normalised; the runner is
  docs/regenerate_outputs.py, which rewrites those blocks.
- Every flag of every command appears in docs/cli.md, in its command's section, and the default
  written there for an option of AuditOptions / FixOptions is the one biasscope.runtime.options gives.
- Every relative link of the README and the docs points at a file that exists.
"""

from __future__ import annotations

import re
import sys
from dataclasses import fields
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: pages whose blocks need an optional extra (skipped without it)
NEEDS = {"huggingface.md": "transformers"}

_FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)
_MARK = re.compile(r"<!--\s*(save-as|not-run)\s*:?\s*([^>]*?)\s*-->\s*$")


def python_blocks(text: str) -> list[tuple[int, str, str | None, str | None]]:
    """(line, code, marker, argument) of each ```python block; marker is the
    ``save-as``/``not-run`` comment on the last non-empty line before the fence, if any."""
    blocks = []
    for match in _FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = [x for x in text[: match.start()].splitlines() if x.strip()]
        mark = _MARK.search(before[-1]) if before else None
        blocks.append((line, match.group(1), *(mark.groups() if mark else (None, None))))
    return blocks


def _param(page: Path) -> object:
    return pytest.param(page, id=page.name)


def test_block_parser_sees_markers() -> None:
    text = "x\n```python\na = 1\n```\n<!-- not-run: needs a GPU -->\n```python\nb\n```\n" \
           "<!-- save-as: m.py -->\n\n```python\nc = 2\n```\n"
    got = [(code, mark, arg) for _, code, mark, arg in python_blocks(text)]
    assert got == [("a = 1\n", None, None), ("b\n", "not-run", "needs a GPU"), ("c = 2\n", "save-as", "m.py")]


def _outputs_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("regenerate_outputs", ROOT / "docs" / "regenerate_outputs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


DOCS = _outputs_module()


@pytest.mark.parametrize("page", [_param(p) for p in PAGES if python_blocks(p.read_text())])
def test_python_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every block runs, and every printed output the page shows (``<!-- output -->``) is
    what the run printed, numbers aside (docs/regenerate_outputs.py rewrites them)."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    if page.name in NEEDS:
        pytest.importorskip(NEEDS[page.name])
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # scripts import the files earlier blocks saved
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    for out in DOCS.run_page(page, tmp_path, skip_slow=True):
        if "slow" in out.options:
            continue
        assert DOCS.normalise(out.got) == DOCS.normalise(out.expected), (
            f"{page.name}:{out.block.line}: the page shows an output the run no longer prints; "
            f"run `python docs/regenerate_outputs.py`. It printed:\n{out.got}"
        )


def test_output_normalisation_keeps_words_and_drops_numbers() -> None:
    a = "╭──────╮\n│ share 0.845, 12 rows │\n╰──────╯\n"
    b = "╭────────╮\n│ share 0.9,   3 rows   │\n╰────────╯\n"
    assert DOCS.normalise(a) == DOCS.normalise(b) == "share N, N rows"
    assert DOCS.normalise("ignores text") != DOCS.normalise("ignores image")
    page = "x\n```bash\nbiasscope audit m.pt \\\n  -m a=input:a\n```\n<!-- output: exit=1 head=3 slow -->\n```text\nold\n```\n"
    found = DOCS.blocks(page)
    assert [b.lang for b in found] == ["bash", "text"] and found[1].code == "old\n"
    assert DOCS.output_options(found[1].arg) == {"exit": "1", "head": "3", "slow": ""}
    assert DOCS._commands(found[0].code) == ["biasscope audit m.pt -m a=input:a"]


# --- docs/cli.md against the commands -------------------------------------------------------

#: flags whose option field is spelled differently
_FIELD_OF = {"--lambda": "lambda_", "--steps": "max_steps", "--no-shapley": "shapley"}
_ROW = re.compile(r"^\|\s*`(--[a-z0-9-]+)`[^|]*\|\s*([^|]*?)\s*\|", re.M)


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## ", text, flags=re.M)
    return {p.split("\n", 1)[0].strip(): p for p in parts[1:]}


def _commands() -> dict:
    import typer.main

    from biasscope.cli.main import app

    group = typer.main.get_command(app)
    return dict(group.commands)


def test_every_flag_is_documented() -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    sections = _sections(text)
    shared = sections["Options every model-loading command shares"]
    missing = []
    for name, command in _commands().items():
        assert name in sections, f"docs/cli.md has no section '## {name}'"
        for param in command.params:
            for opt in param.opts + param.secondary_opts:
                if opt.startswith("--") and f"`{opt}" not in sections[name] + shared:
                    missing.append(f"{name} {opt}")
    assert not missing, f"flags missing from docs/cli.md: {missing}"


def _written(value: object) -> set[str]:
    if isinstance(value, float):
        return {f"{value:g}", repr(value)}
    return {str(value)}


@pytest.mark.parametrize("section, cls_name", [("audit", "AuditOptions"), ("fix", "FixOptions")])
def test_documented_defaults_are_the_options(section: str, cls_name: str) -> None:
    import biasscope.runtime.options as options

    defaults = {f.name: f.default for f in fields(getattr(options, cls_name))}
    shared = _sections((ROOT / "docs" / "cli.md").read_text())["Options every model-loading command shares"]
    text = _sections((ROOT / "docs" / "cli.md").read_text())[section] + shared
    checked = 0
    for flag, default in _ROW.findall(text):
        name = _FIELD_OF.get(flag, flag[2:].replace("-", "_"))
        value = defaults.get(name)
        if flag == "--audit-samples":
            value = options.AuditOptions().samples
        if isinstance(value, bool) or value is None:
            continue
        assert default.strip("`") in _written(value), f"docs/cli.md {section} {flag}: {default!r}, code {value!r}"
        checked += 1
    assert checked >= 5  # the tables were found


# --- links and the public names --------------------------------------------------------------

_LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_exist(page: Path) -> None:
    broken = [
        target for target, _ in _LINK.findall(page.read_text())
        if "://" not in target and not (page.parent / target).exists()
    ]
    assert not broken, f"{page.name} links to missing files: {broken}"


def test_python_api_lists_the_public_names() -> None:
    import biasscope

    text = (ROOT / "docs" / "python-api.md").read_text()
    listed = set(re.findall(r"`(\w+)`", text.split("## Public names", 1)[1].split("Modules for more")[0]))
    assert listed == set(biasscope.__all__) - {"__version__"}
