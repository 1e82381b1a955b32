"""No code runs from a file unless trust_pickle=True: a malicious pickle in every container
biasscope opens (.pt, .ckpt, .pt2 sample inputs and weights, Hugging Face weights, data .pt)
is refused with a message saying so, and its payload (writing a marker file) never runs.

Each test first proves its payload is live: plain unpickling writes the marker."""

from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

import _loading_factories as fx  # noqa: E402

from biasscope.io.data import load_data  # noqa: E402
from biasscope.errors import DataLoadError, ModelLoadError  # noqa: E402
from biasscope.io.loading import load_model  # noqa: E402

FACTORY = "_loading_factories:make_net"


class Payload:
    """Unpickling this writes ``marker``: the stand-in for an attacker's code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def payload_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def assert_live(path_or_bytes: Path | bytes, marker: Path) -> None:
    """The payload runs under a full unpickle (so its absence later means it was refused)."""
    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    try:
        torch.load(src, weights_only=False)
    except Exception:
        pass
    assert marker.exists()
    marker.unlink()


def tensors() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 6, generator=g), torch.randn(4, 4, generator=g)


def rewrite_zip(src: Path, dest: Path, replace: dict[str, bytes], add: dict[str, bytes] = {}) -> None:
    """Copy a zip, replacing entries by their name inside the archive root."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zout:
        root = zin.namelist()[0].split("/", 1)[0]
        for info in zin.infolist():
            rest = info.filename.split("/", 1)[1]
            zout.writestr(info.filename, replace.get(rest, zin.read(info.filename)))
        for rest, data in add.items():
            zout.writestr(f"{root}/{rest}", data)


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "MARKER"


@pytest.fixture
def program(tmp_path: Path) -> Path:
    path = tmp_path / "clean.pt2"
    torch.export.save(torch.export.export(fx.make_net().eval(), tensors()), str(path))
    return path


def test_pickled_state_dict_and_checkpoint_refused(tmp_path: Path, marker: Path) -> None:
    weights = fx.make_net().state_dict()
    evil_pt = tmp_path / "evil.pt"
    torch.save({**weights, "_extra": Payload(marker)}, evil_pt)
    evil_ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": weights, "hyper_parameters": Payload(marker)}, evil_ckpt)
    for path in (evil_pt, evil_ckpt):
        assert_live(path, marker)
        for kind in (None, "state_dict"):
            with pytest.raises(ModelLoadError, match="pickled Python objects") as info:
                load_model(path, factory=FACTORY, kind=kind)
            assert "allow it with trust_pickle" in str(info.value)
            assert "references" in str(info.value) and "exec" in str(info.value)
            assert not marker.exists()
    with pytest.raises(ModelLoadError, match="as TorchScript"):
        load_model(evil_pt, kind="torchscript")  # a forced kind does not unpickle either
    assert not marker.exists()


def test_pt2_with_pickled_sample_inputs_refused(tmp_path: Path, marker: Path, program: Path) -> None:
    evil = tmp_path / "evil_inputs.pt2"
    sample = payload_bytes(((Payload(marker), *tensors()), {}))
    rewrite_zip(program, evil, {"data/sample_inputs/model.pt": sample})
    try:  # torch itself runs it: it falls back to weights_only=False for sample inputs
        torch.export.load(str(evil))
    except Exception:
        pass
    assert marker.exists()
    marker.unlink()
    with pytest.raises(ModelLoadError, match="sample inputs") as info:
        load_model(evil)
    assert "allow it with trust_pickle" in str(info.value)
    assert not marker.exists()


def test_pt2_with_use_pickle_weight_refused(tmp_path: Path, marker: Path, program: Path) -> None:
    with zipfile.ZipFile(program) as z:
        name = next(n for n in z.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(z.read(name))
    fqn, meta = next(iter(config["config"].items()))
    meta["use_pickle"] = True
    evil = tmp_path / "evil_weight.pt2"
    rewrite_zip(program, evil, {
        "data/weights/model_weights_config.json": json.dumps(config).encode(),
        f"data/weights/{meta['path_name']}": payload_bytes(Payload(marker)),
    })
    try:
        torch.export.load(str(evil))
    except Exception:
        pass
    assert marker.exists()
    marker.unlink()
    with pytest.raises(ModelLoadError, match=f"the weight {fqn!r}, stored as a pickle"):
        load_model(evil)
    assert not marker.exists()


def test_pt2_with_compiled_code_or_old_layout_refused(tmp_path: Path, program: Path) -> None:
    aoti = tmp_path / "aoti.pt2"
    rewrite_zip(program, aoti, {}, add={"data/aotinductor/model/model.so": b"\x7fELF"})
    with pytest.raises(ModelLoadError, match="AOTInductor compiled code"):
        load_model(aoti)
    old = tmp_path / "old.pt2"
    with zipfile.ZipFile(old, "w") as z:
        z.writestr("version", "8.0")
        z.writestr("serialized_exported_program.json", "{}")
        z.writestr("serialized_state_dict.pt", payload_bytes({}))
    with pytest.raises(ModelLoadError, match="older than torch 2.8"):
        load_model(old)


def test_clean_pt2_still_loads_and_trust_pickle_opts_in(tmp_path: Path, program: Path) -> None:
    x = tensors()
    loaded = load_model(program)
    torch.testing.assert_close(loaded.module(*x), fx.make_net().eval()(*x))
    # pickled sample inputs holding a harmless object: refused by default, loaded when trusted
    odd = tmp_path / "odd_inputs.pt2"
    rewrite_zip(program, odd, {"data/sample_inputs/model.pt": payload_bytes((fx.ArgsTuple(x), {}))})
    with pytest.raises(ModelLoadError, match="sample inputs"):
        load_model(odd)
    trusted = load_model(odd, trust_pickle=True)
    torch.testing.assert_close(trusted.module(*x), loaded.module(*x))


def test_hf_pickled_weights_refused(tmp_path: Path, marker: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        vocab_size=50, num_labels=3,
    )
    model = transformers.BertForSequenceClassification(config)
    hf_dir = tmp_path / "bert"
    hf_dir.mkdir()
    config.architectures = ["BertForSequenceClassification"]
    config.to_json_file(str(hf_dir / "config.json"))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save({**state, "evil": Payload(marker)}, hf_dir / "pytorch_model.bin")
    assert_live(hf_dir / "pytorch_model.bin", marker)
    with pytest.raises(ModelLoadError, match="hold pickled Python objects") as info:
        load_model(hf_dir)
    assert "save_pretrained" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("form", ["dict", "tuple"])
def test_pickled_data_file_refused(tmp_path: Path, marker: Path, form: str) -> None:
    path = tmp_path / "data.pt"
    x, y = torch.randn(5, 3), torch.arange(5)
    obj = {"x": x, "label": y, "meta": Payload(marker)} if form == "dict" else (x, Payload(marker), y)
    torch.save(obj, path)
    assert_live(path, marker)
    with pytest.raises(DataLoadError, match="pickled Python objects"):
        load_data(path)
    assert not marker.exists()


def _variant(program: Path, dest: Path, sample: bytes, how: str) -> Path:
    """``program`` with pickled sample inputs hidden the way ``how`` says; torch reads them."""
    with zipfile.ZipFile(program) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zout:
        root = zin.namelist()[0].split("/", 1)[0]
        for info in zin.infolist():
            rest = info.filename.split("/", 1)[1]
            data = zin.read(info.filename)
            if rest == "data/sample_inputs/model.pt":
                if how in ("data/Sample_Inputs/model.pt", "DATA/SAMPLE_INPUTS/MODEL.PT"):
                    zout.writestr(f"{root}/{how}", sample)
                    continue
                if how == "pickled twin first":
                    zout.writestr(info.filename, sample)
                if how == "case twin":
                    zout.writestr(f"{root}/data/sample_inputs/MODEL.pt", sample)
            zout.writestr(info.filename, data)
            if how == "second program" and rest in ("models/model.json", "data/weights/model_weights_config.json",
                                                    "data/constants/model_constants_config.json"):
                zout.writestr(f"{root}/{rest.replace('/model.json', '/other.json').replace('/model_', '/other_')}", data)
        if how == "second program":
            zout.writestr(f"{root}/data/sample_inputs/other.pt", sample)
        if how == "second root folder":
            zout.writestr("elsewhere/data/sample_inputs/model.pt", sample)
    return dest


PT2_HIDING = ["data/Sample_Inputs/model.pt", "DATA/SAMPLE_INPUTS/MODEL.PT", "pickled twin first",
              "case twin", "second program", "second root folder"]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("how", PT2_HIDING)
def test_pt2_pickles_hidden_by_case_duplicates_or_other_programs_refused(
    tmp_path: Path, marker: Path, program: Path, how: str
) -> None:
    """The check decides from the records torch resolves (case-insensitively, every program,
    duplicates), not from exact names."""
    evil = _variant(program, tmp_path / "evil.pt2", payload_bytes(((Payload(marker), *tensors()), {})), how)
    with pytest.raises(ModelLoadError, match="trust_pickle") as info:
        load_model(evil)
    assert "sample inputs" in str(info.value) or "resolve to" in str(info.value)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore")
def test_pt2_hidden_pickles_are_live(tmp_path: Path, marker: Path, program: Path) -> None:
    """torch itself runs the hidden payloads the test above refuses (the attacks are real)."""
    for how in ("data/Sample_Inputs/model.pt", "DATA/SAMPLE_INPUTS/MODEL.PT", "pickled twin first", "second program"):
        evil = _variant(program, tmp_path / "live.pt2", payload_bytes(((Payload(marker), *tensors()), {})), how)
        try:
            torch.export.load(str(evil))
        except Exception:
            pass
        assert marker.exists(), how
        marker.unlink()


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("how", ["case variant", "duplicate"])
def test_state_dict_zip_with_case_variant_or_duplicate_pickle_refused(tmp_path: Path, marker: Path, how: str) -> None:
    """A torch.save zip whose data.pkl is pickled code under another case, or twice: every
    record is read with weights_only=True, so the payload never runs (the file is refused,
    or the record torch picks is the clean one)."""
    clean = tmp_path / "clean.pt"
    torch.save(fx.make_net().state_dict(), clean)
    evil_pkl = tmp_path / "evil_src.pt"
    torch.save({"x": Payload(marker)}, evil_pkl)
    with zipfile.ZipFile(evil_pkl) as z:
        pkl = next(z.read(n) for n in z.namelist() if n.endswith("data.pkl"))
    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(clean) as zin, zipfile.ZipFile(evil, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            if info.filename.endswith("/data.pkl"):
                name = info.filename[: -len("data.pkl")] + ("DATA.PKL" if how == "case variant" else "data.pkl")
                zout.writestr(name, pkl)
                if how == "case variant":
                    continue
            zout.writestr(info.filename, zin.read(info.filename))
    try:
        loaded = load_model(evil, factory=FACTORY)
    except ModelLoadError:
        loaded = None
    assert not marker.exists()
    if loaded is not None:
        x = tensors()
        torch.testing.assert_close(loaded.module(*x), load_model(clean, factory=FACTORY).module(*x))


def _remote_code_folder(tmp_path: Path, marker: Path) -> Path:
    """A save_pretrained folder whose config's auto_map names a .py file of the folder;
    importing it writes ``marker``."""
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, vocab_size=50, num_labels=3)
    folder = tmp_path / "remote"
    transformers.BertForSequenceClassification(config).save_pretrained(str(folder))
    raw = json.loads((folder / "config.json").read_text())
    raw["auto_map"] = {"AutoModelForSequenceClassification": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(raw))
    (folder / "modeling_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('pwned')\n"
        "from transformers import BertForSequenceClassification as EvilModel\n"
    )
    return folder


@pytest.mark.parametrize("hf_class", [None, "AutoModelForSequenceClassification"])
def test_hf_auto_map_code_is_refused_and_nothing_reads_stdin(tmp_path: Path, marker: Path, hf_class) -> None:
    """transformers would ask on stdin (and run the folder's .py on "y"): biasscope always
    passes trust_remote_code and refuses an auto_map without trust_pickle, whatever stdin holds."""
    from typer.testing import CliRunner

    from biasscope.cli.main import app

    folder = _remote_code_folder(tmp_path, marker)
    with pytest.raises(ModelLoadError, match="auto_map") as info:
        load_model(folder, hf_class=hf_class)
    assert "trust_pickle" in str(info.value)
    res = CliRunner().invoke(app, ["layers", str(folder), "--data", "nosuch.pt"], input="y\ny\n")
    assert res.exit_code == 2 and "auto_map" in res.output and "--trust-pickle" in res.output, res.output
    assert "[y/N]" not in res.output and "trust_remote_code" not in res.output
    assert not marker.exists()
