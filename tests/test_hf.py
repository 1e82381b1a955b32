"""Hugging Face route end to end: a small-config ViLT trained here (seconds) on data whose
answer is written in the question, saved with ``save_pretrained``, audited offline through
the CLI; its non-modality inputs (masks, token types) pass through the audit untouched; the
fine-tuned model is written back as a directory ``from_pretrained`` loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

transformers = pytest.importorskip("transformers")

from typer.testing import CliRunner  # noqa: E402

from biasscope import Modality, audit  # noqa: E402
from biasscope.cli.main import app  # noqa: E402
from biasscope.io.loading import load_model  # noqa: E402

import _tiny_hf as H  # noqa: E402

pytestmark = pytest.mark.slow  # trains a model (seconds); still run in CI

runner = CliRunner()
TEXT = "vilt.embeddings.text_embeddings"
IMAGE = "vilt.embeddings.patch_embeddings"
STEPS = 200


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with H.one_thread():
        yield


def train_shortcut_vilt(steps: int = STEPS, seed: int = 0) -> nn.Module:
    """ViltForQuestionAnswering trained with cross-entropy on a language shortcut: the label
    is token 2 + label of the question; the image is noise. A few seconds on one CPU thread."""
    model = H.vilt(seed=seed)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    data = H.vilt_batch(512, seed=seed + 1)
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():  # ViLT draws patch orders from the global generator
        torch.manual_seed(seed)
        for _ in range(steps):
            idx = torch.randint(0, 512, (32,), generator=g)
            batch = {k: v[idx] for k, v in data.items()}
            label = batch.pop("label")  # our key is "label"; HF's own `labels` is never passed
            loss = F.cross_entropy(model(**batch).logits, label)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def shortcut_vilt(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("hf")
    model = train_shortcut_vilt()
    val = H.vilt_batch(64, seed=7)  # validation split: same distribution as training
    with torch.no_grad():
        inputs = {k: v for k, v in val.items() if k != "label"}
        accuracy = float((model(**inputs).logits.argmax(1) == val["label"]).float().mean())
    model.save_pretrained(str(root / "vilt-vqa"))
    torch.save(val, root / "val.pt")
    return {"root": root, "model": model, "dir": root / "vilt-vqa", "data": root / "val.pt",
            "val": val, "accuracy": accuracy}


def _audit_cli(env: dict[str, Any], out: Path, *extra: str) -> dict[str, Any]:
    result = runner.invoke(
        app,
        ["audit", str(env["dir"]), "--data", str(env["data"]), "--samples", "8",
         "--permutation-repeats", "5", "--device", "cpu", "--out", str(out), "--quiet", *extra],
    )
    assert result.exit_code == 0, result.output
    return json.loads((out / "audit.json").read_text())


def test_trained_model_uses_the_shortcut(shortcut_vilt: dict[str, Any]) -> None:
    assert shortcut_vilt["accuracy"] == 1.0
    assert json.loads((shortcut_vilt["dir"] / "config.json").read_text())["architectures"] == [
        "ViltForQuestionAnswering"
    ]


def test_cli_audit_with_preset_finds_the_ignored_image(shortcut_vilt: dict[str, Any]) -> None:
    report = _audit_cli(shortcut_vilt, shortcut_vilt["root"] / "report-preset", "--preset", "vilt")
    mods = {m["name"]: m for m in report["modalities"]}
    assert mods["text"]["site"] == f"layer:{TEXT}"
    assert mods["image"]["site"] == f"layer:{IMAGE}"
    assert mods["image"]["verdict"] in ("ignored", "weak")
    assert mods["text"]["verdict"] in ("ok", "dominant")
    assert mods["text"]["share"] > mods["image"]["share"]
    # shuffling the image across examples costs nothing; shuffling the question, everything
    assert mods["image"]["permutation"]["accuracy_drop"]["mean"] == pytest.approx(0.0, abs=0.02)
    assert mods["text"]["permutation"]["accuracy_drop"]["mean"] > 0.5
    assert report["accuracy"] == 1.0
    assert report["provenance"]["model"]["kind"] == "hf"


def test_cli_audit_with_explicit_layers_and_hf_class(shortcut_vilt: dict[str, Any]) -> None:
    report = _audit_cli(
        shortcut_vilt, shortcut_vilt["root"] / "report-layers",
        "--hf-class", "ViltForQuestionAnswering",
        "-m", f"text=layer:{TEXT}", "-m", f"image=layer:{IMAGE}",
    )
    mods = {m["name"]: m for m in report["modalities"]}
    assert mods["image"]["verdict"] in ("ignored", "weak")
    assert mods["text"]["verdict"] in ("ok", "dominant")


def test_extra_inputs_pass_through_expanded_and_unperturbed(shortcut_vilt: dict[str, Any]) -> None:
    """attention_mask, token_type_ids and pixel_mask reach ViLT unchanged: integer dtypes,
    repeated alongside the K-sample expansion, each row still the row of its own question."""
    model, val = shortcut_vilt["model"], shortcut_vilt["val"]
    assert val["attention_mask"].min() == 0 and val["token_type_ids"].max() == 1  # not trivial
    extras = ("attention_mask", "token_type_ids", "pixel_mask")
    rows = {
        tuple(val["input_ids"][i].tolist()): {k: val[k][i] for k in extras} for i in range(64)
    }
    seen: list[dict[str, Tensor]] = []

    def record(_module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        ids = args[0] if args else kwargs["input_ids"]  # the QA head passes it positionally
        seen.append({"input_ids": ids, **{k: kwargs[k] for k in extras}})

    handle = model.vilt.register_forward_pre_hook(record, with_kwargs=True)
    try:
        audit(
            model, [val], [Modality("text", layer=TEXT), Modality("image", layer=IMAGE)],
            samples=4, permutation_repeats=2, device="cpu", max_rows=128,
        )
    finally:
        handle.remove()
    sizes = {call["input_ids"].shape[0] for call in seen}
    assert max(sizes) > 64  # the K-sample expansion happened (in chunks of max_rows)
    for call in seen:
        n = call["input_ids"].shape[0]
        for k in extras:
            assert call[k].dtype == torch.long and call[k].shape[0] == n
        for i in range(n):
            own = rows[tuple(call["input_ids"][i].tolist())]
            for k in extras:
                assert torch.equal(call[k][i], own[k])


def test_cli_layers_lists_the_tree_with_shapes(
    shortcut_vilt: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`biasscope layers` on the directory; the HF-style `labels` key works with --label-key
    and is not passed to the model (which would compute a loss from it)."""
    val = dict(shortcut_vilt["val"])
    val["labels"] = val.pop("label")
    path = shortcut_vilt["root"] / "val-labels.pt"
    torch.save(val, path)
    monkeypatch.setenv("COLUMNS", "200")  # one table row per line (narrow tables fold paths)
    result = runner.invoke(
        app, ["layers", str(shortcut_vilt["dir"]), "--data", str(path), "--label-key", "labels"]
    )
    assert result.exit_code == 0, result.output
    lines = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 3}
    assert "(8, 8, 32)" in lines[TEXT]  # (batch, tokens, hidden)
    assert "(8, 32, 4, 4)" in lines[IMAGE]  # (batch, hidden, 32/8, 32/8)
    assert "float32" in lines[IMAGE]


def test_cli_fix_writes_a_directory_from_pretrained_loads(shortcut_vilt: dict[str, Any]) -> None:
    """`biasscope fix` on the directory writes OUT/model, a save_pretrained directory that
    transformers (and biasscope) load back, with the fine-tuned weights; the input is untouched."""
    root = shortcut_vilt["root"]
    torch.save(H.vilt_batch(64, seed=11), root / "train.pt")
    before = {p.name: p.read_bytes() for p in shortcut_vilt["dir"].iterdir()}
    out = root / "fixed"
    result = runner.invoke(
        app,
        ["fix", str(shortcut_vilt["dir"]), "--data", str(root / "train.pt"),
         "--val", str(shortcut_vilt["data"]), "--preset", "vilt", "--steps", "2",
         "--batch-size", "32", "--samples", "4", "--audit-samples", "4", "--device", "cpu",
         "--out", str(out), "--quiet"],
    )
    assert result.exit_code == 0, result.output
    assert {p.name: p.read_bytes() for p in shortcut_vilt["dir"].iterdir()} == before

    tuned = transformers.ViltForQuestionAnswering.from_pretrained(
        str(out / "model"), local_files_only=True
    )
    original = shortcut_vilt["model"].state_dict()
    weights = tuned.state_dict()
    assert set(weights) == set(original)
    assert any(not torch.equal(original[k], weights[k]) for k in original)  # it did train
    reloaded = load_model(out / "model")
    assert (reloaded.kind, reloaded.hf_class) == ("hf", "ViltForQuestionAnswering")
    for k, v in reloaded.module.state_dict().items():
        assert torch.equal(v, weights[k]), k
    for name in ("before", "after"):
        report = json.loads((out / name / "audit.json").read_text())
        assert [m["site"] for m in report["modalities"]] == [f"layer:{TEXT}", f"layer:{IMAGE}"]
