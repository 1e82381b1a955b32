"""Presets: each one's layers exist on small-config models of the classes it names, run once
per forward pass with a batch-first float output, and audit; a wrong preset is a ConfigError
(exit code 2 through the CLI)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

pytest.importorskip("transformers")

from typer.testing import CliRunner  # noqa: E402

from biasscope import ConfigError, OutputSpec, audit  # noqa: E402
from biasscope.cli.main import app  # noqa: E402
from biasscope.io.layers import layer_table  # noqa: E402
from biasscope.io.presets import PRESETS, preset_modalities, preset_output  # noqa: E402

import _tiny_hf as H  # noqa: E402

runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with H.one_thread():
        yield


def _binary(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    return {**batch, "label": batch["label"] % 2}


# preset, model builder, batch builder
CASES: list[tuple[str, Callable[[], nn.Module], Callable[[], dict[str, Tensor]]]] = [
    ("vilt", lambda: H.vilt("ViltForQuestionAnswering"), lambda: H.vilt_batch(16)),
    (
        "vilt",
        lambda: H.vilt("ViltForImagesAndTextClassification", num_images=1),
        lambda: H.vilt_batch(16, images=1),
    ),
    # a single logit per example: audited as two classes [0, x]
    ("vilt", lambda: H.vilt("ViltForImageAndTextRetrieval"), lambda: _binary(H.vilt_batch(16))),
    ("visualbert", lambda: H.visualbert("VisualBertForQuestionAnswering"), lambda: H.visualbert_batch(16)),
    (
        "visualbert",
        lambda: H.visualbert("VisualBertForVisualReasoning"),
        lambda: _binary(H.visualbert_batch(16)),
    ),
    ("clip", lambda: H.dual_encoder("clip"), lambda: H.dual_batch(16)),
    ("siglip", lambda: H.dual_encoder("siglip"), lambda: H.dual_batch(16)),
    ("lxmert", H.lxmert, lambda: H.lxmert_batch(16)),
]
IDS = [
    "vilt-qa", "vilt-images-and-text", "vilt-retrieval", "visualbert-qa",
    "visualbert-reasoning", "clip", "siglip", "lxmert",
]


def test_every_preset_and_listed_class_is_covered() -> None:
    assert {case[0] for case in CASES} == set(PRESETS)
    built = {(case[0], type(case[1]()).__name__) for case in CASES}
    for preset in PRESETS.values():
        for cls in preset.models:
            # a dual-encoder preset is tested on a classifier holding the listed class
            assert (preset.name, cls) in built or (preset.name, "DualEncoderClassifier") in built


@pytest.mark.parametrize("preset, build, batch_of", CASES, ids=IDS)
def test_preset_layers_run_once_batch_first_reach_the_logits_and_audit(
    preset: str, build: Callable[[], nn.Module], batch_of: Callable[[], dict[str, Tensor]],
) -> None:
    model, batch = build(), batch_of()
    modalities = preset_modalities(preset, model)
    assert [m.name for m in modalities] == list(PRESETS[preset].layers)
    for m in modalities:  # the listed class has the preset's paths verbatim (or under a wrapper)
        path = PRESETS[preset].layers[m.name]
        assert m.layer == path or m.layer.endswith("." + path)

    output = preset_output(preset)
    n = batch["label"].shape[0]
    rows = {r.path: r for r in layer_table(model, batch, output=output)}
    for m in modalities:  # one float batch-first tensor, run once, that the logits depend on
        info = rows[m.layer]
        assert info.runs == 1, f"{m.name} ran {info.runs} times"
        assert len(info.tensors) == 1 and info.tensors[0].dtype.startswith("float")
        assert info.tensors[0].shape[0] == n and info.tensors[0].batch_dim == 0
        assert info.tensors[0].reaches_output is True, f"{m.site} does not reach the logits"
        assert info.tensors[0].perturbable

    result = audit(model, [batch], modalities, samples=4, permutation_repeats=2, device="cpu", output=output)
    assert [m.site for m in result.modalities] == [m.site for m in modalities]
    # a random-init model reads both modalities: noise at each site moves its output
    assert all(m.functional_entropy.mean > 0 for m in result.modalities)
    assert result.classes == sorted(set(batch["label"].tolist()))


def test_lxmert_preset_reads_its_own_output_key() -> None:
    """LXMERT's logits are under question_answering_score: the preset says so, and the
    user's key, when given, wins."""
    assert preset_output("lxmert") == OutputSpec(key="question_answering_score")
    assert preset_output("LXMERT", key="other", index=1) == OutputSpec(key="other", index=1)
    assert preset_output("vilt") == OutputSpec()
    output = H.lxmert()(**{k: v for k, v in H.lxmert_batch(2).items() if k != "label"})
    assert "logits" not in output.keys() and "question_answering_score" in output.keys()


def test_cli_lxmert_preset_needs_no_output_key(tmp_path: Path) -> None:
    H.lxmert().save_pretrained(str(tmp_path / "lxmert"))
    torch.save(H.lxmert_batch(8), tmp_path / "data.pt")
    result = runner.invoke(
        app,
        [
            "audit", str(tmp_path / "lxmert"), "--data", str(tmp_path / "data.pt"),
            "--preset", "lxmert", "--out", str(tmp_path / "out"), "--quiet",
            "--samples", "4", "--permutation-repeats", "2", "--device", "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert [m["name"] for m in report["modalities"]] == ["text", "image"]
    assert report["classes"] == sorted(set(H.lxmert_batch(8)["label"].tolist()))


def test_preset_matches_a_wrapped_model() -> None:
    """A LightningModule-style wrapper (the HF model under ``model``) resolves to the unique
    submodule ending in the preset's path."""

    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = H.vilt()

        def forward(self, **kw: Tensor) -> Any:
            return self.model(**kw)

    mods = preset_modalities("vilt", Wrapper())
    assert [m.layer for m in mods] == [
        "model.vilt.embeddings.text_embeddings",
        "model.vilt.embeddings.patch_embeddings",
    ]


def test_unknown_preset_lists_the_presets() -> None:
    with pytest.raises(ConfigError) as info:
        preset_modalities("vitl", H.vilt())
    message = str(info.value)
    assert "'vitl'" in message
    for name in PRESETS:
        assert name in message
    assert "--modality" in message


def test_missing_path_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        preset_modalities("vilt", H.visualbert())
    message = str(info.value)
    assert "'vilt.embeddings.text_embeddings'" in message
    assert "VisualBertForQuestionAnswering" in message
    assert "biasscope layers" in message


def test_ambiguous_path_lists_the_candidates() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = H.dual_encoder("clip")
            self.b = H.dual_encoder("clip")

    with pytest.raises(ConfigError) as info:
        preset_modalities("clip", Two())
    assert "a.backbone.text_model.embeddings" in str(info.value)
    assert "b.backbone.text_model.embeddings" in str(info.value)


def test_vilt_with_two_images_is_refused() -> None:
    """NLVR2-style ViLT runs its backbone once per image: no layer runs once per pass."""
    model = H.vilt("ViltForImagesAndTextClassification", num_images=2, modality_type_vocab_size=3)
    with pytest.raises(ConfigError, match="input:pixel_values"):
        preset_modalities("vilt", model)


def test_cli_unknown_preset_exits_2(tmp_path: Path) -> None:
    H.vilt().save_pretrained(str(tmp_path / "vilt"))
    torch.save(H.vilt_batch(8), tmp_path / "data.pt")
    result = runner.invoke(
        app,
        [
            "audit", str(tmp_path / "vilt"), "--data", str(tmp_path / "data.pt"),
            "--preset", "nope", "--out", str(tmp_path / "out"), "--quiet",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "Unknown preset 'nope'" in result.output
    for name in PRESETS:
        assert name in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_preset_from_the_config_and_the_flag_beats_it(tmp_path: Path) -> None:
    from biasscope.cli._common import resolve_modalities
    from biasscope.config import load_config

    model = H.vilt()
    (tmp_path / "a.toml").write_text('preset = "vilt"\n')
    config = load_config(tmp_path / "a.toml")
    assert [m.layer for m in resolve_modalities([], config, None, model)] == list(
        PRESETS["vilt"].layers.values()
    )
    (tmp_path / "b.toml").write_text('[modalities]\ntext = "layer:vilt.embeddings"\n')
    config = load_config(tmp_path / "b.toml")
    assert [m.name for m in resolve_modalities([], config, None, model)] == ["text"]
    assert [m.name for m in resolve_modalities([], config, "vilt", model)] == ["text", "image"]
    assert [m.site for m in resolve_modalities(["image=input:pixel_values"], config, "vilt", model)] == [
        "input:pixel_values"
    ]
