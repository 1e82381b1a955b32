"""Presets: each one's layers exist on small-config models of the classes it names, run once
per forward pass with a batch-first float output, and audit; a wrong preset is a ConfigError
(exit code 2 through the CLI)."""

from __future__ import annotations

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
from biasscope.presets import PRESETS, preset_modalities  # noqa: E402

import _tiny_hf as H  # noqa: E402

runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with H.one_thread():
        yield


def _binary(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    return {**batch, "label": batch["label"] % 2}


# preset, model builder, batch builder, output key
CASES: list[tuple[str, Callable[[], nn.Module], Callable[[], dict[str, Tensor]], str | None]] = [
    ("vilt", lambda: H.vilt("ViltForQuestionAnswering"), lambda: H.vilt_batch(16), None),
    (
        "vilt",
        lambda: H.vilt("ViltForImagesAndTextClassification", num_images=1),
        lambda: H.vilt_batch(16, images=1),
        None,
    ),
    # a single logit per example: audited as two classes [0, x]
    ("vilt", lambda: H.vilt("ViltForImageAndTextRetrieval"), lambda: _binary(H.vilt_batch(16)), None),
    ("visualbert", lambda: H.visualbert("VisualBertForQuestionAnswering"), lambda: H.visualbert_batch(16), None),
    (
        "visualbert",
        lambda: H.visualbert("VisualBertForVisualReasoning"),
        lambda: _binary(H.visualbert_batch(16)),
        None,
    ),
    ("clip", lambda: H.dual_encoder("clip"), lambda: H.dual_batch(16), None),
    ("siglip", lambda: H.dual_encoder("siglip"), lambda: H.dual_batch(16), None),
    ("lxmert", H.lxmert, lambda: H.lxmert_batch(16), "question_answering_score"),
]
IDS = [
    "vilt-qa", "vilt-images-and-text", "vilt-retrieval", "visualbert-qa",
    "visualbert-reasoning", "clip", "siglip", "lxmert",
]


def test_every_preset_is_covered() -> None:
    assert {case[0] for case in CASES} == set(PRESETS)


@pytest.mark.parametrize("preset, build, batch_of, key", CASES, ids=IDS)
def test_preset_layers_run_once_batch_first_and_audit(
    preset: str, build: Callable[[], nn.Module], batch_of: Callable[[], dict[str, Tensor]],
    key: str | None,
) -> None:
    model, batch = build(), batch_of()
    modalities = preset_modalities(preset, model)
    assert [m.name for m in modalities] == list(PRESETS[preset].layers)
    for m in modalities:  # the listed class has the preset's paths verbatim (or under a wrapper)
        path = PRESETS[preset].layers[m.name]
        assert m.layer == path or m.layer.endswith("." + path)
        assert m.input is None

    calls: dict[str, list[Any]] = {m.name: [] for m in modalities}
    handles = [
        model.get_submodule(m.layer).register_forward_hook(
            lambda _mod, _args, out, name=m.name: calls[name].append(out)
        )
        for m in modalities
    ]
    inputs = {k: v for k, v in batch.items() if k != "label"}
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for h in handles:
            h.remove()
    n = batch["label"].shape[0]
    for name, outs in calls.items():
        assert len(outs) == 1, f"{name} ran {len(outs)} times"
        assert isinstance(outs[0], Tensor) and outs[0].is_floating_point()
        assert outs[0].shape[0] == n

    result = audit(
        model, [batch], modalities, samples=4, permutation_repeats=2, device="cpu",
        output=OutputSpec(key=key) if key else None,
    )
    assert [m.name for m in result.modalities] == ["text", "image"]
    assert all(m.functional_entropy.mean >= 0 for m in result.modalities)
    assert all(m.verdict in ("ignored", "weak", "ok", "dominant") for m in result.modalities)
    assert result.classes == sorted(set(batch["label"].tolist()))


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
