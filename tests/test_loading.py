"""biasscope.io.loading: every model route round-trips, every bad input names its fix."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

import _loading_factories as fx  # noqa: E402

from biasscope.errors import DataLoadError, ModelLoadError  # noqa: E402
from biasscope.io._sources import fingerprint  # noqa: E402
from biasscope.io.loading import LoadedModel, load_model, save_model  # noqa: E402

FACTORY = "_loading_factories:make_net"
FACTORY_FILE = str(Path(fx.__file__).resolve()) + ":make_net"


# torch.jit.script/save in the tests themselves warn that TorchScript is deprecated
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*:DeprecationWarning")


def inputs(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return torch.randn(n, 6, generator=g), torch.randn(n, 4, generator=g)


def trained() -> nn.Module:
    """A TwoBranch whose weights differ from a fresh factory's."""
    torch.manual_seed(3)
    m = fx.TwoBranch()
    m.eval()
    return m


def perturb(module: nn.Module) -> None:
    """Stand-in for fine-tuning: shift every parameter."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.25)


def out(module: nn.Module, x: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
    with torch.no_grad():
        return module(*(x or inputs()))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def roundtrip(loaded: LoadedModel, tmp_path: Path, name: str, **kw) -> LoadedModel:
    """Perturb the loaded module, save it, load it back; check the outputs and the input."""
    before = digest(loaded.path) if loaded.path.is_file() else fingerprint(loaded.path)
    perturb(loaded.module)
    expected = out(loaded.module)
    dest = save_model(loaded, loaded.module, tmp_path / name, **kw)
    again = load_model(dest, factory=loaded.factory, trust_pickle=loaded.kind == "pickle")
    assert again.kind == loaded.kind
    torch.testing.assert_close(out(again.module), expected)
    assert not again.module.training
    after = digest(loaded.path) if loaded.path.is_file() else fingerprint(loaded.path)
    assert after == before
    assert [p.name for p in dest.parent.iterdir() if ".tmp" in p.name] == []
    return again


# --------------------------------------------------------------------------- model routes


def test_torchscript_roundtrip(tmp_path: Path) -> None:
    model = trained()
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    loaded = load_model(path)
    assert loaded.kind == "torchscript"
    assert loaded.sha256 == digest(path) == fingerprint(path)
    assert loaded.factory is None
    assert not loaded.module.training
    torch.testing.assert_close(out(loaded.module), out(model))
    roundtrip(loaded, tmp_path, "tuned.pt")


def test_export_roundtrip_uses_stored_example_inputs(tmp_path: Path) -> None:
    model = trained()
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(model, inputs()), str(path))
    loaded = load_model(path)
    assert loaded.kind == "export"
    assert not loaded.module.training
    torch.testing.assert_close(out(loaded.module), out(model))
    loaded.module.train()  # biasscope's fix loop calls train()/eval(): they must not raise
    assert loaded.module.training
    loaded.module.eval()
    roundtrip(loaded, tmp_path, "tuned.pt2")


def test_export_save_with_explicit_inputs_and_plain_module(tmp_path: Path) -> None:
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(trained(), inputs()), str(path))
    loaded = load_model(path)
    fresh = fx.make_net()
    fresh.train()
    dest = save_model(loaded, fresh, tmp_path / "fresh.pt2", example_inputs=inputs())
    assert fresh.training  # the caller's mode is restored after exporting in eval mode
    torch.testing.assert_close(out(load_model(dest).module), out(fresh.eval()))


def test_state_dict_with_module_factory(tmp_path: Path) -> None:
    model = trained()
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    loaded = load_model(path, factory=FACTORY)
    assert (loaded.kind, loaded.factory, loaded.wrapper_key, loaded.key_prefix) == (
        "state_dict", FACTORY, None, "")
    torch.testing.assert_close(out(loaded.module), out(model))
    again = roundtrip(loaded, tmp_path, "tuned.pt")
    saved = torch.load(again.path, weights_only=True)
    assert list(saved) == list(model.state_dict())


def test_state_dict_with_file_factory(tmp_path: Path) -> None:
    model = trained()
    path = tmp_path / "weights.pth"
    torch.save(model.state_dict(), path)
    # a factory file that imports a sibling module: its directory is importable while it runs
    (tmp_path / "arch_sibling.py").write_text(
        "import torch\nfrom torch import nn\n"
        "class Small(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(6, 3)\n"
        "    def forward(self, x):\n        return self.fc(x)\n"
    )
    (tmp_path / "build.py").write_text(
        "from arch_sibling import Small\ndef make():\n    return Small()\n"
    )
    small = nn.Linear(6, 3)
    small_path = tmp_path / "small.pt"
    torch.save({"fc." + k: v for k, v in small.state_dict().items()}, small_path)
    loaded_small = load_model(small_path, factory=f"{tmp_path / 'build.py'}:make")
    x = inputs()[0]
    torch.testing.assert_close(loaded_small.module(x), small(x))

    loaded = load_model(path, factory=FACTORY_FILE)
    assert loaded.kind == "state_dict"
    torch.testing.assert_close(out(loaded.module), out(model))
    roundtrip(loaded, tmp_path, "tuned.pth")


def test_lightning_checkpoint_prefix_and_structure(tmp_path: Path) -> None:
    model = trained()
    ckpt = {
        "epoch": 3,
        "state_dict": {
            **{"model." + k: v for k, v in model.state_dict().items()},
            "loss_fn.pos_weight": torch.tensor([2.0]),  # a LightningModule buffer outside the model
        },
        "optimizer_states": [{"lr": 0.1}],
        "pytorch-lightning_version": "2.2.0",
    }
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)
    loaded = load_model(path, factory=FACTORY)
    assert (loaded.wrapper_key, loaded.key_prefix) == ("state_dict", "model.")
    torch.testing.assert_close(out(loaded.module), out(model))
    again = roundtrip(loaded, tmp_path, "tuned.ckpt")
    saved = torch.load(again.path, weights_only=True)
    assert saved["epoch"] == 3
    assert saved["optimizer_states"] == [{"lr": 0.1}]
    assert saved["pytorch-lightning_version"] == "2.2.0"
    assert list(saved["state_dict"]) == list(ckpt["state_dict"])
    torch.testing.assert_close(saved["state_dict"]["loss_fn.pos_weight"], torch.tensor([2.0]))
    torch.testing.assert_close(
        saved["state_dict"]["model.head.weight"], loaded.module.head.weight.detach()
    )


def test_subset_prefix_prefers_shortest_and_checks_shapes(tmp_path: Path) -> None:
    model, ema = trained(), fx.make_net()
    path = tmp_path / "ema.ckpt"
    state = {
        **{"ema_model." + k: v for k, v in ema.state_dict().items()},
        **{"model." + k: v for k, v in model.state_dict().items()},
    }
    torch.save({"state_dict": state}, path)
    loaded = load_model(path, factory=FACTORY)
    assert loaded.key_prefix == "model."
    torch.testing.assert_close(out(loaded.module), out(model))


@pytest.mark.parametrize("wrapper", ["model_state_dict", "model", "module"])
def test_checkpoint_wrappers_and_dataparallel_prefix(tmp_path: Path, wrapper: str) -> None:
    model = trained()
    path = tmp_path / "ckpt.pt"
    state = {"module." + k: v for k, v in model.state_dict().items()}
    torch.save({wrapper: state, "step": 9}, path)
    loaded = load_model(path, factory=FACTORY)
    assert (loaded.wrapper_key, loaded.key_prefix) == (wrapper, "module.")
    torch.testing.assert_close(out(loaded.module), out(model))


def test_safetensors_state_dict(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = trained()
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = load_model(path, factory=FACTORY)
    assert (loaded.kind, loaded.container) == ("state_dict", "safetensors")
    torch.testing.assert_close(out(loaded.module), out(model))
    roundtrip(loaded, tmp_path, "tuned.safetensors")


def test_pickled_module_needs_trust(tmp_path: Path) -> None:
    model = trained()
    path = tmp_path / "full.pt"
    torch.save(model, path)
    with pytest.raises(ModelLoadError, match="allow it with trust_pickle") as info:
        load_model(path)
    assert "arbitrary code" in str(info.value)
    assert "TwoBranch" in str(info.value)
    with pytest.raises(ModelLoadError, match="allow it with trust_pickle"):
        load_model(path, kind="pickle")
    loaded = load_model(path, trust_pickle=True)
    assert loaded.kind == "pickle"
    assert isinstance(loaded.module, fx.TwoBranch)
    torch.testing.assert_close(out(loaded.module), out(model))
    roundtrip(loaded, tmp_path, "tuned.pt")


def test_trust_pickle_on_a_state_dict_still_needs_factory(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(trained().state_dict(), path)
    with pytest.raises(ModelLoadError, match="factory="):
        load_model(path, trust_pickle=True)


def _tiny_bert(tmp_path: Path) -> tuple[nn.Module, Path]:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        vocab_size=50, num_labels=3,
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()
    path = tmp_path / "bert"
    model.save_pretrained(str(path))
    return model, path


def test_hf_directory_roundtrip(tmp_path: Path) -> None:
    model, path = _tiny_bert(tmp_path)
    ids = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(0))
    before = fingerprint(path)
    loaded = load_model(path)
    assert (loaded.kind, loaded.hf_class) == ("hf", "BertForSequenceClassification")
    assert loaded.sha256 == before
    assert not loaded.module.training
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(input_ids=ids).logits, model(input_ids=ids).logits)
        loaded.module.classifier.bias.add_(1.0)
        expected = loaded.module(input_ids=ids).logits
    dest = save_model(loaded, loaded.module, tmp_path / "tuned")
    again = load_model(dest)
    with torch.no_grad():
        torch.testing.assert_close(again.module(input_ids=ids).logits, expected)
    assert fingerprint(path) == before
    # saving again over an existing directory replaces it
    first = fingerprint(dest)
    with torch.no_grad():
        loaded.module.classifier.bias.add_(1.0)
    save_model(loaded, loaded.module, dest)
    assert fingerprint(dest) != first
    with torch.no_grad():
        torch.testing.assert_close(load_model(dest).module(input_ids=ids).logits, expected + 1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bert", "tuned"]


def test_hf_class_override_and_unknown_class(tmp_path: Path) -> None:
    _, path = _tiny_bert(tmp_path)
    loaded = load_model(path, hf_class="BertModel")
    assert type(loaded.module).__name__ == "BertModel"
    with pytest.raises(ModelLoadError, match="hf_class"):
        load_model(path, hf_class="NoSuchModelClass")


def test_hf_class_with_missing_weights_is_refused(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        vocab_size=50,
    )
    path = tmp_path / "base"
    transformers.BertModel(config).save_pretrained(str(path))
    with pytest.raises(ModelLoadError, match="classifier.bias, classifier.weight") as info:
        load_model(path, hf_class="BertForSequenceClassification")
    assert "with hf_class" in str(info.value)
    assert load_model(path).hf_class == "BertModel"


def test_hf_without_transformers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "hfdir"
    path.mkdir()
    (path / "config.json").write_text('{"architectures": ["BertModel"]}')
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ModelLoadError, match=r"pip install biasscope\[hf\]"):
        load_model(path)


def test_directory_fingerprint_covers_names_and_bytes(tmp_path: Path) -> None:
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_bytes(b"one")
    (d / "sub" / "b.txt").write_bytes(b"two")
    h = hashlib.sha256()
    for name, data in [("a.txt", b"one"), ("sub/b.txt", b"two")]:
        h.update(name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    assert fingerprint(d) == h.hexdigest()
    (d / "sub" / "b.txt").rename(d / "sub" / "c.txt")
    assert fingerprint(d) != h.hexdigest()
    with pytest.raises(DataLoadError, match="no such file"):
        fingerprint(tmp_path / "missing")


# --------------------------------------------------------------------------- model errors


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelLoadError, match="Supported: TorchScript") as info:
        load_model(bad)
    assert "set kind to force one" in str(info.value)
    truncated = tmp_path / "trunc.pt"
    full = tmp_path / "full.pt"
    torch.jit.save(torch.jit.script(trained()), str(full))
    truncated.write_bytes(full.read_bytes()[:200])
    with pytest.raises(ModelLoadError, match="corrupt"):
        load_model(truncated)
    empty_dir = tmp_path / "emptydir"
    empty_dir.mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(empty_dir)
    with pytest.raises(ModelLoadError, match="torchscript, export") as info:
        load_model(full, kind="onnx")
    assert info.value.parameter == "kind"
    # forcing the wrong kind is a clear error, not a traceback
    with pytest.raises(ModelLoadError, match="torch.export"):
        load_model(full, kind="export")


def test_state_dict_without_factory(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({"state_dict": trained().state_dict()}, path)
    with pytest.raises(ModelLoadError, match="factory=") as info:
        load_model(path)
    assert "under 'state_dict'" in str(info.value)
    assert info.value.parameter == "factory"  # a front end shows it as its flag


def test_unrecognised_dict(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({"epoch": 3, "notes": "x"}, path)
    with pytest.raises(ModelLoadError, match="neither a state dict") as info:
        load_model(path, factory=FACTORY)
    assert "'epoch'" in str(info.value)


@pytest.mark.parametrize(
    ("factory", "needle"),
    [
        ("make_net", "package.module:function"),
        ("_loading_factories:", "package.module:function"),
        ("_loading_factories:make-net", "package.module:function"),
        ("no_such_module_xyz:make", "cannot be imported"),
        ("missing_dir/none.py:make", "not a file"),
        ("_loading_factories:make_nett", "Callables it defines"),
        ("_loading_factories:NOT_CALLABLE", "not callable"),
        ("_loading_factories:make_raises", "weights directory not configured"),
        ("_loading_factories:make_not_module", "not a torch.nn.Module"),
    ],
)
def test_factory_errors(tmp_path: Path, factory: str, needle: str) -> None:
    path = tmp_path / "w.pt"
    torch.save(trained().state_dict(), path)
    with pytest.raises(ModelLoadError, match="factory|Factory") as info:
        load_model(path, factory=factory)
    assert needle in str(info.value)


def test_factory_file_that_raises_on_import(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(trained().state_dict(), path)
    (tmp_path / "broken.py").write_text("import no_such_dependency_q\n")
    with pytest.raises(ModelLoadError, match="ModuleNotFoundError") as info:
        load_model(path, factory=f"{tmp_path / 'broken.py'}:make")
    assert "Fix the error in that file" in str(info.value)


def test_key_and_shape_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(trained().state_dict(), path)
    with pytest.raises(ModelLoadError, match="does not match") as info:
        load_model(path, factory="_loading_factories:make_other_net")
    message = str(info.value)
    assert "Missing in the file (2): 0.bias, 0.weight" in message
    assert "head.weight" in message and "Unexpected in the file (9)" in message
    assert "factory '_loading_factories:make_other_net'" in message
    with pytest.raises(ModelLoadError, match="different shapes") as info:
        load_model(path, factory="_loading_factories:make_wide_net")
    assert "image.0.weight: file (8, 6) vs model (5, 6)" in str(info.value)


def test_save_refuses_input_path(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(trained().state_dict(), path)
    loaded = load_model(path, factory=FACTORY)
    before = digest(path)
    with pytest.raises(ModelLoadError, match="never modifies its input"):
        save_model(loaded, loaded.module, tmp_path / "." / "w.pt")
    assert digest(path) == before


def test_export_save_needs_example_inputs(tmp_path: Path) -> None:
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(trained(), inputs()), str(path))
    loaded = load_model(path)
    bare = LoadedModel(module=loaded.module, kind="export", path=path, sha256=loaded.sha256)
    with pytest.raises(ModelLoadError, match="example_inputs"):
        save_model(bare, loaded.module, tmp_path / "o.pt2")
    assert not (tmp_path / "o.pt2").exists()



def test_export_with_static_batch_runs_any_batch_size(tmp_path):
    """torch.export traces a fixed batch size; the audit repeats batches K times, so the
    loaded program runs in slices of its traced size and gives the module's own numbers."""
    import biasscope as bs
    from biasscope.io._exported import ExportedModule

    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    x = torch.randn(6, 4)
    path = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(module, (x,)), path)
    loaded = load_model(path)
    assert isinstance(loaded.module, ExportedModule) and loaded.module.batch_size == 6
    big = torch.randn(17, 4)
    assert torch.allclose(loaded.module(big), module(big), atol=1e-6)
    data = [(x, module(x).argmax(1))]
    mods = [bs.Modality("x", input=0)]
    a = bs.audit(loaded.module, data, mods, samples=8, shapley=False, permutation_repeats=2)
    b = bs.audit(module, data, mods, samples=8, shapley=False, permutation_repeats=2)
    assert a["x"].functional_entropy.mean == pytest.approx(b["x"].functional_entropy.mean, rel=1e-5)
