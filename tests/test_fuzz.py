"""Fuzzing the command line: option values, data shapes and dtypes, corrupted files.

Every example asserts the documented contract: exit 0, 1 or 2 (never a crash); no
traceback; no generic "unexpected" message; no partial output (a folder with a complete
manifest, or nothing); inputs byte-identical. Examples are bounded and seeded
(``derandomize=True``); ``BIASSCOPE_FUZZ_EXAMPLES=500 pytest tests/test_fuzz.py`` is the
longer maintainer run (each strategy then draws that many examples);
``BIASSCOPE_FUZZ_SHOW=1 pytest -s tests/test_fuzz.py`` prints each example's exit code and
message.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from _project import write_project
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from biasscope.cli.main import app
from biasscope.report import read_manifest

runner = CliRunner()
_EXAMPLES = int(os.environ.get("BIASSCOPE_FUZZ_EXAMPLES", "0"))


def fuzz_settings(examples: int):
    return settings(
        max_examples=_EXAMPLES or examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


MODS = ["-m", "image=input:image", "-m", "text=input:text"]
FAST = ["--samples", "2", "--permutation-repeats", "0", "--no-shapley", "--no-tensorization", "--quiet"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A model (state dict + factory file, and TorchScript), its data, and an audit.json."""
    root = tmp_path_factory.mktemp("fuzz")
    net, image, text, label = write_project(root, n=16, module_name="fuzz_models")
    torch.jit.save(torch.jit.script(net), root / "scripted.pt")
    np.savez(root / "val.npz", image=image.numpy(), text=text.numpy(), label=label.numpy())
    res = runner.invoke(app, ["audit", str(root / "model.pt"), "--factory", f"{root / 'models.py'}:build",
                              "--data", str(root / "val.pt"), *MODS, *FAST, "--out", str(root / "audit")])
    assert res.exit_code == 0, res.output
    shutil.copy(root / "audit" / "audit.json", root / "audit.json")
    return root


def _digests(paths: list[Path]) -> dict[str, str]:
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*"))) if f.is_file()]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def check_run(args: list[str], out: Path, *, inputs: list[Path], allowed=(0, 1, 2)) -> int:
    """Run the CLI and assert the contract; returns the exit code."""
    before = _digests(inputs)
    res = runner.invoke(app, args)
    text = " ".join(res.output.split())
    assert res.exception is None or isinstance(res.exception, SystemExit), (args, repr(res.exception), text)
    assert res.exit_code in allowed, (args, res.exit_code, text)
    assert "Traceback" not in text, (args, text)
    # the generic message ("an unexpected KeyError while ..."), not a user's SyntaxError that says
    # "unexpected end of data" about their own file
    assert re.search(r"an unexpected \w+ while", text) is None, (args, text)
    if out.exists():  # complete (a manifest whose hashes match) or nothing at all
        assert res.exit_code in (0, 1) and read_manifest(out) is not None, (args, res.exit_code, text)
    else:
        assert res.exit_code not in (0, 1) or "--out" not in args, (args, text)
    assert _digests(inputs) == before, "an input was modified"
    if os.environ.get("BIASSCOPE_FUZZ_SHOW"):  # what the examples hit: pytest -s
        print("exit", res.exit_code, args[0], text[:100])
    return res.exit_code


def _base(project: Path, data: Path | None = None) -> list[str]:
    return ["audit", str(project / "model.pt"), "--factory", f"{project / 'models.py'}:build",
            "--data", str(data or project / "val.pt"), *MODS]


# -- option values -----------------------------------------------------------------------

ints = st.one_of(st.integers(-3, 4), st.sampled_from([0, 10**9, 2**63, -(2**63)]))
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([0.0, -1.0, 1e-12, 1e300]),
)
texts = st.one_of(st.sampled_from(["auto", "cpu", "meta", "cuda:x", "", "KL", "official", "fp16"]),
                  st.text(st.characters(codec="ascii", exclude_characters="\x00"), max_size=6))
OPTIONS = {
    "--samples": ints, "--scale": floats, "--seed": ints, "--device": texts,
    "--divergence": texts, "--permutation-repeats": ints, "--max-rows": st.one_of(ints.map(str), texts),
    "--batch-size": ints, "--limit": ints, "--precision": texts, "--label-key": texts,
    "--fail-on": texts, "--plotlyjs": texts,
}


@fuzz_settings(40)
@given(choice=st.dictionaries(st.sampled_from(sorted(OPTIONS)), st.none(), min_size=1, max_size=3).flatmap(
    lambda keys: st.fixed_dictionaries({k: OPTIONS[k] for k in keys})))
def test_option_values(project, choice):
    with tempfile.TemporaryDirectory(dir=project.parent) as scratch:
        out = Path(scratch) / "out"
        extra = [part for flag, value in choice.items() for part in (flag, str(value))]
        args = _base(project) + [*FAST, *extra, "--out", str(out)]
        # a valid tiny run costs: keep samples and repeats small where they are valid
        check_run(args, out, inputs=[project])


# -- data shapes and dtypes --------------------------------------------------------------

DTYPES = [torch.float32, torch.float64, torch.float16, torch.int64, torch.uint8, torch.bool]


@st.composite
def datasets(draw):
    n = draw(st.integers(0, 6))
    def tensor(width):
        shape = draw(st.sampled_from([(n, width), (n, width + 1), (n,), (n, width, 2), (n, 1)]))
        dtype = draw(st.sampled_from(DTYPES))
        return (torch.randn(shape) * 3).to(dtype)
    data = {"image": tensor(5), "text": tensor(3)}
    label = draw(st.sampled_from(["int", "bool", "float", "onehot", "wide", "missing", "negative"]))
    if label == "int":
        data["label"] = torch.randint(0, 4, (n,))
    elif label == "bool":
        data["label"] = torch.rand(n) > 0.5
    elif label == "float":
        data["label"] = torch.rand(n)
    elif label == "onehot":
        data["label"] = torch.eye(4)[torch.randint(0, 4, (n,))]
    elif label == "wide":
        data["label"] = torch.randint(0, 4, (n, 3))
    elif label == "negative":
        data["label"] = -torch.ones(n, dtype=torch.long)
    form = draw(st.sampled_from(["pt", "npz", "tuple"]))
    return data, form


@fuzz_settings(30)
@given(case=datasets())
def test_data_shapes_and_dtypes(project, case):
    data, form = case
    with tempfile.TemporaryDirectory(dir=project.parent) as scratch:
        scratch = Path(scratch)
        if form == "npz":
            path = scratch / "data.npz"
            np.savez(path, **{k: v.numpy() for k, v in data.items()})
        elif form == "tuple":
            path = scratch / "data.pt"
            torch.save(tuple(data.values()), path)
        else:
            path = scratch / "data.pt"
            torch.save(data, path)
        out = scratch / "out"
        args = _base(project, path) + [*FAST, "--out", str(out)]
        check_run(args, out, inputs=[project, path])


# -- corrupted files ---------------------------------------------------------------------

@st.composite
def corruptions(draw, size: int):
    kind = draw(st.sampled_from(["truncate", "bitflip", "wrong_format", "empty"]))
    if kind == "truncate":
        return kind, draw(st.integers(0, max(size - 1, 0)))
    if kind == "bitflip":
        return kind, draw(st.lists(st.integers(0, size * 8 - 1), min_size=1, max_size=4))
    return kind, draw(st.sampled_from(["json", "random", "npz", "zip"]))


def corrupt(data: bytes, how: tuple) -> bytes:
    kind, arg = how
    if kind == "truncate":
        return data[:arg]
    if kind == "bitflip":
        flipped = bytearray(data)
        for bit in arg:
            flipped[bit // 8] ^= 1 << (bit % 8)
        return bytes(flipped)
    if kind == "empty":
        return b""
    if arg == "json":
        return json.dumps({"image": [1, 2], "schema_version": 1}).encode()
    if arg == "random":
        return np.random.default_rng(len(data)).bytes(512)
    buf = io.BytesIO()
    if arg == "npz":
        np.savez(buf, x=np.arange(3))
    else:
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("archive/data.pkl", b"\x80\x04K\x01.")
    return buf.getvalue()


TARGETS = ["model.pt", "scripted.pt", "val.pt", "val.npz", "models.py", "audit.json"]


@fuzz_settings(40)
@given(target=st.sampled_from(TARGETS), seed=st.integers(0, 2**16), data=st.data())
def test_corrupted_files(project, target, seed, data):
    original = (project / target).read_bytes()
    how = data.draw(corruptions(len(original)))
    with tempfile.TemporaryDirectory(dir=project.parent) as scratch:
        scratch = Path(scratch)
        bad = scratch / target
        bad.write_bytes(corrupt(original, how))
        out = scratch / "out"
        factory = f"{project / 'models.py'}:build"
        if target == "audit.json":
            args = ["compare", str(project / "audit.json"), str(bad), "--out", str(scratch / "c.html")]
            code = check_run(args, scratch / "nothing", inputs=[project, bad])
            assert code != 0 or (scratch / "c.html").exists()
            assert code == 0 or not (scratch / "c.html").exists()
            return
        if target == "models.py":
            factory = f"{bad}:build"
        model = bad if target in ("model.pt", "scripted.pt") else project / "model.pt"
        if target == "scripted.pt":
            args = ["audit", str(model), "--data", str(project / "val.pt"), *MODS]
        else:
            data_path = bad if target.startswith("val") else project / "val.pt"
            args = ["audit", str(model), "--factory", factory, "--data", str(data_path), *MODS]
        check_run(args + [*FAST, "--out", str(out)], out, inputs=[project, bad])
